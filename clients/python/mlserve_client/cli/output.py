"""How client commands print: aligned tables, labelled fields, short state words, times."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timezone

from google.protobuf.timestamp_pb2 import Timestamp

from mlserve_api.v1 import deployment_pb2, model_pb2, server_pb2


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Columns aligned by their widest cell, two spaces apart."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    for line in lines:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


def print_fields(*fields: tuple[str, str]) -> None:
    """One ``label: value`` line per field, values aligned; an empty value prints as '-'."""
    width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        print(f"{label + ':':<{width}} {value or '-'}")


def deployment_state(state: deployment_pb2.DeploymentState.ValueType) -> str:
    return state_word(deployment_pb2.DeploymentState.Name(state))


def server_state(state: server_pb2.ServerState.ValueType) -> str:
    return state_word(server_pb2.ServerState.Name(state))


def state_word(full_name: str) -> str:
    """READY for DEPLOYMENT_STATE_READY or SERVER_STATE_READY."""
    return full_name.split("_STATE_", 1)[-1]


def labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))


def kind_word(kind: model_pb2.ModelKind.ValueType) -> str:
    return model_pb2.ModelKind.Name(kind).removeprefix("MODEL_KIND_").lower() if kind else "-"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, newlines included, as one space."""
    return " ".join(text.split())


def when(moment: Timestamp) -> str:
    """Local time to the second, or '-' for an unset timestamp."""
    if not moment.seconds and not moment.nanos:
        return "-"
    local = moment.ToDatetime(tzinfo=timezone.utc).astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S")
