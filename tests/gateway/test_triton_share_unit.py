"""Triton's share of latency: what grew in Triton's totals since the last round."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from mlserve.deploy.placement import QueueGrowth
from mlserve.gateway.stats import InferenceStats
from mlserve.gateway.triton_share import TritonShare


def _value(registry: CollectorRegistry, name: str, version: str = "1") -> float | None:
    return registry.get_sample_value(name, {"model": "m", "version": version})


def test_the_first_report_is_the_baseline_then_growth_is_counted() -> None:
    registry = CollectorRegistry()
    share = TritonShare(registry)
    share.add("local", "m", {1: (100, 5_000_000_000, 0)})
    assert _value(registry, "mlserve_triton_inference_requests_total") is None
    share.add("local", "m", {1: (110, 5_500_000_000, 0)})
    assert _value(registry, "mlserve_triton_inference_requests_total") == 10
    assert _value(registry, "mlserve_triton_inference_seconds_total") == 0.5


def test_a_restarted_triton_starts_a_new_baseline() -> None:
    registry = CollectorRegistry()
    share = TritonShare(registry)
    share.add("local", "m", {1: (100, 9_000_000_000, 0)})
    share.add("local", "m", {1: (3, 1_000_000, 0)})  # totals fell: Triton restarted
    assert _value(registry, "mlserve_triton_inference_requests_total") is None
    share.add("local", "m", {1: (5, 3_000_000, 0)})
    assert _value(registry, "mlserve_triton_inference_requests_total") == 2


def test_servers_are_counted_apart_and_versions_by_label() -> None:
    registry = CollectorRegistry()
    share = TritonShare(registry)
    for server in ("a", "b"):
        share.add(server, "m", {1: (0, 0, 0), 2: (0, 0, 0)})
        share.add(server, "m", {1: (1, 1_000_000, 0), 2: (2, 2_000_000, 0)})
    assert _value(registry, "mlserve_triton_inference_requests_total", "1") == 2
    assert _value(registry, "mlserve_triton_inference_requests_total", "2") == 4


def _histogram(registry: CollectorRegistry, name: str, bucket: str) -> float | None:
    labels = {"model": "m", "version": "1", "le": bucket}
    return registry.get_sample_value(f"{name}_bucket", labels)


def test_each_rounds_mean_is_one_observation_of_the_interval_histogram() -> None:
    registry = CollectorRegistry()
    share = TritonShare(registry)
    share.add("local", "m", {1: (0, 0, 0)})
    share.add("local", "m", {1: (10, 10 * 1_000_000, 0)})  # 1 ms each
    share.add("local", "m", {1: (10, 10 * 1_000_000, 0)})  # no traffic: no observation
    share.add("local", "m", {1: (12, 10 * 1_000_000 + 2 * 40_000_000, 0)})  # 40 ms each
    name = "mlserve_triton_interval_mean_seconds"
    assert registry.get_sample_value(f"{name}_count", {"model": "m", "version": "1"}) == 2
    assert _histogram(registry, name, "0.001") == 1
    assert _histogram(registry, name, "0.02") == 1
    assert _histogram(registry, name, "0.05") == 2


def test_the_share_is_tritons_time_over_the_gateways_in_the_same_round() -> None:
    registry = CollectorRegistry()
    stats = InferenceStats(registry)
    share = TritonShare(registry, stats)
    share.share("m", {})  # the gateway's baseline
    for _ in range(4):
        stats.record("m", 1, True, 0.010)
    share.share("m", {1: (4, 4 * 3_000_000)})  # 3 ms of each 10 ms in Triton
    share.share("m", {})  # no traffic this round: nothing observed
    name = "mlserve_triton_share_ratio"
    labels = {"model": "m", "version": "1"}
    assert registry.get_sample_value(f"{name}_count", labels) == 1
    assert registry.get_sample_value(f"{name}_sum", labels) == pytest.approx(0.3)
    assert _histogram(registry, name, "0.2") == 0
    assert _histogram(registry, name, "0.3") == 1


def test_each_round_keeps_the_queue_growth_per_model_and_server() -> None:
    share = TritonShare(CollectorRegistry())
    share.add("a", "m", {1: (0, 0, 0)})
    share.add("a", "m", {1: (4, 400_000_000, 320_000_000)})  # 80 ms queued each
    share.add("b", "m", {1: (7, 7_000_000, 0)})  # b's baseline: no growth yet
    assert share.queue_growth() == {("m", "a"): QueueGrowth(4, 320_000_000)}
    assert share.queue_growth()[("m", "a")].mean_queue_ns() == 80_000_000
