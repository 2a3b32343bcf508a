"""Generated gRPC stubs for the mlserve.v1 API."""
