"""MLServe: a gRPC control plane and inference gateway for NVIDIA Triton."""

__version__ = "0.1.0"
