"""Server reflection that shows the proto comments.

Python's generated modules carry descriptors without source info, so plain
reflection would make ``grpcurl describe`` show bare messages. ``make
generate`` also writes a descriptor set with comments; this pool serves those
files from it and everything else from the default pool.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection

DESCRIPTOR_SET = "descriptors.binpb"


class _DocumentedFile:
    """A file descriptor whose CopyToProto includes the comments when known."""

    def __init__(self, descriptor: Any, documented: dict[str, descriptor_pb2.FileDescriptorProto]):
        self._descriptor = descriptor
        self._documented = documented
        self.name: str = descriptor.name

    @property
    def dependencies(self) -> list[_DocumentedFile]:
        return [_DocumentedFile(d, self._documented) for d in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        documented = self._documented.get(self.name)
        if documented is None:
            self._descriptor.CopyToProto(proto)
        else:
            proto.CopyFrom(documented)


class _DocumentedPool:
    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()
        files = descriptor_pb2.FileDescriptorSet.FromString(
            resources.files("mlserve_api.v1").joinpath(DESCRIPTOR_SET).read_bytes()
        )
        self._documented = {proto.name: proto for proto in files.file}

    def FindFileByName(self, name: str) -> _DocumentedFile:
        return _DocumentedFile(self._pool.FindFileByName(name), self._documented)

    def FindFileContainingSymbol(self, symbol: str) -> _DocumentedFile:
        return _DocumentedFile(self._pool.FindFileContainingSymbol(symbol), self._documented)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable(server: aio.Server, service_names: list[str]) -> None:
    """Serve reflection for ``service_names`` (plus reflection itself)."""
    reflection.enable_server_reflection(
        [*service_names, reflection.SERVICE_NAME],
        server,
        pool=_DocumentedPool(),  # type: ignore[arg-type]  # duck-typed: see the class
    )
