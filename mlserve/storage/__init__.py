"""Storage: the database gate (db), the schema (tables), the model repository on disk, and
the content-addressed blob store. Knows files and rows, not callers or Triton."""
