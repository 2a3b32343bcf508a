"""Pinning a request's version on its wire bytes, without parsing it."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from mlserve.gateway import wire
from mlserve.triton import modelconfig
from tests.support.models import add_model_config


def test_with_version_names_the_version_and_keeps_everything_else() -> None:
    request = service_pb2.ModelInferRequest(model_name="m", id="call-7")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[4])
    for named in ("", "1"):
        request.model_version = named
        pinned = wire.with_version(wire.encode(request), 12)
        assert wire.model_name_and_version(pinned) == ("m", "12")
        parsed = service_pb2.ModelInferRequest.FromString(pinned)
        expected = service_pb2.ModelInferRequest()
        expected.CopyFrom(request)
        expected.model_version = "12"
        assert parsed == expected


def test_configs_that_differ_only_in_versions_serve_side_by_side() -> None:
    config = add_model_config("m")
    both = modelconfig.for_versions(config, [2, 1, 2])
    assert list(both.version_policy.specific.versions) == [1, 2]
    assert modelconfig.same_but_versions(modelconfig.for_version(config, 1), both)
    other = modelconfig.for_version(config, 1)
    other.max_batch_size = 8
    assert not modelconfig.same_but_versions(other, both)
