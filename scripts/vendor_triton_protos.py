"""Vendor Triton's gRPC protocol (grpc_service.proto, model_config.proto) into
generated/triton/, so a client in any language can call MLServe's gateway.

The tritonclient wheel ships the protocol compiled (``service_pb2``,
``model_config_pb2``), not as .proto text, so the files are printed from those
descriptors: the same messages, fields, numbers, enums and services, without
the upstream comments. ``check`` compiles the printed files again and compares
the result with the wheel's descriptors, field by field. The wheel's version is
written to VERSION and its licence (BSD-3-Clause) to LICENSE.txt.

Usage: python scripts/vendor_triton_protos.py [OUTPUT_DIR]   (default: generated/triton)
"""

from __future__ import annotations

import importlib.metadata
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from tritonclient.grpc import model_config_pb2, service_pb2

ROOT = Path(__file__).resolve().parent.parent
FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    FDP.TYPE_DOUBLE: "double", FDP.TYPE_FLOAT: "float", FDP.TYPE_INT64: "int64",
    FDP.TYPE_UINT64: "uint64", FDP.TYPE_INT32: "int32", FDP.TYPE_FIXED64: "fixed64",
    FDP.TYPE_FIXED32: "fixed32", FDP.TYPE_BOOL: "bool", FDP.TYPE_STRING: "string",
    FDP.TYPE_BYTES: "bytes", FDP.TYPE_UINT32: "uint32", FDP.TYPE_SFIXED32: "sfixed32",
    FDP.TYPE_SFIXED64: "sfixed64", FDP.TYPE_SINT32: "sint32", FDP.TYPE_SINT64: "sint64",
}  # fmt: skip
HEADER = (
    "// Triton Inference Server's {name}, as compiled into tritonclient {version}\n"
    "// (printed from its descriptors by scripts/vendor_triton_protos.py; `make generate`).\n"
    "// Copyright (c) NVIDIA CORPORATION. BSD-3-Clause: see LICENSE.txt beside this file.\n"
)


def descriptors() -> list[descriptor_pb2.FileDescriptorProto]:
    """The wheel's files, dependencies first."""
    files = []
    for module in (model_config_pb2, service_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    return files


def render(file: descriptor_pb2.FileDescriptorProto, version: str) -> str:
    lines = [HEADER.format(name=file.name, version=version), f'syntax = "{file.syntax}";', ""]
    lines.append(f"package {file.package};")
    lines.append("")
    lines += [f'import "{dependency}";' for dependency in file.dependency]
    if file.dependency:
        lines.append("")
    if file.options.HasField("go_package"):
        lines += [f'option go_package = "{file.options.go_package}";', ""]
    for enum in file.enum_type:
        lines += [*_enum(enum, ""), ""]
    for message in file.message_type:
        lines += [*_message(message, ""), ""]
    for service in file.service:
        lines.append(f"service {service.name} {{")
        for method in service.method:
            request = ("stream " if method.client_streaming else "") + method.input_type
            response = ("stream " if method.server_streaming else "") + method.output_type
            lines.append(f"  rpc {method.name}({request}) returns ({response}) {{}}")
        lines += ["}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _enum(enum: descriptor_pb2.EnumDescriptorProto, indent: str) -> Iterator[str]:
    yield f"{indent}enum {enum.name} {{"
    if enum.options.allow_alias:
        yield f"{indent}  option allow_alias = true;"
    for value in enum.value:
        yield f"{indent}  {value.name} = {value.number};"
    yield f"{indent}}}"


def _message(message: descriptor_pb2.DescriptorProto, indent: str) -> Iterator[str]:
    yield f"{indent}message {message.name} {{"
    inner = indent + "  "
    maps = {nested.name: nested for nested in message.nested_type if nested.options.map_entry}
    for enum in message.enum_type:
        yield from _enum(enum, inner)
    for nested in message.nested_type:
        if nested.name not in maps:
            yield from _message(nested, inner)
    real_oneofs = {
        index
        for index, _ in enumerate(message.oneof_decl)
        if any(f.HasField("oneof_index") and f.oneof_index == index and not f.proto3_optional
               for f in message.field)
    }  # fmt: skip
    printed_oneofs: set[int] = set()
    for field in message.field:
        if field.HasField("oneof_index") and field.oneof_index in real_oneofs:
            index = field.oneof_index
            if index in printed_oneofs:
                continue
            printed_oneofs.add(index)
            yield f"{inner}oneof {message.oneof_decl[index].name} {{"
            for member in message.field:
                if member.HasField("oneof_index") and member.oneof_index == index:
                    yield f"{inner}  {_field(member, maps)}"
            yield f"{inner}}}"
        else:
            yield f"{inner}{_field(field, maps)}"
    for reserved in message.reserved_range:
        end = reserved.end - 1
        yield f"{inner}reserved {reserved.start}" + (f" to {end};" if end > reserved.start else ";")
    for name in message.reserved_name:
        yield f'{inner}reserved "{name}";'
    yield f"{indent}}}"


def _field(field: descriptor_pb2.FieldDescriptorProto, maps: dict[str, object]) -> str:
    entry = maps.get(field.type_name.rsplit(".", 1)[-1]) if field.type_name else None
    if entry is not None and field.label == FDP.LABEL_REPEATED:
        key, value = entry.field  # type: ignore[attr-defined]
        kind = f"map<{_type(key)}, {_type(value)}>"
    else:
        label = "repeated " if field.label == FDP.LABEL_REPEATED else ""
        label = "optional " if field.proto3_optional else label
        kind = label + _type(field)
    options = " [deprecated = true]" if field.options.deprecated else ""
    return f"{kind} {field.name} = {field.number}{options};"


def _type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    return _SCALARS.get(field.type) or field.type_name


def write(output: Path) -> None:
    version = importlib.metadata.version("tritonclient")
    output.mkdir(parents=True, exist_ok=True)
    for file in descriptors():
        (output / file.name).write_text(render(file, version))
    (output / "VERSION").write_text(f"tritonclient {version}\n")
    licence = importlib.metadata.distribution("tritonclient").read_text("licenses/LICENSE.txt")
    (output / "LICENSE.txt").write_text(licence or "BSD-3-Clause (NVIDIA CORPORATION)\n")
    check(output)


def check(output: Path) -> None:
    """Compile the printed files and compare them with the wheel's descriptors."""
    with tempfile.TemporaryDirectory() as scratch:
        compiled = Path(scratch) / "triton.binpb"
        names = [file.name for file in descriptors()]
        if protoc.main(["protoc", f"-I{output}", f"--descriptor_set_out={compiled}", *names]):
            raise SystemExit("the printed Triton protos do not compile")
        printed = descriptor_pb2.FileDescriptorSet.FromString(compiled.read_bytes())
    by_name = {file.name: file for file in printed.file}
    for original in descriptors():
        again = by_name[original.name]
        for proto in (original, again):
            _clear_json_names(proto)
        if again != original:
            raise SystemExit(f"the printed {original.name} differs from tritonclient's descriptor")


def _clear_json_names(file: descriptor_pb2.FileDescriptorProto) -> None:
    def clear(message: descriptor_pb2.DescriptorProto) -> None:
        for field in message.field:
            field.ClearField("json_name")
        for nested in message.nested_type:
            clear(nested)

    for message in file.message_type:
        clear(message)


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "generated" / "triton")
