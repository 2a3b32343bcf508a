"""The catalog: models, their versions and artifacts, uploads, metadata, and pipeline
definitions. What exists; not where it runs (that is ``mlserve.deploy``)."""
