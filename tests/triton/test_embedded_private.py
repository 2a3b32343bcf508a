"""The embedded Triton stays private: it listens on loopback only, on one port.

Every test here runs against a real MLServe (and, where a deployment is
involved, its real embedded Triton) over real sockets. Each one asserts the
gRPC code and then that the model list, the version lists and the repository
on disk are as they were, and that nothing outside the repository was touched.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from mlserve_api.v1 import server_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.procfs import listening_sockets, socket_inodes, triton_pid

MiB = 1024 * 1024
Code = grpc.StatusCode


# --- the embedded Triton stays private --------------------------------------


# 127.0.0.1 as /proc/net/tcp writes it, and as an IPv4-mapped address in tcp6
# (gRPC binds "127.0.0.1" through an AF_INET6 socket where it can). Never
# 00000000 (every interface) or :: (every interface, both families).
LOOPBACK = {("tcp", "0100007F"), ("tcp6", "0000000000000000FFFF00000100007F")}


def test_embedded_triton_listens_on_loopback_only(stubs: Stubs, mlserve: MLServeProcess) -> None:
    assert mlserve.process is not None
    local = stubs.servers.GetServer(server_pb2.GetServerRequest(name="local"), metadata=stubs.auth)
    host, _, port_text = local.address.rpartition(":")
    assert host == "127.0.0.1"
    grpc_port = int(port_text)

    pid = triton_pid(mlserve.process.pid)
    inodes = socket_inodes(pid)
    everything = listening_sockets(pid)
    owned = [s for s in everything if s[3] in inodes]
    assert owned, "Triton owns no listening socket"
    assert {(table, address) for table, address, _, _ in owned} <= LOOPBACK
    assert {port for _, _, port, _ in owned} == {grpc_port}, "Triton opened another port"
    assert not {8000, 8002} & {port for _, _, port, _ in owned}
    on_port = [s for s in everything if s[2] == grpc_port]
    assert {(table, address) for table, address, _, _ in on_port} <= LOOPBACK
    assert "--grpc-address=127.0.0.1" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
        errors="replace"
    ).replace("\0", " ")
