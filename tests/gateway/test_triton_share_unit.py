"""Triton's share of latency: what grew in Triton's totals since the last round."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from mlserve.gateway.triton_share import TritonShare


def _value(registry: CollectorRegistry, name: str, version: str = "1") -> float | None:
    return registry.get_sample_value(name, {"model": "m", "version": version})


def test_the_first_report_is_the_baseline_then_growth_is_counted() -> None:
    registry = CollectorRegistry()
    share = TritonShare(registry)
    share.add("local", "m", {1: (100, 5_000_000_000)})
    assert _value(registry, "mlserve_triton_inference_requests_total") is None
    share.add("local", "m", {1: (110, 5_500_000_000)})
    assert _value(registry, "mlserve_triton_inference_requests_total") == 10
    assert _value(registry, "mlserve_triton_inference_seconds_total") == 0.5


def test_a_restarted_triton_starts_a_new_baseline() -> None:
    registry = CollectorRegistry()
    share = TritonShare(registry)
    share.add("local", "m", {1: (100, 9_000_000_000)})
    share.add("local", "m", {1: (3, 1_000_000)})  # totals fell: Triton restarted
    assert _value(registry, "mlserve_triton_inference_requests_total") is None
    share.add("local", "m", {1: (5, 3_000_000)})
    assert _value(registry, "mlserve_triton_inference_requests_total") == 2


def test_servers_are_counted_apart_and_versions_by_label() -> None:
    registry = CollectorRegistry()
    share = TritonShare(registry)
    for server in ("a", "b"):
        share.add(server, "m", {1: (0, 0), 2: (0, 0)})
        share.add(server, "m", {1: (1, 1_000_000), 2: (2, 2_000_000)})
    assert _value(registry, "mlserve_triton_inference_requests_total", "1") == 2
    assert _value(registry, "mlserve_triton_inference_requests_total", "2") == 4
