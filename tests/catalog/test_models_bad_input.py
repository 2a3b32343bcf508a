"""Bad model names, unknown models and versions, refused deletes and bad page
tokens get the exact status code, and nothing is written or lost.

Every test here runs against a real MLServe (and, where a deployment is
involved, its real embedded Triton) over real sockets. Each one asserts the
gRPC code and then that the model list, the version lists and the repository
on disk are as they were, and that nothing outside the repository was touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mlserve_api.v1 import deployment_pb2, model_pb2, server_pb2
from tests.support.checks import (
    delete_model_quietly,
    expect_error,
    nothing_written,
    tree,
    version_numbers,
)
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import add_model_files
from tests.support.uploading import get_upload, stream, upload, upload_error

MiB = 1024 * 1024
Code = grpc.StatusCode


# --- model names ------------------------------------------------------------

BAD_NAMES = [
    pytest.param("../x", id="dotdot"),
    pytest.param("/abs", id="absolute"),
    pytest.param("a/b", id="separator"),
    pytest.param("", id="empty"),
    pytest.param("a" * 300, id="300-chars"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a b", id="space"),
    pytest.param("..", id="dotdot-only"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param("a\\b", id="backslash"),
]


def _name_escapes(home: Path) -> list[Path]:
    """Where a name that escaped the repository would have landed."""
    return [home / "x", home / "repository" / "a", home / "repository" / "abs"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_model_name_in_upload_header(stubs: Stubs, mlserve: MLServeProcess, name: str) -> None:
    with nothing_written(stubs, mlserve.home, absent=_name_escapes(mlserve.home)):
        upload_error(stubs, Code.INVALID_ARGUMENT, stream(name, {"model.py": b"# bad name\n"}))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_model_name_in_create_and_get(stubs: Stubs, mlserve: MLServeProcess, name: str) -> None:
    with nothing_written(stubs, mlserve.home, absent=_name_escapes(mlserve.home)):
        expect_error(
            Code.INVALID_ARGUMENT,
            stubs.models.CreateModel,
            model_pb2.CreateModelRequest(model=model_pb2.Model(name=name)),
            metadata=stubs.auth,
        )
        expect_error(
            Code.INVALID_ARGUMENT,
            stubs.models.GetModel,
            model_pb2.GetModelRequest(name=name),
            metadata=stubs.auth,
        )
        expect_error(
            Code.INVALID_ARGUMENT,
            stubs.models.DeleteModel,
            model_pb2.DeleteModelRequest(name=name),
            metadata=stubs.auth,
        )


@pytest.mark.parametrize(
    "upload_id", ["../x", "/abs", "a/b", "a b", "a" * 300, "a\x00b"], ids=lambda v: repr(v)[:12]
)
def test_bad_upload_id(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, upload_id: str
) -> None:
    staging_before = tree(mlserve.home / "staging")
    with nothing_written(stubs, mlserve.home, absent=_name_escapes(mlserve.home)):
        upload_error(
            stubs,
            Code.INVALID_ARGUMENT,
            stream(model_name, {"model.py": b"# bad id\n"}, upload_id=upload_id),
        )
        expect_error(Code.INVALID_ARGUMENT, get_upload, stubs, upload_id)
    assert tree(mlserve.home / "staging") == staging_before


# --- unknown resources and deployed deletes ---------------------------------


def _read_calls(stubs: Stubs, model: str, version: int) -> list[tuple[str, Callable[[], Any]]]:
    auth = stubs.auth
    m = stubs.models
    return [
        ("GetModel", lambda: m.GetModel(model_pb2.GetModelRequest(name=model), metadata=auth)),
        (
            "GetModelVersion",
            lambda: m.GetModelVersion(
                model_pb2.GetModelVersionRequest(model=model, version=version), metadata=auth
            ),
        ),
        (
            "ListModelVersions",
            lambda: m.ListModelVersions(
                model_pb2.ListModelVersionsRequest(model=model), metadata=auth
            ),
        ),
        (
            "DeleteModelVersion",
            lambda: m.DeleteModelVersion(
                model_pb2.DeleteModelVersionRequest(model=model, version=version or 1),
                metadata=auth,
            ),
        ),
        (
            "DownloadModelVersion",
            lambda: list(
                m.DownloadModelVersion(
                    model_pb2.DownloadModelVersionRequest(model=model, version=version),
                    metadata=auth,
                )
            ),
        ),
        (
            "DeleteModel",
            lambda: m.DeleteModel(model_pb2.DeleteModelRequest(name=model), metadata=auth),
        ),
    ]


def test_unknown_model_is_not_found(stubs: Stubs, mlserve: MLServeProcess, model_name: str) -> None:
    with nothing_written(stubs, mlserve.home):
        for version in (0, 1):
            for rpc, call in _read_calls(stubs, model_name, version):
                error = expect_error(Code.NOT_FOUND, call)
                assert model_name in error.details(), rpc
        expect_error(Code.NOT_FOUND, get_upload, stubs, f"{model_name}-never")
        expect_error(
            Code.NOT_FOUND,
            stubs.models.UpdateModel,
            model_pb2.UpdateModelRequest(
                model=model_pb2.Model(name=model_name, description="x"),
                update_mask={"paths": ["description"]},
            ),
            metadata=stubs.auth,
        )


def test_unknown_version_is_not_found(
    stubs: Stubs, mlserve: MLServeProcess, existing: model_pb2.ModelVersion
) -> None:
    with nothing_written(stubs, mlserve.home):
        for rpc, call in _read_calls(stubs, existing.model, 99):
            if rpc in ("GetModel", "ListModelVersions", "DeleteModel"):
                continue  # these name the model only, which exists
            expect_error(Code.NOT_FOUND, call)
        expect_error(
            Code.NOT_FOUND,
            stubs.models.DownloadModelVersion,
            model_pb2.DownloadModelVersionRequest(
                model=existing.model, version=existing.version, path="no-such-file"
            ),
            metadata=stubs.auth,
        )
        for bad in ("../model.py", "/etc/passwd"):
            expect_error(
                Code.INVALID_ARGUMENT,
                stubs.models.DownloadModelVersion,
                model_pb2.DownloadModelVersionRequest(
                    model=existing.model, version=existing.version, path=bad
                ),
                metadata=stubs.auth,
            )
        expect_error(
            Code.INVALID_ARGUMENT,
            stubs.models.GetModelVersion,
            model_pb2.GetModelVersionRequest(model=existing.model, version=-1),
            metadata=stubs.auth,
        )
    assert version_numbers(stubs, existing.model) == [existing.version]


def test_deleting_a_deployed_version_or_model_is_refused(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    files = add_model_files(name=model_name)
    config = files.pop("config.pbtxt").decode()
    first = upload(stubs, stream(model_name, files, config=config))
    files["model.py"] += b"\n# v2\n"
    second = upload(stubs, stream(model_name, files, config=config))
    assert (first.version, second.version) == (1, 2)
    deployment = stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True,
            deployment=deployment_pb2.Deployment(model=model_name, version=1, servers=["local"]),
        ),
        metadata=stubs.auth,
        timeout=120,
    )
    try:
        assert deployment.state == deployment_pb2.DEPLOYMENT_STATE_READY, deployment
        with nothing_written(stubs, mlserve.home):
            error = expect_error(
                Code.FAILED_PRECONDITION,
                stubs.models.DeleteModelVersion,
                model_pb2.DeleteModelVersionRequest(model=model_name, version=1),
                metadata=stubs.auth,
            )
            assert "deployed" in error.details()
            expect_error(
                Code.FAILED_PRECONDITION,
                stubs.models.DeleteModel,
                model_pb2.DeleteModelRequest(name=model_name),
                metadata=stubs.auth,
            )
            assert version_numbers(stubs, model_name) == [1, 2]
        assert (mlserve.home / "repository" / model_name / "1" / "model.py").is_file()
        # A version that is not deployed can go.
        stubs.models.DeleteModelVersion(
            model_pb2.DeleteModelVersionRequest(model=model_name, version=2), metadata=stubs.auth
        )
        assert version_numbers(stubs, model_name) == [1]
    finally:
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=model_name),
            metadata=stubs.auth,
            timeout=120,
        )
    stubs.models.DeleteModel(model_pb2.DeleteModelRequest(name=model_name), metadata=stubs.auth)
    assert not (mlserve.home / "repository" / model_name).exists()


# --- paging -----------------------------------------------------------------


def test_negative_page_size(
    stubs: Stubs, mlserve: MLServeProcess, existing: model_pb2.ModelVersion
) -> None:
    calls = [
        (stubs.models.ListModels, model_pb2.ListModelsRequest(page_size=-1)),
        (
            stubs.models.ListModelVersions,
            model_pb2.ListModelVersionsRequest(model=existing.model, page_size=-5),
        ),
        (stubs.servers.ListServers, server_pb2.ListServersRequest(page_size=-1)),
        (stubs.deployments.ListDeployments, deployment_pb2.ListDeploymentsRequest(page_size=-1)),
    ]
    with nothing_written(stubs, mlserve.home):
        for call, request in calls:
            error = expect_error(Code.INVALID_ARGUMENT, call, request, metadata=stubs.auth)
            assert "page_size" in error.details()
    # Above the maximum is clamped, not refused.
    stubs.models.ListModels(model_pb2.ListModelsRequest(page_size=100_000), metadata=stubs.auth)


@pytest.fixture
def seven_models(stubs: Stubs, model_name: str) -> Iterator[list[str]]:
    names = [f"{model_name}-{i}" for i in range(7)]
    for i, name in enumerate(names):
        stubs.models.CreateModel(
            model_pb2.CreateModelRequest(model=model_pb2.Model(name=name, tags=[f"odd{i % 2}"])),
            metadata=stubs.auth,
        )
    # A model just outside the prefix must not leak into the pages.
    outsider = f"{model_name}.outsider"
    stubs.models.CreateModel(
        model_pb2.CreateModelRequest(model=model_pb2.Model(name=outsider)), metadata=stubs.auth
    )
    yield names
    for name in [*names, outsider]:
        delete_model_quietly(stubs, name)


def test_paging_returns_every_model_once(
    stubs: Stubs, model_name: str, seven_models: list[str]
) -> None:
    prefix = f"{model_name}-"
    seen: list[str] = []
    sizes: list[int] = []
    token = ""
    for _ in range(10):
        page = stubs.models.ListModels(
            model_pb2.ListModelsRequest(page_size=3, page_token=token, name_prefix=prefix),
            metadata=stubs.auth,
        )
        seen.extend(m.name for m in page.models)
        sizes.append(len(page.models))
        token = page.next_page_token
        if not token:
            break
    assert sizes == [3, 3, 1]
    assert seen == sorted(seven_models)
    assert len(set(seen)) == len(seen)


def test_tampered_or_reused_page_token(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, seven_models: list[str]
) -> None:
    prefix = f"{model_name}-"

    def list_models(token: str, **filters: Any) -> Any:
        request = model_pb2.ListModelsRequest(page_size=3, page_token=token, **filters)
        return stubs.models.ListModels(request, metadata=stubs.auth)

    token = list_models("", name_prefix=prefix).next_page_token
    assert token
    middle = len(token) // 2
    flipped = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    tampered = [flipped, token[:-2], token + "AAAA", "not-a-token", "%%%", "é", token[::-1]]
    with nothing_written(stubs, mlserve.home):
        for bad in tampered:
            error = expect_error(Code.INVALID_ARGUMENT, list_models, bad, name_prefix=prefix)
            assert "page_token" in error.details()
        # The same token with other filters, or on another list.
        for filters in (
            {"name_prefix": f"{model_name}-1"},
            {"name_prefix": ""},
            {"name_prefix": prefix, "tag": "odd1"},
        ):
            expect_error(Code.INVALID_ARGUMENT, list_models, token, **filters)
        expect_error(
            Code.INVALID_ARGUMENT,
            stubs.servers.ListServers,
            server_pb2.ListServersRequest(page_token=token),
            metadata=stubs.auth,
        )
        expect_error(
            Code.INVALID_ARGUMENT,
            stubs.deployments.ListDeployments,
            deployment_pb2.ListDeploymentsRequest(page_token=token),
            metadata=stubs.auth,
        )
        expect_error(
            Code.INVALID_ARGUMENT,
            stubs.models.ListModelVersions,
            model_pb2.ListModelVersionsRequest(model=seven_models[0], page_token=token),
            metadata=stubs.auth,
        )
    # The genuine token still works with its own filters.
    assert [m.name for m in list_models(token, name_prefix=prefix).models] == seven_models[3:6]
