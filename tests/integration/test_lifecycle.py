"""The foundation's story end to end, against a real MLServe and a real Triton:
upload, deploy, infer, upgrade, undeploy, delete."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2

from mlserve_api.v1 import deployment_pb2, model_pb2, server_pb2
from tests.support.mlserve import Stubs
from tests.support.models import infer_add, local_triton, upload_add
from tests.support.uploading import stream


def test_upload_deploy_infer_upgrade_undeploy_delete(stubs: Stubs, model_name: str) -> None:
    first = upload_add(stubs, model_name)
    assert (first.model, first.version) == (model_name, 1)
    assert first.size_bytes == sum(f.size for f in first.files)
    assert len(first.sha256) == 64

    deployment = stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True, deployment=deployment_pb2.Deployment(model=model_name)
        ),
        metadata=stubs.auth,
    )
    assert deployment.state == deployment_pb2.DEPLOYMENT_STATE_READY, deployment
    assert [t.server for t in deployment.targets] == ["local"]
    fetched = stubs.deployments.GetDeployment(
        deployment_pb2.GetDeploymentRequest(name=model_name), metadata=stubs.auth
    )
    assert fetched.targets[0].state == deployment_pb2.DEPLOYMENT_STATE_READY

    client = local_triton(stubs)
    np.testing.assert_allclose(infer_add(client, model_name), [11, 22, 33, 44])

    second = upload_add(stubs, model_name, offset=100.0)
    assert second.version == 2
    stubs.deployments.UpdateDeployment(
        deployment_pb2.UpdateDeploymentRequest(
            wait=True,
            deployment=deployment_pb2.Deployment(name=model_name, version=2),
            update_mask=field_mask_pb2.FieldMask(paths=["version"]),
        ),
        metadata=stubs.auth,
    )
    np.testing.assert_allclose(infer_add(client, model_name), [111, 122, 133, 144])
    index = client.get_model_repository_index(as_json=True)["models"]
    states = {(m["name"], m.get("version")): m.get("state") for m in index}
    assert states[(model_name, "2")] == "READY"
    assert states.get((model_name, "1")) != "READY"

    local = stubs.servers.GetServer(server_pb2.GetServerRequest(name="local"), metadata=stubs.auth)
    assert any(m.name == model_name and m.version == 2 for m in local.loaded_models)

    with pytest.raises(grpc.RpcError) as refused:
        stubs.models.DeleteModelVersion(
            model_pb2.DeleteModelVersionRequest(model=model_name, version=2), metadata=stubs.auth
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as refused:
        stubs.models.DeleteModel(model_pb2.DeleteModelRequest(name=model_name), metadata=stubs.auth)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    stubs.deployments.DeleteDeployment(
        deployment_pb2.DeleteDeploymentRequest(name=model_name), metadata=stubs.auth
    )
    assert not client.is_model_ready(model_name)
    stubs.models.DeleteModelVersion(
        model_pb2.DeleteModelVersionRequest(model=model_name, version=1), metadata=stubs.auth
    )
    versions = stubs.models.ListModelVersions(
        model_pb2.ListModelVersionsRequest(model=model_name), metadata=stubs.auth
    )
    assert [v.version for v in versions.versions] == [2]
    stubs.models.DeleteModel(model_pb2.DeleteModelRequest(name=model_name), metadata=stubs.auth)
    with pytest.raises(grpc.RpcError) as gone:
        stubs.models.GetModel(model_pb2.GetModelRequest(name=model_name), metadata=stubs.auth)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_download_is_byte_identical(stubs: Stubs, model_name: str) -> None:
    payload = bytes(range(256)) * 20_000  # 5 MiB: several download chunks
    files = {"model.py": b"# not run\n", "weights/blob.bin": payload, "empty.txt": b""}
    version = stubs.models.UploadModelVersion(stream(model_name, files), metadata=stubs.auth)
    received: dict[str, bytearray] = {}
    for piece in stubs.models.DownloadModelVersion(
        model_pb2.DownloadModelVersionRequest(model=model_name, version=version.version),
        metadata=stubs.auth,
    ):
        buffer = received.setdefault(piece.path, bytearray())
        assert piece.offset == len(buffer)
        buffer.extend(piece.data)
    assert {path: bytes(data) for path, data in received.items()} == files
    assert {f.path: f.sha256 for f in version.files} == {
        path: hashlib.sha256(data).hexdigest() for path, data in files.items()
    }


def test_update_model_with_field_mask(stubs: Stubs, model_name: str) -> None:
    stubs.models.CreateModel(
        model_pb2.CreateModelRequest(model=model_pb2.Model(name=model_name, description="old")),
        metadata=stubs.auth,
    )
    updated = stubs.models.UpdateModel(
        model_pb2.UpdateModelRequest(
            model=model_pb2.Model(name=model_name, description="new", tags=["b", "a"]),
            update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
        ),
        metadata=stubs.auth,
    )
    assert updated.description == "old"
    assert list(updated.tags) == ["a", "b"]
    listed = stubs.models.ListModels(
        model_pb2.ListModelsRequest(tag="a", name_prefix=model_name), metadata=stubs.auth
    )
    assert [m.name for m in listed.models] == [model_name]
