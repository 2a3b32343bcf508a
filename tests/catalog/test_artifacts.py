"""Artifacts beside a model version, and content stored once, against a real MLServe.

Through the raw stubs, the Python client and grpcurl: attach, list, get and
download artifacts; resume an interrupted artifact upload; send only the
bytes the server lacks; and every bad input gets its exact code with nothing
written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mlserve_api.v1 import deployment_pb2, model_pb2
from mlserve_client import Client, DownloadError
from tests.support.checks import delete_model_quietly, download, expect_error, nothing_written, tree
from tests.support.commands import grpcurl, mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import add_model_files, infer_add, local_triton
from tests.support.uploading import chunk, get_upload, header, stream, upload, upload_error

MiB = 1024 * 1024
Code = grpc.StatusCode
ArtifactRequest = model_pb2.UploadArtifactRequest
DATA, CODE, ENV = (
    model_pb2.ARTIFACT_KIND_DATA,
    model_pb2.ARTIFACT_KIND_CODE,
    model_pb2.ARTIFACT_KIND_ENV,
)


def artifact_header(
    model: str,
    version: int,
    path: str,
    data: bytes,
    *,
    kind: int = DATA,
    upload_id: str = "",
    sha256: str = "",
) -> ArtifactRequest:
    manifest = model_pb2.FileManifest(
        path=path, size=len(data), sha256=sha256 or hashlib.sha256(data).hexdigest()
    )
    return ArtifactRequest(
        header=model_pb2.ArtifactUploadHeader(
            model=model,
            version=version,
            upload_id=upload_id,
            kind=kind,
            file=manifest,  # type: ignore[arg-type]
        )
    )


def artifact_chunks(path: str, data: bytes, start: int = 0) -> Iterator[ArtifactRequest]:
    for offset in range(start, len(data), MiB):
        piece = data[offset : offset + MiB]
        yield ArtifactRequest(chunk=model_pb2.FileChunk(path=path, offset=offset, data=piece))


def attach(stubs: Stubs, *messages: ArtifactRequest) -> model_pb2.Artifact:
    return stubs.models.UploadArtifact(iter(messages), metadata=stubs.auth, timeout=120)


def list_artifacts(stubs: Stubs, model: str, version: int, **fields: object) -> Any:
    request = model_pb2.ListArtifactsRequest(model=model, version=version, **fields)  # type: ignore[arg-type]
    return stubs.models.ListArtifacts(request, metadata=stubs.auth)


def fetch(stubs: Stubs, model: str, version: int, path: str, offset: int = 0) -> bytes:
    request = model_pb2.DownloadArtifactRequest(
        model=model, version=version, path=path, offset=offset
    )
    return b"".join(
        piece.data for piece in stubs.models.DownloadArtifact(request, metadata=stubs.auth)
    )


def stored_blobs(home: Path) -> set[str]:
    return {path.name for path in (home / "blobs" / "sha256").glob("*/*")}


def client_for(mlserve: MLServeProcess) -> Client:
    return Client(mlserve.address, mlserve.key)


def test_artifacts_attach_list_download_and_go_with_their_version(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path
) -> None:
    upload(stubs, stream(model_name, {"model.py": b"# v1\n"}))
    csv = b"x,y\n" + b"1,2\n" * 300_000  # 1.2 MB: several chunks
    sources = {"train.csv": csv, "train.py": b"print('retrain')\n", "requirements.txt": b"numpy\n"}
    for name, data in sources.items():
        (tmp_path / name).write_bytes(data)
    with client_for(mlserve) as client:
        made = client.upload_artifact(
            model_name, 1, tmp_path / "train.csv", DATA, name="data/train.csv"
        )
        client.upload_artifact(model_name, 1, tmp_path / "train.py", CODE)
        client.upload_artifact(model_name, 0, tmp_path / "requirements.txt", ENV)
        assert (made.model, made.version, made.path, made.kind) == (
            model_name, 1, "data/train.csv", DATA
        )  # fmt: skip
        assert (made.size_bytes, made.sha256) == (len(csv), hashlib.sha256(csv).hexdigest())

        first = list_artifacts(stubs, model_name, 1, page_size=2)
        rest = list_artifacts(stubs, model_name, 1, page_size=2, page_token=first.next_page_token)
        paths = [a.path for a in [*first.artifacts, *rest.artifacts]]
        assert paths == ["data/train.csv", "requirements.txt", "train.py"]
        assert first.next_page_token
        assert not rest.next_page_token
        code_only = list_artifacts(stubs, model_name, 1, kind=CODE)
        assert [a.path for a in code_only.artifacts] == ["train.py"]
        assert [a.path for a in client.list_artifacts(model_name, 1)] == paths

        assert fetch(stubs, model_name, 1, "data/train.csv") == csv
        assert fetch(stubs, model_name, 1, "data/train.csv", offset=1000) == csv[1000:]
        dest = tmp_path / "out" / "train.csv"
        dest.parent.mkdir()
        client.download_artifact(model_name, 1, "data/train.csv", dest)
        assert dest.read_bytes() == csv
        # An interrupted download resumes after the .part it left ...
        dest.unlink()
        dest.with_name("train.csv.part").write_bytes(csv[:5000])
        client.download_artifact(model_name, 1, "data/train.csv", dest)
        assert dest.read_bytes() == csv
        # ... and a .part that does not match is caught by the digest and discarded.
        dest.unlink()
        dest.with_name("train.csv.part").write_bytes(b"garbage!" * 100)
        with pytest.raises(DownloadError, match="sha256"):
            client.download_artifact(model_name, 1, "data/train.csv", dest)
        assert not dest.exists()
        assert not dest.with_name("train.csv.part").exists()

        # The same data beside a second version is stored once: the header alone attaches it.
        upload(stubs, stream(model_name, {"model.py": b"# v2\n"}))
        again = attach(stubs, artifact_header(model_name, 2, "data/train.csv", csv))
        assert again.sha256 == made.sha256
        csv_sha = made.sha256
        code_sha = hashlib.sha256(sources["train.py"]).hexdigest()
        assert {csv_sha, code_sha} <= stored_blobs(mlserve.home)

    # Deleting version 1 deletes its artifacts; the blob version 2 still uses stays.
    stubs.models.DeleteModelVersion(
        model_pb2.DeleteModelVersionRequest(model=model_name, version=1), metadata=stubs.auth
    )
    expect_error(Code.NOT_FOUND, list_artifacts, stubs, model_name, 1)
    assert csv_sha in stored_blobs(mlserve.home)
    assert code_sha not in stored_blobs(mlserve.home)
    assert fetch(stubs, model_name, 2, "data/train.csv") == csv
    delete_model_quietly(stubs, model_name)
    assert csv_sha not in stored_blobs(mlserve.home)


def test_interrupted_artifact_upload_resumes(stubs: Stubs, model_name: str) -> None:
    upload(stubs, stream(model_name, {"model.py": b"# v1\n"}))
    data = os.urandom(3 * MiB + 5)
    begin = artifact_header(model_name, 1, "big.bin", data, upload_id=f"{model_name}-a")
    first_part = list(artifact_chunks("big.bin", data))[:2]
    expect_error(Code.FAILED_PRECONDITION, attach, stubs, begin, *first_part)
    status = get_upload(stubs, f"{model_name}-a")
    assert status.received_bytes == 2 * MiB
    assert status.state == model_pb2.UPLOAD_STATE_RECEIVING
    made = attach(stubs, begin, *artifact_chunks("big.bin", data, start=2 * MiB))
    assert fetch(stubs, model_name, 1, "big.bin") == data
    assert get_upload(stubs, f"{model_name}-a").state == model_pb2.UPLOAD_STATE_COMMITTED
    assert attach(stubs, begin) == made  # sending it again returns the artifact
    delete_model_quietly(stubs, model_name)


def test_new_version_sends_only_the_bytes_the_server_lacks(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path
) -> None:
    weights = os.urandom(5 * MiB)
    upload(stubs, stream(model_name, {"model.py": b"# v1\n", "weights.bin": weights}))
    files = {"model.py": b"# v2\n", "weights.bin": weights}
    # The header alone: the stored weights count as received, model.py is missing.
    upload_error(stubs, Code.FAILED_PRECONDITION, [header(model_name, files, upload_id=model_name)])
    received = {f.path: f.received_bytes for f in get_upload(stubs, model_name).files}
    assert received == {"model.py": 0, "weights.bin": len(weights)}
    version = upload(
        stubs,
        [header(model_name, files, upload_id=model_name), chunk("model.py", 0, b"# v2\n")],
    )
    assert download(stubs, model_name, version.version) == files
    repository = mlserve.home / "repository" / model_name
    first, second = ((repository / str(v) / "weights.bin").stat() for v in (1, 2))
    assert first.st_ino == second.st_ino  # one copy on disk, linked into both versions

    # The Python client does the same when it hashes first (its default hashes while
    # sending, and knows only the digests of files it uploaded): only model.py's
    # bytes travel.
    folder = tmp_path / "v3"
    folder.mkdir()
    (folder / "model.py").write_bytes(b"# v3\n")
    (folder / "weights.bin").write_bytes(weights)
    reports: list[tuple[int, int]] = []
    with client_for(mlserve) as client:
        made = client.upload(
            folder, model_name, prehash=True, progress=lambda d, t: reports.append((d, t))
        )
    assert reports[0] == (len(weights), len(weights) + 5)
    assert download(stubs, model_name, made.version)["weights.bin"] == weights
    delete_model_quietly(stubs, model_name)


# --- bad input ----------------------------------------------------------------


@pytest.fixture
def version_with_artifact(stubs: Stubs, model_name: str) -> Iterator[model_pb2.Artifact]:
    upload(stubs, stream(model_name, {"model.py": b"# v1\n"}))
    made = attach(
        stubs,
        artifact_header(model_name, 1, "kept.csv", b"a,b\n"),
        *artifact_chunks("kept.csv", b"a,b\n"),
    )
    yield made
    delete_model_quietly(stubs, model_name)


class _Unchanged:
    """Nothing written: models, versions, repository, blob store and artifact list as before."""

    def __init__(self, stubs: Stubs, mlserve: MLServeProcess, model: str) -> None:
        self.stubs, self.mlserve, self.model = stubs, mlserve, model

    def __enter__(self) -> None:
        self.written = nothing_written(self.stubs, self.mlserve.home)
        self.written.__enter__()
        self.blobs = tree(self.mlserve.home / "blobs")
        self.artifacts = list_artifacts(self.stubs, self.model, 1)

    def __exit__(self, *error: object) -> None:
        self.written.__exit__(None, None, None)
        assert tree(self.mlserve.home / "blobs") == self.blobs
        assert list_artifacts(self.stubs, self.model, 1) == self.artifacts


BAD_PATHS = [
    pytest.param("../escape.csv", id="dotdot"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("a/../../b", id="inner-dotdot"),
    pytest.param("", id="empty"),
    pytest.param("a//b", id="empty-component"),
    pytest.param("x\x00y", id="nul"),
    pytest.param("a\\b", id="backslash"),
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_artifact_path_that_escapes_is_invalid(
    stubs: Stubs, mlserve: MLServeProcess, version_with_artifact: model_pb2.Artifact, path: str
) -> None:
    model = version_with_artifact.model
    data = b"escape\n"
    with _Unchanged(stubs, mlserve, model):
        expect_error(
            Code.INVALID_ARGUMENT,
            attach,
            stubs,
            artifact_header(model, 1, path, data),
            ArtifactRequest(chunk=model_pb2.FileChunk(path=path, offset=0, data=data)),
        )
        expect_error(Code.INVALID_ARGUMENT, fetch, stubs, model, 1, path)
    assert not (mlserve.home / "escape.csv").exists()


@pytest.mark.parametrize("kind", [model_pb2.ARTIFACT_KIND_UNSPECIFIED, 99])
def test_unknown_artifact_kind_is_invalid(
    stubs: Stubs, mlserve: MLServeProcess, version_with_artifact: model_pb2.Artifact, kind: int
) -> None:
    model = version_with_artifact.model
    with _Unchanged(stubs, mlserve, model):
        error = expect_error(
            Code.INVALID_ARGUMENT,
            attach,
            stubs,
            artifact_header(model, 1, "k.csv", b"k\n", kind=kind),
            *artifact_chunks("k.csv", b"k\n"),
        )
        assert "kind" in error.details()
        expect_error(Code.INVALID_ARGUMENT, list_artifacts, stubs, model, 1, kind=99)


def test_artifact_checksum_mismatch_is_data_loss(
    stubs: Stubs, mlserve: MLServeProcess, version_with_artifact: model_pb2.Artifact
) -> None:
    model = version_with_artifact.model
    data = os.urandom(MiB + 3)
    lie = hashlib.sha256(b"something else").hexdigest()
    with _Unchanged(stubs, mlserve, model):
        expect_error(
            Code.DATA_LOSS,
            attach,
            stubs,
            artifact_header(model, 1, "lie.bin", data, sha256=lie),
            *artifact_chunks("lie.bin", data),
        )
    assert lie not in stored_blobs(mlserve.home)
    assert hashlib.sha256(data).hexdigest() not in stored_blobs(mlserve.home)


@pytest.mark.parametrize("where", ["model", "version"])
def test_artifact_for_unknown_model_or_version_is_not_found(
    stubs: Stubs, mlserve: MLServeProcess, version_with_artifact: model_pb2.Artifact, where: str
) -> None:
    model = version_with_artifact.model
    target = (model + "-missing", 1) if where == "model" else (model, 7)
    with _Unchanged(stubs, mlserve, model):
        expect_error(
            Code.NOT_FOUND,
            attach,
            stubs,
            artifact_header(*target, "n.csv", b"n\n"),
            *artifact_chunks("n.csv", b"n\n"),
        )
        expect_error(Code.NOT_FOUND, list_artifacts, stubs, *target)
        expect_error(Code.NOT_FOUND, fetch, stubs, *target, "kept.csv")
        expect_error(Code.NOT_FOUND, fetch, stubs, model, 1, "absent.csv")


def test_different_content_at_an_existing_artifact_path_is_already_exists(
    stubs: Stubs, mlserve: MLServeProcess, version_with_artifact: model_pb2.Artifact
) -> None:
    model = version_with_artifact.model
    with _Unchanged(stubs, mlserve, model):
        expect_error(
            Code.ALREADY_EXISTS,
            attach,
            stubs,
            artifact_header(model, 1, "kept.csv", b"other\n"),
            *artifact_chunks("kept.csv", b"other\n"),
        )
    assert fetch(stubs, model, 1, "kept.csv") == b"a,b\n"


def test_artifact_over_the_size_limit_is_resource_exhausted(tmp_path: Path) -> None:
    server = MLServeProcess(tmp_path / "home", "--no-embedded-triton", "--max-upload-bytes", "1M")
    server.start(wait_for_triton=False)
    try:
        stubs = server.stubs()
        upload(stubs, stream("small", {"model.py": b"# small\n"}))
        data = os.urandom(2 * MiB)
        with _Unchanged(stubs, server, "small"):
            error = expect_error(
                Code.RESOURCE_EXHAUSTED,
                attach,
                stubs,
                artifact_header("small", 1, "big.bin", data),
                *artifact_chunks("big.bin", data),
            )
            assert "--max-upload-bytes" in error.details()
        assert list((server.home / "staging").iterdir()) == []
        stubs.channel.close()
    finally:
        server.stop()


def test_artifacts_through_grpcurl(
    stubs: Stubs, mlserve: MLServeProcess, version_with_artifact: model_pb2.Artifact
) -> None:
    model = version_with_artifact.model
    request = json.dumps({"model": model, "version": 1})
    listed = grpcurl(
        mlserve, "-d", request, mlserve.address, "mlserve.v1.ModelService/ListArtifacts"
    )
    assert listed.returncode == 0, listed.stderr
    artifact = json.loads(listed.stdout)["artifacts"][0]
    assert (artifact["path"], artifact["kind"]) == ("kept.csv", "ARTIFACT_KIND_DATA")
    request = json.dumps({"model": model, "version": 1, "path": "kept.csv"})
    chunks = grpcurl(
        mlserve, "-d", request, mlserve.address, "mlserve.v1.ModelService/DownloadArtifact"
    )
    assert chunks.returncode == 0, chunks.stderr
    assert json.loads(chunks.stdout)["data"] == "YSxiCg=="  # base64 of b"a,b\n"
    bad = json.dumps({"model": model, "version": 1, "path": "../x"})
    refused = grpcurl(mlserve, "-d", bad, mlserve.address, "mlserve.v1.ModelService/GetArtifact")
    assert refused.returncode != 0
    assert "InvalidArgument" in refused.stderr


def test_artifacts_from_the_shell(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path
) -> None:
    upload(stubs, stream(model_name, {"model.py": b"# v1\n"}))
    data = tmp_path / "train.csv"
    data.write_bytes(b"x,y\n1,2\n")
    attached = mlserve_cli(
        mlserve, "artifacts", "upload", model_name, "1", str(data), "--kind", "data"
    )
    assert attached.returncode == 0, attached.stderr
    assert f"model {model_name} version 1 artifact train.csv (data)" in attached.stdout
    listed = mlserve_cli(mlserve, "artifacts", "list", model_name, "0")
    assert listed.returncode == 0, listed.stderr
    row = listed.stdout.splitlines()[1].split()
    assert row[:3] == ["train.csv", "data", "8"]
    dest = tmp_path / "copy.csv"
    fetched = mlserve_cli(mlserve, "artifacts", "download", model_name, "1", "train.csv", str(dest))
    assert fetched.returncode == 0, fetched.stderr
    assert dest.read_bytes() == b"x,y\n1,2\n"
    unknown = mlserve_cli(
        mlserve, "artifacts", "upload", model_name, "9", str(data), "--kind", "code"
    )
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr
    delete_model_quietly(stubs, model_name)


def test_version_built_from_a_stored_file_deploys_and_serves(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    files = add_model_files(name=model_name)
    config = files.pop("config.pbtxt").decode()
    upload(stubs, stream(model_name, files, config=config))
    # Version 2: the same model.py, another config. Every file is stored, so the
    # header alone makes the version.
    noted = config + '\nparameters { key: "note" value { string_value: "v2" } }\n'
    second = upload(stubs, [header(model_name, files, config=noted)])
    assert second.version == 2
    stubs.models.DeleteModelVersion(
        model_pb2.DeleteModelVersionRequest(model=model_name, version=1), metadata=stubs.auth
    )  # collection keeps model.py: version 2 links it
    linked = mlserve.home / "repository" / model_name / "2" / "model.py"
    digest = hashlib.sha256(files["model.py"]).hexdigest()
    blob = mlserve.home / "blobs" / "sha256" / digest[:2] / digest
    # Version 2's file is the stored blob itself (other tests on this shared
    # server may link the same content too, so the link count is not fixed).
    assert linked.stat().st_ino == blob.stat().st_ino
    deployment = stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True, deployment=deployment_pb2.Deployment(model=model_name, version=2)
        ),
        metadata=stubs.auth,
    )
    try:
        assert deployment.state == deployment_pb2.DEPLOYMENT_STATE_READY, deployment
        output = infer_add(local_triton(stubs), model_name)
        assert output.tolist() == [11, 22, 33, 44]
    finally:
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=model_name), metadata=stubs.auth
        )
        delete_model_quietly(stubs, model_name)


def test_artifact_page_token_from_another_query_or_altered_is_invalid(
    stubs: Stubs, mlserve: MLServeProcess, version_with_artifact: model_pb2.Artifact
) -> None:
    model = version_with_artifact.model
    attach(
        stubs, artifact_header(model, 1, "more.csv", b"m\n"), *artifact_chunks("more.csv", b"m\n")
    )
    token = list_artifacts(stubs, model, 1, page_size=1).next_page_token
    assert token
    altered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with _Unchanged(stubs, mlserve, model):
        for fields in (
            {"page_token": token, "kind": CODE},
            {"page_token": altered},
            {"page_size": -1},
        ):
            expect_error(Code.INVALID_ARGUMENT, list_artifacts, stubs, model, 1, **fields)
    assert [a.path for a in list_artifacts(stubs, model, 1, page_token=token).artifacts] == [
        "more.csv"
    ]
