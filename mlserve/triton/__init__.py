"""Talking to NVIDIA Triton: an async control-plane client and the embedded launcher."""

from mlserve.triton.client import IndexEntry, TritonClient
from mlserve.triton.launcher import EmbeddedTriton, TritonInstallation

__all__ = ["EmbeddedTriton", "IndexEntry", "TritonClient", "TritonInstallation"]
