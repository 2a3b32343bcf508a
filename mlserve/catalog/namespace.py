"""The one namespace of models and pipelines: a pipeline is deployed as a Triton
model (an ensemble) named like it, so no model and pipeline may share a name.

The checks read the names of both tables and nothing else; ``models.py`` and
``pipelines.py`` each call the one about the other kind.
"""

from __future__ import annotations

from mlserve.core.errors import AlreadyExists
from mlserve.storage import tables


def refuse_pipeline_name(name: str) -> None:
    """AlreadyExists when a pipeline has ``name`` (blocking)."""
    if tables.Pipeline.select().where(tables.Pipeline.name == name).exists():
        raise AlreadyExists(
            f"a pipeline is named {name!r}; pipelines and models share one namespace "
            "(the pipeline is a Triton model): choose another name"
        )


def refuse_model_name(name: str) -> None:
    """AlreadyExists when a model has ``name`` (blocking)."""
    if tables.Model.select().where(tables.Model.name == name).exists():
        raise AlreadyExists(
            f"a model is named {name!r}; pipelines and models share one namespace "
            "(the pipeline is a Triton model): choose another name"
        )
