"""Explaining a deployed model's predictions with KernelSHAP.

The model is called the way any client calls it: through the gateway's
``Forwarder`` (access checks, routing, failover), each batch of perturbed rows
one ModelInfer of up to ``max_batch_size`` rows. shap itself is synchronous
and CPU-bound, so it runs in a worker thread; its model function hands each
batch back to the event loop and waits for the answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from grpc import aio
from tritonclient.grpc import service_pb2

from mlserve.catalog import model_metadata
from mlserve.catalog.datasets import DatasetVersionRecord, find_dataset_version
from mlserve.catalog.models import model_row
from mlserve.catalog.versions import find_version
from mlserve.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from mlserve.gateway import wire
from mlserve.gateway.forwarding import Call, Forwarder
from mlserve.monitor.log import InferenceLog
from mlserve.monitor.reader import RowsQuery
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository

Array = npt.NDArray[Any]
METHOD = "kernel_shap"
DEFAULT_BACKGROUND_SIZE = 50
MAX_BACKGROUND_SIZE = 1000
DEFAULT_SAMPLES = 2048
MAX_SAMPLES = 100_000
MAX_ROWS = 100
# Logged rows read for a background from the inference log, evenly spread over
# the window, before k-means: bounds the time and memory one Explain takes.
MAX_LOG_ROWS = 10_000
# Model calls one explanation has in flight at once: enough to keep a model's
# instances busy, few enough that a small max_batch_size (thousands of calls)
# never floods the gateway or Triton's queue.
MAX_IN_FLIGHT = 8
# Triton datatypes the explainer can send, as numpy types.
NUMERIC = {
    "FP64": np.float64, "FP32": np.float32, "FP16": np.float16,
    "INT64": np.int64, "INT32": np.int32, "INT16": np.int16, "INT8": np.int8,
    "UINT64": np.uint64, "UINT32": np.uint32, "UINT16": np.uint16, "UINT8": np.uint8,
}  # fmt: skip


@dataclass(frozen=True)
class ExplainQuery:
    model: str
    rows: list[list[float]]
    output: str = ""
    output_index: int = 0
    background_dataset: tuple[str, int] | None = None
    # [start, end) of the inference log (None: open) to take the background from.
    background_log: tuple[dt.datetime | None, dt.datetime | None] | None = None
    background_size: int = 0
    samples: int = 0
    feature_names: list[str] = field(default_factory=list)
    include_prediction: bool = False


@dataclass(frozen=True)
class Explanation:
    contributions: list[float]
    prediction: float | None


@dataclass(frozen=True)
class ExplainResult:
    method: str
    output: str
    feature_names: list[str]
    base_value: float
    explanations: list[Explanation]
    version: int
    model_calls: int


@dataclass(frozen=True)
class _Signature:
    """What the explainer needs of a model's metadata and config."""

    input_name: str
    input_type: str
    width: int
    output_name: str
    output_type: str
    max_batch_size: int


