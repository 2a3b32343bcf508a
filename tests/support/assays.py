"""Assays' domain tests without a server: a model's rows in the bound database,
and log records whose first input element carries the values."""

from __future__ import annotations

import datetime as dt

import numpy as np
from google.protobuf import text_format

from mlserve.monitor.records import Record
from mlserve.monitor.tensors import Tensor
from mlserve.storage import tables
from tests.support.models import scale_model_config


def store_scale_model(name: str) -> None:
    """Model ``name`` with version 1 of a scale model with a 4-element FP32 INPUT."""
    model = tables.Model.create(name=name)
    config = text_format.MessageToString(scale_model_config(name, dims=(4,)))
    tables.ModelVersion.create(
        model=model, version=1, sha256="0" * 64, size_bytes=0, files="[]", config=config,
        upload_id="u",
    )  # fmt: skip


def records(
    start: dt.datetime, values: list[float], model: str, tensor: str = "INPUT"
) -> list[Record]:
    """One call of ``model`` (version 1) per value, a second apart from ``start``, with
    ``tensor`` = [value, 0, 0, 0]."""
    return [
        Record(
            time=start + dt.timedelta(seconds=i),
            model=model,
            version=1,
            deployment=model,
            inputs=[Tensor(tensor, "FP32", (4,), np.array([v, 0, 0, 0], np.float32))],
        )
        for i, v in enumerate(values)
    ]
