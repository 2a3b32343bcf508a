"""Bad uploads get the exact status code, and nothing is written or lost.

Every test here runs against a real MLServe (and, where a deployment is
involved, its real embedded Triton) over real sockets. Each one asserts the
gRPC code and then that the model list, the version lists and the repository
on disk are as they were, and that nothing outside the repository was touched.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mlserve_api.v1 import model_pb2
from tests.support.checks import (
    delete_model_quietly,
    download,
    expect_error,
    model_table,
    nothing_written,
    sha,
    tree,
    version_numbers,
    wait_until,
)
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.uploading import (
    Request,
    chunk,
    chunks,
    get_upload,
    header,
    stream,
    upload,
    upload_error,
)

MiB = 1024 * 1024
Code = grpc.StatusCode


# --- manifest and chunk paths -----------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("../../etc/passwd", id="dotdot-etc"),
        pytest.param("/etc/passwd", id="absolute-etc"),
        pytest.param("a/../../b", id="inner-dotdot"),
        pytest.param("../escape.txt", id="dotdot"),
        pytest.param("./model.py", id="dot"),
        pytest.param("a//b", id="empty-component"),
        pytest.param("a\\..\\..\\b", id="backslashes"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("", id="empty"),
    ],
)
def test_escaping_manifest_path(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path, path: str
) -> None:
    home = mlserve.home
    absent = [home / "etc", home / "b", home / "staging" / "b", home / "escape.txt"]
    absent += [home / "staging" / "escape.txt"]
    passwd = Path("/etc/passwd")
    upload_id = f"{model_name}-u"
    with nothing_written(stubs, home, absent=absent, untouched=[passwd]):
        messages: list[Request] = [header(model_name, {path: b"x"}, upload_id=upload_id)]
        if not path.startswith("/"):  # never send bytes aimed at a real absolute path
            messages.append(chunk(path, 0, b"x"))
        upload_error(stubs, Code.INVALID_ARGUMENT, messages)
    assert not (home / "staging" / upload_id).exists()
    expect_error(Code.NOT_FOUND, get_upload, stubs, upload_id)


def test_absolute_manifest_path_to_an_existing_file(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me\n")
    with nothing_written(stubs, mlserve.home, untouched=[outside]):
        upload_error(
            stubs,
            Code.INVALID_ARGUMENT,
            [
                header(model_name, {str(outside): b"overwritten"}),
                chunk(str(outside), 0, b"overwritten"),
            ],
        )


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("../../etc/passwd", id="dotdot-etc"),
        pytest.param("a/../../b", id="inner-dotdot"),
        pytest.param("../model.py", id="dotdot-sibling"),
        pytest.param("other.py", id="not-in-manifest"),
        pytest.param("./model.py", id="unnormalised"),
    ],
)
def test_chunk_path_escaping_or_not_in_manifest(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path, path: str
) -> None:
    home = mlserve.home
    upload_id = f"{model_name}-u"
    files = {"model.py": b"# the real file\n"}
    absent = [home / "etc", home / "b", home / "staging" / "b", home / "staging" / "model.py"]
    with nothing_written(stubs, home, absent=absent, untouched=[Path("/etc/passwd")]):
        upload_error(
            stubs,
            Code.INVALID_ARGUMENT,
            [header(model_name, files, upload_id=upload_id), chunk(path, 0, b"evil")],
        )
    # The upload itself is intact and can still complete.
    assert get_upload(stubs, upload_id).received_bytes == 0
    version = upload(stubs, stream(model_name, files, upload_id=upload_id))
    assert version.version == 1
    assert download(stubs, model_name) == files
    delete_model_quietly(stubs, model_name)


def test_header_missing(stubs: Stubs, mlserve: MLServeProcess, model_name: str) -> None:
    with nothing_written(stubs, mlserve.home):
        upload_error(stubs, Code.INVALID_ARGUMENT, [chunk("model.py", 0, b"# no header\n")])
        upload_error(stubs, Code.INVALID_ARGUMENT, [])
    expect_error(
        Code.NOT_FOUND,
        stubs.models.GetModel,
        model_pb2.GetModelRequest(name=model_name),
        metadata=stubs.auth,
    )


def test_header_sent_twice(stubs: Stubs, mlserve: MLServeProcess, model_name: str) -> None:
    files = {"model.py": b"# twice\n"}
    with nothing_written(stubs, mlserve.home):
        upload_error(
            stubs,
            Code.INVALID_ARGUMENT,
            [header(model_name, files), header(model_name, files), *chunks(files)],
        )
        upload_error(
            stubs,
            Code.INVALID_ARGUMENT,
            [header(model_name, files), *chunks(files), header(model_name, files)],
        )


def test_duplicate_manifest_entry_and_bad_sizes(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    good = model_pb2.FileManifest(path="model.py", size=1, sha256=sha(b"x"))
    headers = [
        [good, good],
        [model_pb2.FileManifest(path="model.py", size=-1, sha256=sha(b"x"))],
        [model_pb2.FileManifest(path="model.py", size=1, sha256="not-hex")],
    ]
    with nothing_written(stubs, mlserve.home):
        for files in headers:
            message = Request(header=model_pb2.UploadHeader(model=model_name, files=files))
            upload_error(stubs, Code.INVALID_ARGUMENT, [message])


def test_manifest_path_that_is_a_file_and_a_directory(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    files = {"a": b"file a\n", "a/b": b"file a/b\n", "model.py": b"#\n"}
    with nothing_written(stubs, mlserve.home):
        upload_error(stubs, Code.INVALID_ARGUMENT, stream(model_name, files))


def test_manifest_path_component_over_255_bytes(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    files = {"é" * 200: b"x", "model.py": b"#\n"}
    with nothing_written(stubs, mlserve.home):
        upload_error(stubs, Code.INVALID_ARGUMENT, stream(model_name, files))


# --- resume rules -----------------------------------------------------------


def test_incomplete_upload_keeps_bytes_and_resumes(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    data = os.urandom(3 * MiB + 12345)
    half = len(data) // 2
    files = {"model.py": b"# resumable\n", "weights.bin": data}
    upload_id = f"{model_name}-u"
    seen: list[int] = []

    def received() -> int:
        status = get_upload(stubs, upload_id)
        assert status.state == model_pb2.UPLOAD_STATE_RECEIVING
        assert status.version == 0
        seen.append(status.received_bytes)
        return int(status.received_bytes)

    first = [header(model_name, files, upload_id=upload_id), chunk("weights.bin", 0, data[:half])]
    with nothing_written(stubs, mlserve.home):
        error = upload_error(stubs, Code.FAILED_PRECONDITION, first)
        assert "incomplete" in error.details()
        assert received() == half
        per_file = {f.path: f.received_bytes for f in get_upload(stubs, upload_id).files}
        assert per_file == {"model.py": 0, "weights.bin": half}
        staged = mlserve.home / "staging" / upload_id / "weights.bin"
        assert staged.read_bytes() == data[:half]

        # Re-sent bytes below the offset are skipped, not appended or rewritten.
        again = [header(model_name, files, upload_id=upload_id), chunk("weights.bin", 0, data[:10])]
        upload_error(stubs, Code.FAILED_PRECONDITION, again)
        assert received() == half
        assert staged.read_bytes() == data[:half]

        # A gap: the chunk starts beyond what was received.
        gap = [
            header(model_name, files, upload_id=upload_id),
            chunk("weights.bin", half + 1, data[half + 1 : half + 100]),
        ]
        error = upload_error(stubs, Code.OUT_OF_RANGE, gap)
        assert str(half) in error.details()
        assert received() == half

        # Past the declared size.
        past = [
            header(model_name, files, upload_id=upload_id),
            chunk("weights.bin", half, data[half:] + b"extra"),
        ]
        upload_error(stubs, Code.OUT_OF_RANGE, past)
        assert received() == half
        beyond = [header(model_name, files, upload_id=upload_id), chunk("model.py", 100, b"x")]
        upload_error(stubs, Code.OUT_OF_RANGE, beyond)
        negative = [header(model_name, files, upload_id=upload_id), chunk("model.py", -1, b"x")]
        upload_error(stubs, Code.OUT_OF_RANGE, negative)
        assert received() == half
        assert staged.read_bytes() == data[:half]

    # Resend everything from offset 0: the first half is skipped, the rest completes.
    version = upload(stubs, stream(model_name, files, upload_id=upload_id))
    assert seen == sorted(seen), "received_bytes decreased"
    assert version.version == 1
    assert {f.path: f.sha256 for f in version.files} == {p: sha(d) for p, d in files.items()}
    status = get_upload(stubs, upload_id)
    assert status.state == model_pb2.UPLOAD_STATE_COMMITTED
    assert status.version == 1
    assert status.received_bytes == status.size_bytes == len(data) + len(files["model.py"])
    assert download(stubs, model_name) == files
    assert version_numbers(stubs, model_name) == [1]
    delete_model_quietly(stubs, model_name)


def test_second_stream_on_same_upload_is_aborted(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    data = os.urandom(3 * MiB)
    files = {"model.py": b"# concurrent\n", "weights.bin": data}
    upload_id = f"{model_name}-u"
    release = threading.Event()

    def held_open() -> Iterator[Request]:
        yield header(model_name, files, upload_id=upload_id)
        yield chunk("weights.bin", 0, data[:MiB])
        release.wait(60)
        yield chunk("weights.bin", MiB, data[MiB:])
        yield chunk("model.py", 0, files["model.py"])

    def first_chunk_written() -> bool:
        try:
            return int(get_upload(stubs, upload_id).received_bytes) == MiB
        except grpc.RpcError:
            return False

    first = stubs.models.UploadModelVersion.future(held_open(), metadata=stubs.auth, timeout=120)
    try:
        wait_until(first_chunk_written)
        with nothing_written(stubs, mlserve.home):
            error = upload_error(
                stubs, Code.ABORTED, stream(model_name, files, upload_id=upload_id)
            )
            assert upload_id in error.details()
            assert get_upload(stubs, upload_id).received_bytes == MiB
    finally:
        release.set()
    version = first.result(timeout=120)
    assert version.version == 1
    assert download(stubs, model_name) == files
    delete_model_quietly(stubs, model_name)


def test_resuming_a_committed_upload_returns_the_same_version(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    files = {"model.py": b"# committed\n", "weights.bin": os.urandom(100_000)}
    upload_id = f"{model_name}-u"
    first = upload(stubs, stream(model_name, files, upload_id=upload_id))
    with nothing_written(stubs, mlserve.home):
        again = upload(stubs, stream(model_name, files, upload_id=upload_id))
        header_only = upload(stubs, [header(model_name, files, upload_id=upload_id)])
    for version in (again, header_only):
        assert (version.version, version.sha256, version.upload_id) == (
            first.version,
            first.sha256,
            upload_id,
        )
    assert version_numbers(stubs, model_name) == [first.version]
    # The same id with other content is refused, not silently mixed.
    other = dict(files, **{"model.py": b"# other\n"})
    with nothing_written(stubs, mlserve.home):
        upload_error(
            stubs, Code.FAILED_PRECONDITION, stream(model_name, other, upload_id=upload_id)
        )
    delete_model_quietly(stubs, model_name)


def test_wrong_sha256_is_data_loss_and_creates_no_version(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    good = {"model.py": b"# v1\n"}
    upload(stubs, stream(model_name, good))
    sent = {"model.py": b"# v2\n", "weights.bin": os.urandom(2 * MiB)}
    declared = dict(sent, **{"weights.bin": os.urandom(2 * MiB)})  # same size, other bytes
    upload_id = f"{model_name}-bad"
    with nothing_written(stubs, mlserve.home):
        upload_error(
            stubs,
            Code.DATA_LOSS,
            [header(model_name, declared, upload_id=upload_id), *chunks(sent)],
        )
        assert version_numbers(stubs, model_name) == [1]
        model = stubs.models.GetModel(
            model_pb2.GetModelRequest(name=model_name), metadata=stubs.auth
        )
        assert (model.latest_version, model.version_count) == (1, 1)
        expect_error(
            Code.NOT_FOUND,
            stubs.models.GetModelVersion,
            model_pb2.GetModelVersionRequest(model=model_name, version=2),
            metadata=stubs.auth,
        )
    status = get_upload(stubs, upload_id)
    assert status.state == model_pb2.UPLOAD_STATE_RECEIVING
    assert {f.path: f.received_bytes for f in status.files}["weights.bin"] == 0
    delete_model_quietly(stubs, model_name)


def test_wrong_sha256_of_a_new_model_creates_no_model(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    with nothing_written(stubs, mlserve.home):
        upload_error(
            stubs,
            Code.DATA_LOSS,
            [
                header(model_name, {"model.py": b"# declared\n"}),
                chunk("model.py", 0, b"# sent!!!!\n"),
            ],
        )
        expect_error(
            Code.NOT_FOUND,
            stubs.models.GetModel,
            model_pb2.GetModelRequest(name=model_name),
            metadata=stubs.auth,
        )


# --- size limits ------------------------------------------------------------


def test_upload_over_the_default_limit(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    upload_id = f"{model_name}-u"
    huge = model_pb2.FileManifest(path="weights.bin", size=100 * 1024**3, sha256="0" * 64)
    message = Request(
        header=model_pb2.UploadHeader(
            model=model_name,
            upload_id=upload_id,
            files=[model_pb2.FileManifest(path="model.py", size=1, sha256=sha(b"#")), huge],
        )
    )
    staging_before = tree(mlserve.home / "staging")
    with nothing_written(stubs, mlserve.home):
        error = upload_error(
            stubs, Code.RESOURCE_EXHAUSTED, [message, chunk("weights.bin", 0, b"\0" * MiB)]
        )
        assert "--max-upload-bytes" in error.details()
    assert tree(mlserve.home / "staging") == staging_before
    expect_error(Code.NOT_FOUND, get_upload, stubs, upload_id)


def test_upload_over_a_configured_limit(tmp_path: Path) -> None:
    server = MLServeProcess(tmp_path / "home", "--no-embedded-triton", "--max-upload-bytes", "1M")
    server.start(wait_for_triton=False)
    try:
        stubs = server.stubs()
        data = os.urandom(2 * MiB)
        files = {"model.py": b"# too big\n", "weights.bin": data}
        with nothing_written(stubs, server.home):
            upload_error(stubs, Code.RESOURCE_EXHAUSTED, stream("big", files, upload_id="big-1"))
            assert model_table(stubs) == {}
        assert list((server.home / "staging").iterdir()) == []
        assert list((server.home / "repository").iterdir()) == []
        expect_error(Code.NOT_FOUND, get_upload, stubs, "big-1")
        # Just under the limit is fine.
        small = {"model.py": b"# fits\n", "weights.bin": data[: 1024 * 1000]}
        assert upload(stubs, stream("small", small)).version == 1
        stubs.channel.close()
    finally:
        assert server.stop() == 0


def test_chunk_over_the_chunk_limit(stubs: Stubs, mlserve: MLServeProcess, model_name: str) -> None:
    data = os.urandom(5 * MiB)
    files = {"model.py": b"# big chunk\n", "weights.bin": data}
    upload_id = f"{model_name}-u"
    with nothing_written(stubs, mlserve.home):
        upload_error(
            stubs,
            Code.RESOURCE_EXHAUSTED,
            [header(model_name, files, upload_id=upload_id), chunk("weights.bin", 0, data)],
        )
    assert get_upload(stubs, upload_id).received_bytes == 0


def test_upload_larger_than_the_free_disk(tmp_path: Path) -> None:
    server = MLServeProcess(
        tmp_path / "home", "--no-embedded-triton", "--max-upload-bytes", "1000T"
    )
    server.start(wait_for_triton=False)
    try:
        stubs = server.stubs()
        # More than the whole disk, not just more than is free now: others on the machine
        # free and fill the disk meanwhile, so "free + 1 GiB" could fit a moment later.
        disk = os.statvfs(server.home)
        too_big = disk.f_blocks * disk.f_frsize + 1024**3
        message = Request(
            header=model_pb2.UploadHeader(
                model="huge",
                upload_id="huge-1",
                files=[
                    model_pb2.FileManifest(path="model.py", size=1, sha256=sha(b"#")),
                    model_pb2.FileManifest(path="w.bin", size=too_big, sha256="0" * 64),
                ],
                config='backend: "python"',
            )
        )
        with nothing_written(stubs, server.home):
            error = upload_error(
                stubs, Code.RESOURCE_EXHAUSTED, [message, chunk("w.bin", 0, b"\0" * MiB)]
            )
            assert "disk" in error.details()
        assert list((server.home / "staging").iterdir()) == []
        stubs.channel.close()
    finally:
        assert server.stop() == 0


# --- config.pbtxt -----------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param('backend: "python"\nthis is { not valid', id="syntax"),
        pytest.param('backend: "python"\nno_such_field: 1\n', id="unknown-field"),
        pytest.param('backend: "python"\nmax_batch_size: "eight"\n', id="wrong-type"),
        pytest.param("input [ { name: ", id="truncated"),
    ],
)
def test_invalid_config_has_the_parsers_message(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, config: str
) -> None:
    with pytest.raises(text_format.ParseError) as parsed:
        text_format.Parse(config, model_config_pb2.ModelConfig())
    with nothing_written(stubs, mlserve.home):
        error = upload_error(
            stubs,
            Code.INVALID_ARGUMENT,
            stream(model_name, {"model.py": b"# configured\n"}, config=config),
        )
    assert str(parsed.value) in error.details()


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(
            'backend: "python" input [ { name: "X" }, { name: "X" } ]', id="duplicate-input"
        ),
        pytest.param("max_batch_size: 0", id="no-backend"),
        pytest.param(
            'platform: "ensemble" ensemble_scheduling { step [ { model_name: "../secret" } ] }',
            id="ensemble-escape",
        ),
    ],
)
def test_semantically_invalid_config(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, config: str
) -> None:
    with nothing_written(stubs, mlserve.home):
        upload_error(
            stubs, Code.INVALID_ARGUMENT, stream(model_name, {"weights.bin": b"1"}, config=config)
        )


# --- uploaded bytes are never run -------------------------------------------


class _Touch:
    """Unpickling this calls open(marker, "w"), creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def test_uploaded_bytes_are_never_imported_or_unpickled(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path
) -> None:
    imported = tmp_path / "imported.marker"
    unpickled = tmp_path / "unpickled.marker"
    model_py = (
        f"open({str(imported)!r}, 'w').close()\n"
        "class TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        "        return []\n"
    ).encode()
    files = {
        "model.py": model_py,
        "weights.pkl": pickle.dumps(_Touch(unpickled)),
        "__init__.py": model_py,
        "sub/model.py": model_py,
    }
    version = upload(stubs, stream(model_name, files))
    stubs.models.GetModelVersion(
        model_pb2.GetModelVersionRequest(model=model_name, version=version.version),
        metadata=stubs.auth,
    )
    assert download(stubs, model_name) == files
    time.sleep(1.0)  # a health round of the fleet watch, in case anything reacts late
    assert not imported.exists()
    assert not unpickled.exists()
    delete_model_quietly(stubs, model_name)
