"""Thin gRPC adapters: proto in, domain call, proto out. No SQL and no file I/O here."""
