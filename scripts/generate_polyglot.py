"""Generate the non-Python stubs: TypeScript (ts-proto, grpc-js services) and Go
(protoc-gen-go, protoc-gen-go-grpc) for protos/ and for Triton's protocol, which
is vendored first (scripts/vendor_triton_protos.py).

Offline, from the repository's own tools: buf and ts-proto from .tools (npm,
pinned in the Makefile), Go's plugins from Debian (scripts/ensure_go.sh). The
Go import paths are set here (buf's managed mode), so the protos carry no
go_package option.

Usage: python scripts/generate_polyglot.py [OUTPUT_DIR]   (default: generated)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vendor_triton_protos  # a script beside this one

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
TS_PROTO = ROOT / ".tools" / "node_modules" / ".bin" / "protoc-gen-ts_proto"
GO_IMPORT_PREFIX = "github.com/mlserve/mlserve/generated/go"
# ts-proto: grpc-js clients; 64-bit integers as strings (as proto3 JSON and
# proto-loader's longs: String do); message fields optional, scalars defaulted.
TS_OPTIONS = ("outputServices=grpc-js", "esModuleInterop=true", "forceLong=string",
              "useOptionals=messages", "env=node")  # fmt: skip


def template(ts_out: Path, go_out: Path, go_prefix: str) -> str:
    ts_options = "".join(f"      - {option}\n" for option in TS_OPTIONS)
    return f"""version: v2
managed:
  enabled: true
  override:
    - file_option: go_package_prefix
      value: {go_prefix}
plugins:
  - local: {TS_PROTO}
    out: {ts_out}
    opt:
{ts_options}  - local: protoc-gen-go
    out: {go_out}
    opt: paths=source_relative
  - local: protoc-gen-go-grpc
    out: {go_out}
    opt: paths=source_relative
"""


def generate(output: Path) -> None:
    triton = output / "triton"
    vendor_triton_protos.write(triton)
    for name in ("ts", "go"):
        if (output / name).exists():
            shutil.rmtree(output / name)
    inputs = (
        (ROOT / "protos", output / "ts", output / "go", GO_IMPORT_PREFIX),
        (triton, output / "ts" / "triton", output / "go" / "triton", f"{GO_IMPORT_PREFIX}/triton"),
    )
    with tempfile.TemporaryDirectory() as scratch:
        for source, ts_out, go_out, go_prefix in inputs:
            config = Path(scratch) / "buf.gen.yaml"
            config.write_text(template(ts_out, go_out, go_prefix))
            subprocess.run(
                [str(BUF), "generate", "--template", str(config), str(source)],
                check=True,
                cwd=ROOT,
            )


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "generated")