class Explainer:
    def __init__(
        self, forwarder: Forwarder, repository: Repository, log: InferenceLog | None = None
    ) -> None:
        self.forwarder = forwarder
        self.repository = repository
        self.log = log

    async def explain(self, query: ExplainQuery, call: Call) -> ExplainResult:
        """Each row's per-feature contributions to one output of the deployed model.

        Raises:
            NotFound: the model, or the background dataset, does not exist or
                the caller may not see it.
            FailedPrecondition: the model is not deployed, or there is no
                background (no dataset named, none recorded as training data,
                no logged inputs in the window named).
            InvalidArgument: rows of the wrong width or of values the input's
                type cannot hold, a non-numeric or multi-input model, an
                unknown output, bad options.
        """
        samples = query.samples or DEFAULT_SAMPLES
        size = query.background_size or DEFAULT_BACKGROUND_SIZE
        if not query.rows or len(query.rows) > MAX_ROWS:
            raise InvalidArgument(f"give between 1 and {MAX_ROWS} rows to explain")
        if not 0 < samples <= MAX_SAMPLES or not 0 < size <= MAX_BACKGROUND_SIZE:
            raise InvalidArgument(
                f"samples must be in 1..{MAX_SAMPLES} and background_size in "
                f"1..{MAX_BACKGROUND_SIZE}"
            )
        if query.background_dataset is not None and query.background_log is not None:
            raise InvalidArgument("name one background: background_dataset or background_log")
        signature, version = await self._signature(query, call)
        names, background = await self._background(query, signature, version)
        rows = _checked_rows(query.rows, names, signature.input_type)
        predict = _Predictor(self.forwarder, query.model, signature, query.output_index, call)
        loop = asyncio.get_running_loop()
        try:
            # asyncio.to_thread copies the context: the model calls run as the caller.
            values, base, predicted = await asyncio.to_thread(
                _kernel_shap, predict, loop, background, rows, size, samples
            )
        finally:
            # A cancelled await leaves shap's thread running: its next model call
            # ends it, instead of thousands of calls for a caller who has gone.
            predict.abandoned = True
        predictions: list[float | None] = [None] * len(rows)
        if query.include_prediction:
            predictions = [float(p) for p in predicted]
        return ExplainResult(
            METHOD,
            signature.output_name,
            names,
            base,
            [
                Explanation([float(v) for v in row_values], prediction)
                for row_values, prediction in zip(values, predictions, strict=True)
            ],
            version,
            predict.calls,
        )

    async def _signature(self, query: ExplainQuery, call: Call) -> tuple[_Signature, int]:
        """The model's one numeric input and chosen output, through the gateway."""
        metadata = service_pb2.ModelMetadataResponse.FromString(
            await self.forwarder.routed(
                "ModelMetadata",
                wire.encode(service_pb2.ModelMetadataRequest(name=query.model)),
                call,
            )
        )
        config = service_pb2.ModelConfigResponse.FromString(
            await self.forwarder.routed(
                "ModelConfig",
                wire.encode(service_pb2.ModelConfigRequest(name=query.model)),
                call,
            )
        ).config
        if len(metadata.inputs) != 1:
            raise InvalidArgument(
                f"model {query.model!r} has {len(metadata.inputs)} inputs; Explain supports "
                "models of one input tensor of features"
            )
        tensor = metadata.inputs[0]
        if tensor.datatype not in NUMERIC:
            raise InvalidArgument(
                f"input {tensor.name!r} of model {query.model!r} is {tensor.datatype}: Explain "
                "supports numeric inputs only (not supported for BYTES or other types)"
            )
        outputs = {output.name: output for output in metadata.outputs}
        chosen = outputs.get(query.output or metadata.outputs[0].name)
        if chosen is None or chosen.datatype not in NUMERIC:
            raise InvalidArgument(
                f"output {query.output!r} is not a numeric output of model {query.model!r}; "
                f"its outputs are {', '.join(outputs)}"
            )
        # Triton's metadata shape of a batching model starts with the batch (-1).
        columns = int(chosen.shape[-1]) if len(chosen.shape) > bool(config.max_batch_size) else 1
        if query.output_index < 0 or (columns > 0 and query.output_index >= columns):
            raise InvalidArgument(
                f"output_index {query.output_index} is out of range: output {chosen.name!r} "
                f"has {columns if columns > 0 else 'a variable number of'} values per row"
            )
        width = int(tensor.shape[-1]) if tensor.shape else 1
        if width < 1:
            raise InvalidArgument(
                f"input {tensor.name!r} of model {query.model!r} has no fixed feature count"
            )
        version = int(metadata.versions[0]) if metadata.versions else 0
        signature = _Signature(
            tensor.name, tensor.datatype, width, chosen.name, chosen.datatype,
            config.max_batch_size,
        )  # fmt: skip
        return signature, version

    async def _background(
        self, query: ExplainQuery, signature: _Signature, version: int
    ) -> tuple[list[str], Array]:
        """The feature names and the background rows (one column per feature)."""
        if query.background_log is not None:
            return await self._logged_background(query, signature)
        if query.background_dataset is not None:
            record = await in_thread(find_dataset_version)(*query.background_dataset)
        else:
            trained = (await in_thread(find_version)(query.model, version)).training_dataset
            if trained is None:
                raise FailedPrecondition(
                    f"version {version} of model {query.model!r} names no training dataset: "
                    "name a background dataset in the request"
                )
            record = await in_thread(find_dataset_version)(*trained)
        frame = await in_thread(self._read_frame)(record)
        names = query.feature_names or await in_thread(_metadata_features)(query.model)
        return _feature_columns(frame, names, signature.width, record)

    async def _logged_background(
        self, query: ExplainQuery, signature: _Signature
    ) -> tuple[list[str], Array]:
        assert query.background_log is not None
        start, end = query.background_log
        if self.log is None:
            raise FailedPrecondition("this MLServe keeps no inference log: name a dataset")
        rows = await self.log.logged_inputs(
            RowsQuery(query.model, signature.input_name, signature.width, start, end, MAX_LOG_ROWS)
        )
        if not len(rows):
            window = f"{'the start' if start is None else start.isoformat()} to " + (
                "now" if end is None else end.isoformat()
            )
            raise FailedPrecondition(
                f"no logged inputs of model {query.model!r} from {window}: its deployment's "
                "logging policy must record inputs (mode INPUTS or ALL, UpdateLoggingPolicy) "
                "and calls must have been made in the window; or name a background dataset"
            )
        names = query.feature_names or await in_thread(_metadata_features)(query.model)
        if not names:
            names = [f"{signature.input_name}[{i}]" for i in range(signature.width)]
        _check_count(names, signature.width)
        return list(names), rows

    def _read_frame(self, record: DatasetVersionRecord) -> Any:
        import pandas as pd

        if not record.tables:
            raise InvalidArgument(
                f"dataset {record.dataset!r} version {record.version} holds no CSV or Parquet "
                "table (only scripts): name a dataset of rows as the background"
            )
        frames = []
        for entry in record.tables:
            with self.repository.open_blob(entry.spec.sha256) as handle:
                data = io.BytesIO(handle.read())
            if entry.spec.path.lower().endswith(".parquet"):
                frames.append(pd.read_parquet(data))
            else:
                frames.append(pd.read_csv(data))
        return pd.concat(frames, ignore_index=True)


