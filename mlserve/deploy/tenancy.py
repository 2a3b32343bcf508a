"""Which servers may hold which workspace's models: ``Server.workspaces``.

Python models on one Triton share its file system, so a workspace that must
not be read by other tenants' model code gets servers of its own. Placement
calls :func:`check_may_hold` for every server it picks (or
:meth:`ServerRecord.serves` to filter candidates), with everything that would
land there: the model, or the pipeline and each of its members.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mlserve.core.errors import FailedPrecondition
from mlserve.deploy.fleet import ServerRecord
from mlserve.storage import tables

__all__ = [
    "Placed",
    "check_may_hold",
    "may_hold",
    "placed_model",
    "placed_models",
    "placed_pipeline",
]


@dataclass(frozen=True)
class Placed:
    """A model or pipeline a deployment puts on a server, and the workspace it belongs to."""

    kind: str  # "model" or "pipeline"
    name: str
    workspace: str


def may_hold(server: ServerRecord, placed: Iterable[Placed]) -> bool:
    """Whether ``server``'s workspaces admit everything in ``placed``."""
    return all(server.serves(item.workspace) for item in placed)


def check_may_hold(server: ServerRecord, placed: Iterable[Placed]) -> None:
    """FailedPrecondition, naming the server and the workspace, unless ``server`` may hold all."""
    for item in placed:
        if not server.serves(item.workspace):
            raise FailedPrecondition(
                f"server {server.name!r} holds only models of workspace(s) "
                f"{', '.join(repr(w) for w in server.workspaces)}, and {item.kind} {item.name!r} "
                f"belongs to workspace {item.workspace!r}: deploy it on a server of its "
                "workspace, or one with no workspaces set"
            )


def placed_model(row: Any) -> Placed:
    """What placing the model of store row ``row`` puts on a server."""
    return Placed("model", row.name, _workspace_name(row))


def placed_pipeline(row: Any) -> Placed:
    """What placing the pipeline of store row ``row`` puts on a server, besides its members."""
    return Placed("pipeline", row.name, _workspace_name(row))


def placed_models(names: Sequence[str]) -> list[Placed]:
    """The models named ``names`` as placed things (blocking; unknown names are skipped)."""
    rows = tables.Model.select().where(tables.Model.name.in_(list(names)))
    return [placed_model(row) for row in rows]


def _workspace_name(row: Any) -> str:
    return row.workspace.name if row.workspace_id is not None else ""
