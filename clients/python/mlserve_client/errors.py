"""Errors the client raises on its own; server errors arrive as ``grpc.RpcError``."""

from __future__ import annotations


class ClientError(Exception):
    """A problem found on the client side, before or after talking to MLServe."""


class ModelDirectoryError(ClientError):
    """The local model folder cannot be uploaded as it is (layout, symlinks, …)."""


class DownloadError(ClientError):
    """What was downloaded does not match the version's manifest."""


class MissingKeyError(ClientError):
    """No key was given and none could be read from the state directory."""