def _metadata_features(model: str) -> list[str]:
    """The names in the model's ``features`` metadata, in input order (blocking)."""
    return [feature.name for feature in model_metadata.read(model_row(model), []).features]


def _check_count(names: Sequence[str], width: int) -> None:
    if len(names) != width:
        raise InvalidArgument(
            f"{len(names)} feature names (from the request, else the model's features "
            f"metadata); the model takes {width} features"
        )


def _feature_columns(
    frame: Any, names: Sequence[str], width: int, record: DatasetVersionRecord
) -> tuple[list[str], Array]:
    """The feature columns of a background dataset, and its rows with a finite value in
    each (a missing value reads as NaN: such a row is left out, as shap cannot use it)."""
    import pandas as pd

    what = f"dataset {record.dataset!r} version {record.version}"
    # pandas' own tests: numpy's issubdtype raises on pandas' dtypes (its text is one).
    kinds = pd.api.types
    numeric = [
        str(c) for c in frame.columns
        if kinds.is_numeric_dtype(frame[c]) and not kinds.is_bool_dtype(frame[c])
    ]  # fmt: skip
    if names:
        _check_count(names, width)
        missing = [name for name in names if name not in frame.columns]
        if missing:
            raise InvalidArgument(f"{what} has no column {missing[0]!r}")
        wrong = [
            name for name in names
            if not (name in numeric or kinds.is_bool_dtype(frame[name]))
        ]  # fmt: skip
        if wrong:
            raise InvalidArgument(
                f"column {wrong[0]!r} of {what} is {frame[wrong[0]].dtype}, not numbers: "
                "name numeric columns as feature_names (or the model's features metadata)"
            )
        chosen = list(names)
    else:
        if len(numeric) < width:
            raise InvalidArgument(
                f"{what} has {len(numeric)} numeric columns; the model takes {width} features"
            )
        chosen = numeric[:width]
    rows = frame[chosen].to_numpy(dtype=np.float64)
    rows = rows[np.isfinite(rows).all(axis=1)]
    if not len(rows):
        raise InvalidArgument(
            f"{what} has no row with a finite value in each of {', '.join(chosen)}: "
            "name another background"
        )
    return chosen, rows


def _checked_rows(rows: list[list[float]], names: list[str], datatype: str) -> Array:
    """The rows as an array, refused unless each is one value of ``datatype`` per feature."""
    for index, row in enumerate(rows):
        if len(row) < len(names):
            raise InvalidArgument(
                f"row {index} has {len(row)} values; the model takes {len(names)} features: "
                f"feature {names[len(row)]!r} is missing"
            )
        if len(row) > len(names):
            raise InvalidArgument(
                f"row {index} has {len(row)} values; the model takes {len(names)} features "
                f"({', '.join(names)}), the last being {names[-1]!r}"
            )
    values = np.asarray(rows, dtype=np.float64)
    kind: np.dtype[Any] = np.dtype(NUMERIC[datatype])
    with np.errstate(invalid="ignore"):
        if np.issubdtype(kind, np.integer):
            limits = np.iinfo(kind)
            wrong = (values != np.round(values)) | (values < limits.min) | (values > limits.max)
            wanted = f"whole numbers in {limits.min}..{limits.max}"
        else:
            wrong = ~(np.abs(values) <= np.finfo(kind).max)  # NaN and ±inf included
            wanted = "finite numbers"
    if wrong.any():
        at, column = (int(i) for i in np.argwhere(wrong)[0])
        raise InvalidArgument(
            f"row {at}: feature {names[column]!r} is {float(values[at, column])!r}, not a "
            f"{datatype} value: the model's input takes {wanted}"
        )
    return values


