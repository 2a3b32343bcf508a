"""Generate Python stubs for protos/ into generated/mlserve_api/.

The proto package is ``mlserve.v1`` but the server package is also called
``mlserve``; a regular package hides any other ``mlserve.*`` on the path, so
protoc's output (``mlserve/v1/*_pb2.py``, importing ``from mlserve.v1 ...``)
is moved to its own top-level package ``mlserve_api.v1`` and its imports are
rewritten, the way tritonclient's and Temporal's build scripts do. The proto
names on the wire stay ``mlserve.v1.*``.

Usage: python scripts/generate_protos.py [OUTPUT_DIR]   (default: generated)
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PROTO_PACKAGE = "mlserve.v1"
PYTHON_PACKAGE = "mlserve_api"
DESCRIPTOR_SET = "descriptors.binpb"
# mypy-protobuf's plugins sit beside the interpreter, in the venv's bin/.
_BIN = Path(sys.executable).parent

_IMPORT_PATTERNS = [
    # from mlserve.v1 import model_pb2 as ...
    (re.compile(r"^from mlserve\.v1 import ", re.M), f"from {PYTHON_PACKAGE}.v1 import "),
    # import mlserve.v1.model_pb2  (mypy-protobuf stubs)
    (re.compile(r"^import mlserve\.v1\.", re.M), f"import {PYTHON_PACKAGE}.v1."),
    (re.compile(r"\bmlserve\.v1\.(\w+_pb2)\b"), rf"{PYTHON_PACKAGE}.v1.\1"),
]


def generate(output: Path) -> None:
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={_BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={_BIN / 'protoc-gen-mypy_grpc'}",
            f"--python_out={scratch}",
            f"--grpc_python_out={scratch}",
            f"--mypy_out=quiet:{scratch}",
            f"--mypy_grpc_out=quiet:{scratch}",
            # Descriptors with comments, so reflection (grpcurl describe) shows the docs.
            f"--descriptor_set_out={scratch}/{DESCRIPTOR_SET}",
            "--include_source_info",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        target = output / PYTHON_PACKAGE
        if target.exists():
            shutil.rmtree(target)
        source = Path(scratch) / PROTO_PACKAGE.replace(".", "/")
        shutil.copytree(source, target / "v1")
        shutil.copy(Path(scratch) / DESCRIPTOR_SET, target / "v1" / DESCRIPTOR_SET)
    (target / "__init__.py").write_text('"""Generated gRPC stubs for the mlserve.v1 API."""\n')
    (target / "py.typed").write_text("")
    (target / "v1" / "__init__.py").write_text("")
    for path in sorted((target / "v1").iterdir()):
        if path.suffix in {".py", ".pyi"} and path.name != "__init__.py":
            text = path.read_text()
            for pattern, replacement in _IMPORT_PATTERNS:
                text = pattern.sub(replacement, text)
            path.write_text(text)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "generated")
