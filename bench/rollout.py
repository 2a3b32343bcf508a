"""Rollouts under steady inference: failed calls per rollout, side by side.

One MLServe with its embedded Triton; inference through MLServe at
concurrency 8 (tritonclient grpc) while a deployment of "add" moves between
two versions, round after round, on two models in turn:

* beside: the two versions' configs are the same apart from their versions,
  so the next version is loaded beside the serving one and the route moves
  once it is READY (what every rollout with an unchanged config does now);
* switch: version 2's config asks for two instances, so Triton cannot serve
  both under one config and the rollout unloads the old version before the
  new one is ready — what every rollout did before.

Each rollout's window runs from just before UpdateDeployment to a moment
after it returns; the calls answered and failed in it are counted.
"""

from __future__ import annotations

import time

from bench.common import MLServeProcess, Report, Table, served_in_scratch
from tests.support.mlserve import Stubs
from tests.support.models import add_model_files
from tests.support.rollouts import roll_to, steady_inference
from tests.support.tritons import deploy, wait_for
from tests.support.uploading import stream

DEFAULT_ROUNDS = 5
# Calls still counted after UpdateDeployment returns: the old version's unload.
_AFTER = 0.5


def upload(stubs: Stubs, name: str, offset: float, instances: int) -> None:
    files = add_model_files(offset, name=name)
    config = files.pop("config.pbtxt").decode().replace("count: 1", f"count: {instances}")
    stubs.models.UploadModelVersion(stream(name, files, config=config), metadata=stubs.auth)


def measure(server: MLServeProcess, stubs: Stubs, rounds: int) -> dict[str, list[tuple[int, int]]]:
    """(failed, answered) calls of each rollout, by path."""
    models = {"beside": 1, "switch": 2}  # version 2's instance count
    for name, instances in models.items():
        upload(stubs, name, 0.0, 1)
        upload(stubs, name, 100.0, instances)
        deploy(stubs, name, version=1)
    windows: dict[str, list[tuple[int, int]]] = {name: [] for name in models}
    version = 1
    for number in range(1, 2 * rounds + 1):
        version = 3 - version
        for name in models:
            with steady_inference(server, name) as outcomes:
                serving = 3 - version
                wait_for(
                    lambda o=outcomes, v=serving: o.count(v) or o.failures, 60, "first answers"
                )
                before_failed = len(outcomes.failures)
                before_answered = sum(outcomes.answers.values())
                roll_to(stubs, name, version)
                time.sleep(_AFTER)
            failed = len(outcomes.failures) - before_failed
            answered = sum(outcomes.answers.values()) - before_answered
            windows[name].append((failed, answered))
        print(
            f"rollout: round {number}/{2 * rounds} to v{version}: "
            + ", ".join(f"{n} {w[-1][0]} failed of {sum(w[-1])}" for n, w in windows.items()),
            flush=True,
        )
    return windows


def run(rounds: int = DEFAULT_ROUNDS) -> Report:
    with served_in_scratch("rollout-") as (server, _):
        stubs = server.stubs()
        try:
            windows = measure(server, stubs, rounds)
        finally:
            stubs.channel.close()
    rows = []
    for name, counts in windows.items():
        failed = sum(f for f, _ in counts)
        calls = sum(f + a for f, a in counts)
        rows.append(
            [
                name,
                str(len(counts)),
                f"{failed / len(counts):.1f}",
                str(max(f for f, _ in counts)),
                f"{calls / len(counts):.0f}",
                f"{100 * failed / max(calls, 1):.2f}%",
            ]
        )
    header = ["path", "rollouts", "failed/rollout", "worst", "calls/rollout", "failed"]
    return Report(
        "rollout: failed calls per rollout under inference at concurrency 8",
        [Table(header, rows)],
        [
            "beside: next version loaded beside the serving one (same config); "
            "switch: configs differ, old version unloaded first (every rollout before)",
            f"window: UpdateDeployment plus {_AFTER}s after it returns",
        ],
    )