def _kernel_shap(
    predict: _Predictor,
    loop: asyncio.AbstractEventLoop,
    background: Array,
    rows: Array,
    size: int,
    samples: int,
) -> tuple[Array, float, Array]:
    """The rows' contributions, the base value and the rows' predictions.

    shap asks the model for the background, then for each row alone, then for
    that row's perturbations. The background and all the rows go to the model
    together in one call first, and those answers are handed back when shap
    asks for them again: Triton sees 1 call plus ⌈samples·background /
    max_batch_size⌉ per row, and the predictions come for free.
    """
    from mlserve.monitor.kernel_shap import KernelExplainer, summarise

    def model(batch: Array) -> Array:
        return asyncio.run_coroutine_threadsafe(predict.batched(batch), loop).result()

    # A background no larger than asked for is used as it is (exact means);
    # a larger one is summarised to ``size`` weighted k-means centres.
    summary: Any = background if len(background) <= size else summarise(background, size)
    points = np.ascontiguousarray(summary if len(background) <= size else summary.data)
    answers = model(np.concatenate([points, rows]))
    known = {points.tobytes(): answers[: len(points)]}
    for index in range(len(rows)):
        known[rows[index : index + 1].tobytes()] = answers[len(points) + index :][:1]

    def remembered(batch: Array) -> Array:
        if len(batch) <= len(points):
            answer = known.get(np.ascontiguousarray(batch, dtype=np.float64).tobytes())
            if answer is not None:
                return answer
        return model(batch)

    explainer = KernelExplainer(remembered, summary)
    values = explainer.shap_values(rows, nsamples=samples, silent=True)
    base = float(np.ravel(explainer.expected_value)[0])
    return np.asarray(values).reshape(len(rows), -1), base, answers[len(points) :]


class _Predictor:
    """The model as a function of rows: one ModelInfer per ``max_batch_size`` rows."""

    def __init__(
        self, forwarder: Forwarder, model: str, signature: _Signature, index: int, call: Call
    ) -> None:
        self.forwarder = forwarder
        self.model = model
        self.signature = signature
        self.index = index
        self.call = call
        self.calls = 0
        self.abandoned = False  # the explanation's caller has gone: call nothing more
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def batched(self, rows: Array) -> Array:
        step = self.signature.max_batch_size or 1
        parts = await asyncio.gather(
            *(self._infer(rows[start : start + step]) for start in range(0, len(rows), step))
        )
        return np.concatenate(parts)

    async def _infer(self, rows: Array) -> Array:
        sig = self.signature
        data = rows.astype(NUMERIC[sig.input_type])
        shape = [len(rows), sig.width] if sig.max_batch_size else [sig.width]
        request = service_pb2.ModelInferRequest(
            model_name=self.model,
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name=sig.input_name, datatype=sig.input_type, shape=shape
                )
            ],
            outputs=[
                service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=sig.output_name)
            ],
            raw_input_contents=[data.tobytes()],
        )
        try:
            async with self._in_flight:
                if self.abandoned:
                    raise Unavailable(f"the explanation of model {self.model!r} was abandoned")
                self.calls += 1
                raw, _ = await self.forwarder.send(
                    "ModelInfer", wire.encode(request), self.model, "", self.call
                )
        except aio.AioRpcError as error:
            raise Unavailable(
                f"model {self.model!r} failed while being explained: {error.details()}"
            ) from None
        response = service_pb2.ModelInferResponse.FromString(raw)
        position = [output.name for output in response.outputs].index(sig.output_name)
        values = np.frombuffer(
            response.raw_output_contents[position], dtype=NUMERIC[sig.output_type]
        ).reshape(len(rows), -1)
        if self.index >= values.shape[1]:
            raise InvalidArgument(
                f"output {sig.output_name!r} has {values.shape[1]} values per row; "
                f"output_index {self.index} is out of range"
            )
        return values[:, self.index].astype(np.float64)
