"""Cold start: the first inference of an on-demand model against an eager one's.

One MLServe with its embedded Triton, the "add" Python-backend model
uploaded as two models. The rounds interleave, so drift on the machine
touches both alike; each round is

* eager: ``CreateDeployment`` with ``wait`` (timed: the load happens here),
  then the first ``ModelInfer`` through the gateway (timed), then ten more
  (the median: a warm call);
* on demand: ``CreateDeployment`` with ``loading: on_demand`` (timed: it
  loads nothing), then the first ``ModelInfer`` (timed: it waits for the
  load), then ten more;

and both are undeployed. One untimed round of each comes first (a first load
maps Triton's Python backend and the stub's libraries from disk).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import tritonclient.grpc as triton

from bench.common import Report, Table, served_in_scratch, summary
from mlserve_api.v1 import deployment_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import upload_add
from tests.support.tritons import add_inputs

DEFAULT_ROUNDS = 5
WARM_CALLS = 10
MODES = {
    "eager": deployment_pb2.LOADING_MODE_EAGER,
    "on demand": deployment_pb2.LOADING_MODE_ON_DEMAND,
}


@dataclass
class Timings:
    deploy: list[float] = field(default_factory=list)
    first_call: list[float] = field(default_factory=list)
    warm_call: list[float] = field(default_factory=list)

    def add(self, deploy: float, first: float, warm: float) -> None:
        self.deploy.append(deploy)
        self.first_call.append(first)
        self.warm_call.append(warm)


def run(rounds: int = DEFAULT_ROUNDS) -> Report:
    timings = {mode: Timings() for mode in MODES}
    with served_in_scratch("cold-start-") as (server, _):
        stubs = server.stubs()
        try:
            for mode in MODES:
                upload_add(stubs, _model(mode))
            for round_number in range(rounds + 1):
                for mode, loading in MODES.items():
                    measured = one_round(server, stubs, _model(mode), loading)
                    if round_number:  # the first round warms the disk cache up
                        timings[mode].add(*measured)
        finally:
            stubs.channel.close()
    return report(timings, rounds)


def _model(mode: str) -> str:
    return "bench-" + mode.replace(" ", "-")


def one_round(
    server: MLServeProcess, stubs: Stubs, model: str, loading: deployment_pb2.LoadingMode.ValueType
) -> tuple[float, float, float]:
    """(CreateDeployment, first call, median warm call) seconds; undeployed after."""
    began = time.perf_counter()
    stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True,
            deployment=deployment_pb2.Deployment(
                model=model,
                servers=["local"],
                loading=loading,
            ),
        ),
        metadata=stubs.auth,
        timeout=120,
    )
    deployed = time.perf_counter() - began
    client = triton.InferenceServerClient(server.address)
    headers = {"authorization": f"Bearer {stubs.key}"}
    try:
        calls = []
        for _ in range(1 + WARM_CALLS):
            began = time.perf_counter()
            client.infer(model, add_inputs(), headers=headers, client_timeout=120)
            calls.append(time.perf_counter() - began)
    finally:
        client.close()
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=model), metadata=stubs.auth, timeout=120
        )
    return deployed, calls[0], statistics.median(calls[1:])


def report(timings: dict[str, Timings], rounds: int) -> Report:
    def ms(values: list[float]) -> str:
        low, middle, high = summary(values)
        return f"{middle * 1000:.0f} ({low * 1000:.0f}-{high * 1000:.0f})"

    rows = [
        [
            mode,
            ms(found.deploy),
            ms(found.first_call),
            ms([d + f for d, f in zip(found.deploy, found.first_call, strict=True)]),
            f"{statistics.median(found.warm_call) * 1000:.1f}",
        ]
        for mode, found in timings.items()
    ]
    eager, lazy = timings["eager"], timings["on demand"]
    ratio = statistics.median(lazy.first_call) / statistics.median(
        [d + f for d, f in zip(eager.deploy, eager.first_call, strict=True)]
    )
    return Report(
        "cold-start: first inference of an on-demand model vs an eager deployment",
        [
            Table(
                [
                    *("loading", "CreateDeployment ms", "first call ms"),
                    *("deploy + first call ms", "warm call ms (median)"),
                ],
                rows,
            )
        ],
        [
            f"{rounds} interleaved rounds after one untimed round; median (min-max)",
            f"on demand, the first call waits for the load: {ratio:.2f}x the eager "
            "deployment's CreateDeployment + first call",
        ],
    )
