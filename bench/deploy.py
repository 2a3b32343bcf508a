"""Deploy latency: MLServe's CreateDeployment (returns once the model is READY)
against Triton's own RepositoryModelLoad of the same model.

Two Tritons from the same nvidia-pytriton wheel run side by side: the one
MLServe embeds, and a separate :class:`mlserve.triton.launcher.EmbeddedTriton`
on a repository holding the same "add" Python-backend model in the same
layout (``add/config.pbtxt``, ``add/1/model.py``). The rounds interleave, so
drift on the machine touches both alike; each round is

* MLServe: ``CreateDeployment`` (timed), then ``DeleteDeployment`` (timed,
  returns once Triton has let go of the model);
* Triton: ``RepositoryModelLoad`` by name (timed), then unload and wait until
  the index no longer lists the model (timed);
* Triton again, with the config override MLServe sends (``config`` parameter,
  the version pinned), to tell Triton's cost of that override apart from
  MLServe's own.

One untimed round of each comes first (a first load maps Triton's Python
backend and the stub's libraries from disk).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table, summary
from mlserve.triton import modelconfig
from mlserve.triton.client import TritonClient
from mlserve.triton.launcher import EmbeddedTriton
from mlserve_api.v1 import deployment_pb2, model_pb2
from tests.support.mlserve import Stubs
from tests.support.models import add_model_files, write_add_model
from tests.support.uploading import stream

DEFAULT_ROUNDS = 5
MODEL = "add"


@dataclass
class Timings:
    load: list[float] = field(default_factory=list)
    unload: list[float] = field(default_factory=list)


@dataclass
class DeployFigures:
    rounds: int
    mlserve: Timings
    triton: Timings
    triton_override: Timings
    warmup: dict[str, float]


def run(rounds: int = DEFAULT_ROUNDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="deploy-", dir=RESULTS_DIR))
    try:
        figures = measure(work, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(figures)


def measure(work: Path, rounds: int) -> DeployFigures:
    loop = asyncio.new_event_loop()
    server = MLServeProcess(work / "home", "--health-interval", "2")
    triton = EmbeddedTriton(
        work / "triton-repository",
        work / "triton-work",
        log_path=work / "triton.log",
    )
    write_add_model(work / "triton-repository", name=MODEL)
    client: TritonClient | None = None
    try:
        print("deploy: starting MLServe with its embedded Triton", flush=True)
        server.start()
        print("deploy: starting a separate Triton on the same model layout", flush=True)
        loop.run_until_complete(triton.start())
        client = TritonClient("bench", triton.address)
        stubs = server.stubs()
        try:
            upload_add(stubs)
            override = pinned_config_json()

            def mlserve_round() -> tuple[float, float]:
                return deploy_round(stubs)

            triton_client = client

            def triton_round() -> tuple[float, float]:
                return triton_load_round(loop, triton_client, None)

            def override_round() -> tuple[float, float]:
                return triton_load_round(loop, triton_client, override)

            paths: dict[str, tuple[Callable[[], tuple[float, float]], Timings]] = {
                "MLServe": (mlserve_round, Timings()),
                "Triton": (triton_round, Timings()),
                "Triton+override": (override_round, Timings()),
            }
            warmup = {name: action()[0] for name, (action, _) in paths.items()}
            for number in range(1, rounds + 1):
                for action, timings in paths.values():
                    load, unload = action()
                    timings.load.append(load)
                    timings.unload.append(unload)
                loads = ", ".join(f"{name} {t.load[-1]:.3f}s" for name, (_, t) in paths.items())
                print(f"deploy: round {number}/{rounds}: {loads}", flush=True)
        finally:
            stubs.channel.close()
        return DeployFigures(
            rounds=rounds,
            mlserve=paths["MLServe"][1],
            triton=paths["Triton"][1],
            triton_override=paths["Triton+override"][1],
            warmup=warmup,
        )
    except BaseException:
        print(f"deploy: MLServe's log ends with:\n{_tail(server.log)}")
        print(f"deploy: the separate Triton's log ends with:\n{_tail(work / 'triton.log')}")
        raise
    finally:
        if client is not None:
            loop.run_until_complete(client.close())
        loop.run_until_complete(triton.stop())
        loop.close()
        server.stop()


def upload_add(stubs: Stubs) -> None:
    files = add_model_files(name=MODEL)
    config = files.pop("config.pbtxt").decode()
    version: model_pb2.ModelVersion = stubs.models.UploadModelVersion(
        stream(MODEL, files, config=config), metadata=tuple(stubs.auth)
    )
    if version.version != 1:
        raise RuntimeError(f"expected version 1 of {MODEL!r}, got {version}")


def pinned_config_json() -> str:
    """The config MLServe sends Triton for version 1 of the model, built the same way."""
    text = add_model_files(name=MODEL)["config.pbtxt"].decode()
    return modelconfig.to_json(modelconfig.for_version(modelconfig.parse(text, MODEL), 1))


def deploy_round(stubs: Stubs) -> tuple[float, float]:
    """CreateDeployment (must come back READY), then DeleteDeployment: their seconds."""
    create = deployment_pb2.CreateDeploymentRequest(
        wait=True, deployment=deployment_pb2.Deployment(model=MODEL, version=1)
    )
    started = time.perf_counter()
    try:
        deployment = stubs.deployments.CreateDeployment(create, metadata=tuple(stubs.auth))
    except grpc.RpcError as error:
        raise RuntimeError(f"CreateDeployment failed: {error}") from None
    loaded = time.perf_counter()
    if deployment.state != deployment_pb2.DEPLOYMENT_STATE_READY:
        raise RuntimeError(
            f"CreateDeployment returned a deployment that is not READY: {deployment}"
        )
    stubs.deployments.DeleteDeployment(
        deployment_pb2.DeleteDeploymentRequest(name=MODEL), metadata=tuple(stubs.auth)
    )
    return loaded - started, time.perf_counter() - loaded


def triton_load_round(
    loop: asyncio.AbstractEventLoop, client: TritonClient, config_json: str | None
) -> tuple[float, float]:
    """RepositoryModelLoad (then checked ready), then unload until gone: their seconds."""
    load_seconds = _timed(loop, client.load(MODEL, config_json=config_json))
    if not loop.run_until_complete(client.model_ready(MODEL, 1)):
        raise RuntimeError(f"Triton says {MODEL!r} is not ready after loading it")
    unload_seconds = _timed(loop, client.unload(MODEL))
    return load_seconds, unload_seconds


def _timed(loop: asyncio.AbstractEventLoop, call: Coroutine[Any, Any, None]) -> float:
    started = time.perf_counter()
    loop.run_until_complete(call)
    return time.perf_counter() - started


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError as error:
        return f"(unreadable: {error})"


# --- the report ---------------------------------------------------------------


def report(figures: DeployFigures) -> Report:
    f = figures
    load_base = summary(f.triton.load)[1]
    unload_base = summary(f.triton.unload)[1]

    def row(what: str, values: list[float], warmup: float | None, base: float) -> list[str]:
        low, median, high = summary(values)
        return [
            what,
            f"{median * 1000:.0f}",
            f"{low * 1000:.0f}",
            f"{high * 1000:.0f}",
            "" if warmup is None else f"{warmup * 1000:.0f}",
            f"{median / base:.2f}",
        ]

    loads = [
        row("MLServe CreateDeployment -> READY", f.mlserve.load, f.warmup["MLServe"], load_base),
        row("Triton RepositoryModelLoad", f.triton.load, f.warmup["Triton"], load_base),
        row(
            "Triton RepositoryModelLoad + MLServe's config override",
            f.triton_override.load,
            f.warmup["Triton+override"],
            load_base,
        ),
    ]
    unloads = [
        row("MLServe DeleteDeployment (waits for unload)", f.mlserve.unload, None, unload_base),
        row("Triton RepositoryModelUnload + wait until gone", f.triton.unload, None, unload_base),
        row("  same, after a load with the override", f.triton_override.unload, None, unload_base),
    ]
    mlserve_median = summary(f.mlserve.load)[1]
    paired = [m - t for m, t in zip(f.mlserve.load, f.triton.load, strict=True)]
    paired_override = [m - t for m, t in zip(f.mlserve.load, f.triton_override.load, strict=True)]
    spread = max(f.triton.load) - min(f.triton.load)
    header = ["what", "median ms", "min ms", "max ms", "warm-up ms", "vs Triton"]
    notes = [
        f"{f.rounds} timed rounds after one untimed warm-up round, the three paths "
        "interleaved within each round; two Tritons from the same wheel run side by side.",
        f"deploy ratio (MLServe median / Triton median): {mlserve_median / load_base:.2f}.",
        "MLServe minus Triton within each round, median: "
        f"{1000 * summary(paired)[1]:+.0f} ms against the plain load, "
        f"{1000 * summary(paired_override)[1]:+.0f} ms against the load with the same config "
        f"override; Triton's own load varied by {1000 * spread:.0f} ms (max - min) in the rounds.",
        "'vs Triton' is each median over Triton's plain load (or unload) median.",
    ]
    return Report(
        title=f"deploy: {MODEL!r} (Python backend) CreateDeployment vs Triton's load",
        tables=[Table(header, loads), Table(header, unloads)],
        notes=notes,
    )
