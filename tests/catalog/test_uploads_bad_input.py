"""Bad input gets the exact status code, and nothing is written or lost.

Every test here runs against a real MLServe (and, where a deployment is
involved, its real embedded Triton) over real sockets. Each one asserts the
gRPC code and then that the model list, the version lists and the repository
on disk are as they were, and that nothing outside the repository was touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mlserve_api.v1 import deployment_pb2, model_pb2, server_pb2
from tests.conftest import MLServeProcess, Stubs, free_port
from tests.models import add_model_files
from tests.uploading import Request, chunk, chunks, header, stream

MiB = 1024 * 1024
Code = grpc.StatusCode


# --- helpers ----------------------------------------------------------------


def expect_error(code: grpc.StatusCode, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Make the call, which must fail with ``code``; return the error."""

    def drain() -> None:
        result = call(*args, **kwargs)
        if isinstance(result, Iterator):  # a server stream fails while it is read
            for _ in result:
                pass

    with pytest.raises(grpc.RpcError) as failure:
        drain()
    error = failure.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    assert "Traceback" not in (error.details() or "")
    return error


def upload(stubs: Stubs, messages: Iterable[Request], timeout: float = 120) -> Any:
    return stubs.models.UploadModelVersion(iter(messages), metadata=stubs.auth, timeout=timeout)


def upload_error(stubs: Stubs, code: grpc.StatusCode, messages: Iterable[Request]) -> Any:
    return expect_error(code, upload, stubs, messages)


def get_upload(stubs: Stubs, upload_id: str) -> Any:
    return stubs.models.GetUpload(
        model_pb2.GetUploadRequest(upload_id=upload_id), metadata=stubs.auth, timeout=30
    )


def version_numbers(stubs: Stubs, model: str) -> list[int]:
    response = stubs.models.ListModelVersions(
        model_pb2.ListModelVersionsRequest(model=model, page_size=1000), metadata=stubs.auth
    )
    return [v.version for v in response.versions]


def model_table(stubs: Stubs) -> dict[str, tuple[int, int]]:
    """Every model as name -> (latest_version, version_count)."""
    table: dict[str, tuple[int, int]] = {}
    token = ""
    while True:
        page = stubs.models.ListModels(
            model_pb2.ListModelsRequest(page_size=1000, page_token=token), metadata=stubs.auth
        )
        for m in page.models:
            table[m.name] = (m.latest_version, m.version_count)
        token = page.next_page_token
        if not token:
            return table


def tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under ``root``: relative path -> (kind, size, mtime_ns), not following links."""
    entries: dict[str, tuple[str, int, int]] = {}
    if not root.exists():
        return entries
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            info = path.lstat()
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            size = 0 if kind == "dir" else info.st_size
            entries[str(path.relative_to(root))] = (kind, size, info.st_mtime_ns)
    return entries


def fingerprint(path: Path) -> tuple[str, int, int]:
    info = path.lstat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), info.st_size, info.st_mtime_ns


@contextlib.contextmanager
def nothing_written(
    stubs: Stubs, home: Path, *, absent: Iterable[Path] = (), untouched: Iterable[Path] = ()
) -> Iterator[None]:
    """Assert on exit: models, versions and repository as before; ``absent`` paths
    still absent; ``untouched`` files byte-identical with the same mtime."""
    absent = list(absent)
    untouched = {path: fingerprint(path) for path in untouched}
    for path in absent:
        assert not os.path.lexists(path), f"{path} exists before the test"
    models_before = model_table(stubs)
    repository_before = tree(home / "repository")
    yield
    assert model_table(stubs) == models_before
    assert tree(home / "repository") == repository_before
    for path in absent:
        assert not os.path.lexists(path), f"{path} was created"
    for path, before in untouched.items():
        assert fingerprint(path) == before, f"{path} was changed"


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def download(stubs: Stubs, model: str, version: int = 0) -> dict[str, bytes]:
    received: dict[str, bytearray] = {}
    for piece in stubs.models.DownloadModelVersion(
        model_pb2.DownloadModelVersionRequest(model=model, version=version),
        metadata=stubs.auth,
        timeout=120,
    ):
        buffer = received.setdefault(piece.path, bytearray())
        assert piece.offset == len(buffer)
        buffer.extend(piece.data)
    return {path: bytes(data) for path, data in received.items()}


def delete_model_quietly(stubs: Stubs, name: str) -> None:
    with contextlib.suppress(grpc.RpcError):
        stubs.models.DeleteModel(model_pb2.DeleteModelRequest(name=name), metadata=stubs.auth)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def existing(stubs: Stubs) -> Iterator[model_pb2.ModelVersion]:
    """A model with one committed version, shared by the read-only tests here."""
    name = f"t-bad-input-existing-{os.getpid() % 1000}"
    version = upload(stubs, stream(name, {"model.py": b"# existing\n"}))
    yield version
    delete_model_quietly(stubs, name)


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
        free = os.statvfs(server.home).f_bavail * os.statvfs(server.home).f_frsize
        message = Request(
            header=model_pb2.UploadHeader(
                model="huge",
                upload_id="huge-1",
                files=[model_pb2.FileManifest(path="w.bin", size=free + 1024**3, sha256="0" * 64)],
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
            deployment=deployment_pb2.Deployment(model=model_name, version=1, servers=["local"])
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


# --- servers ----------------------------------------------------------------


def _ghost_server(stubs: Stubs, name: str, port: int) -> server_pb2.Server:
    return stubs.servers.RegisterServer(
        server_pb2.RegisterServerRequest(
            server=server_pb2.Server(name=name, address=f"127.0.0.1:{port}")
        ),
        metadata=stubs.auth,
        timeout=30,
    )


def test_deploy_to_an_unreachable_triton_is_unavailable(
    stubs: Stubs, mlserve: MLServeProcess, existing: model_pb2.ModelVersion
) -> None:
    ghost = f"ghost-{os.getpid()}-{time.monotonic_ns() % 100000}"
    _ghost_server(stubs, ghost, free_port())
    try:

        def unreachable() -> bool:
            server = stubs.servers.GetServer(
                server_pb2.GetServerRequest(name=ghost), metadata=stubs.auth
            )
            return bool(server.state == server_pb2.SERVER_STATE_UNREACHABLE)

        wait_until(unreachable, timeout=15)
        with nothing_written(stubs, mlserve.home):
            error = expect_error(
                Code.UNAVAILABLE,
                stubs.deployments.CreateDeployment,
                deployment_pb2.CreateDeploymentRequest(
                    deployment=deployment_pb2.Deployment(model=existing.model, servers=[ghost])
                ),
                metadata=stubs.auth,
                timeout=60,
            )
            assert ghost in error.details()
            expect_error(
                Code.NOT_FOUND,
                stubs.deployments.GetDeployment,
                deployment_pb2.GetDeploymentRequest(name=existing.model),
                metadata=stubs.auth,
            )
            expect_error(
                Code.UNAVAILABLE,
                stubs.deployments.LoadModel,
                deployment_pb2.LoadModelRequest(model=existing.model, server=ghost),
                metadata=stubs.auth,
                timeout=60,
            )
            expect_error(
                Code.NOT_FOUND,
                stubs.deployments.GetDeployment,
                deployment_pb2.GetDeploymentRequest(name=existing.model),
                metadata=stubs.auth,
            )
    finally:
        stubs.servers.DeleteServer(server_pb2.DeleteServerRequest(name=ghost), metadata=stubs.auth)
    expect_error(
        Code.NOT_FOUND,
        stubs.servers.GetServer,
        server_pb2.GetServerRequest(name=ghost),
        metadata=stubs.auth,
    )


def _server_names(stubs: Stubs) -> list[str]:
    response = stubs.servers.ListServers(
        server_pb2.ListServersRequest(page_size=1000), metadata=stubs.auth
    )
    return [s.name for s in response.servers]


@pytest.mark.parametrize(
    "address",
    ["nohost", "host:99999", "a b:1", "[::1:80", "host:0", "host:", ":80", "host:-1", "[zz]:80"],
)
def test_register_server_with_a_malformed_address(stubs: Stubs, address: str) -> None:
    before = _server_names(stubs)
    name = f"bad-address-{os.getpid()}"
    error = expect_error(
        Code.INVALID_ARGUMENT,
        stubs.servers.RegisterServer,
        server_pb2.RegisterServerRequest(server=server_pb2.Server(name=name, address=address)),
        metadata=stubs.auth,
    )
    assert "address" in error.details()
    assert _server_names(stubs) == before


def test_register_server_with_a_bad_or_duplicate_name(stubs: Stubs) -> None:
    name = f"ghost-dup-{os.getpid()}"
    port = free_port()
    _ghost_server(stubs, name, port)
    try:
        before = _server_names(stubs)
        for existing_name in (name, "local"):
            expect_error(
                Code.ALREADY_EXISTS,
                stubs.servers.RegisterServer,
                server_pb2.RegisterServerRequest(
                    server=server_pb2.Server(name=existing_name, address="127.0.0.1:1")
                ),
                metadata=stubs.auth,
            )
        for bad in ("../x", "a/b", "", "a b"):
            expect_error(
                Code.INVALID_ARGUMENT,
                stubs.servers.RegisterServer,
                server_pb2.RegisterServerRequest(
                    server=server_pb2.Server(name=bad, address="127.0.0.1:1")
                ),
                metadata=stubs.auth,
            )
        assert _server_names(stubs) == before
        kept = stubs.servers.GetServer(server_pb2.GetServerRequest(name=name), metadata=stubs.auth)
        assert kept.address == f"127.0.0.1:{port}"
        local = stubs.servers.GetServer(
            server_pb2.GetServerRequest(name="local"), metadata=stubs.auth
        )
        assert local.embedded
        assert local.address != "127.0.0.1:1"
    finally:
        stubs.servers.DeleteServer(server_pb2.DeleteServerRequest(name=name), metadata=stubs.auth)


# --- symlinks and hard links ------------------------------------------------


def _plant(kind: str, planted: Path, outside: Path) -> None:
    """Replace ``planted`` with a link of ``kind`` to ``outside``."""
    if planted.is_dir() and not planted.is_symlink():
        import shutil

        shutil.rmtree(planted)
    else:
        planted.unlink()
    if kind == "hardlink":
        os.link(outside, planted)
    else:
        planted.symlink_to(outside)


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "directory-symlink"])
def test_link_planted_in_staging_is_refused(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path, kind: str
) -> None:
    home = mlserve.home
    data = os.urandom(MiB)
    files = {"model.py": b"# linked\n", "weights.bin": data}
    upload_id = f"{model_name}-u"
    half = [header(model_name, files, upload_id=upload_id), chunk("weights.bin", 0, data[:1000])]
    upload_error(stubs, Code.FAILED_PRECONDITION, half)
    staged_dir = home / "staging" / upload_id
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    outside = outside_dir / "weights.bin"
    outside.write_bytes(b"outside secret " * 10)
    if kind == "directory-symlink":
        _plant("symlink", staged_dir, outside_dir)
    else:
        _plant(kind, staged_dir / "weights.bin", outside)
    outside_before = tree(outside_dir)
    with nothing_written(stubs, home, untouched=[outside]):
        upload_error(stubs, Code.INVALID_ARGUMENT, stream(model_name, files, upload_id=upload_id))
    assert tree(outside_dir) == outside_before
    with contextlib.suppress(grpc.RpcError):
        status = get_upload(stubs, upload_id)
        assert status.received_bytes != outside.stat().st_size

    # Once the link is gone the upload resumes normally: the refusal held no lock.
    if kind == "directory-symlink":
        staged_dir.unlink()
    else:
        (staged_dir / "weights.bin").unlink()
    version = upload(stubs, stream(model_name, files, upload_id=upload_id))
    assert download(stubs, model_name, version.version) == files
    assert tree(outside_dir) == outside_before
    delete_model_quietly(stubs, model_name)
    assert outside.read_bytes() == b"outside secret " * 10


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_link_planted_in_repository_is_not_followed_by_download(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path, kind: str
) -> None:
    secret = b"SECRET-OUTSIDE-THE-REPOSITORY " * 100
    outside = tmp_path / "secret.bin"
    outside.write_bytes(secret)
    files = {"model.py": b"# innocent\n", "weights.bin": os.urandom(len(secret))}
    version = upload(stubs, stream(model_name, files))
    planted = mlserve.home / "repository" / model_name / str(version.version) / "weights.bin"
    _plant(kind, planted, outside)
    received: list[bytes] = []

    def read_all(path: str = "") -> None:
        for piece in stubs.models.DownloadModelVersion(
            model_pb2.DownloadModelVersionRequest(
                model=model_name, version=version.version, path=path
            ),
            metadata=stubs.auth,
        ):
            received.append(piece.data)

    with nothing_written(stubs, mlserve.home, untouched=[outside]):
        expect_error(Code.INVALID_ARGUMENT, read_all)
        expect_error(Code.INVALID_ARGUMENT, read_all, "weights.bin")
    assert not any(b"SECRET" in data for data in received)
    delete_model_quietly(stubs, model_name)
    assert outside.read_bytes() == secret


def test_hard_link_planted_as_config_scratch_file_is_not_written_through(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path
) -> None:
    upload(stubs, stream(model_name, {"model.py": b"# v1\n"}))
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"precious bytes outside the repository\n")
    scratch = mlserve.home / "repository" / model_name / ".config.pbtxt.tmp"
    os.link(outside, scratch)
    try:
        with contextlib.suppress(grpc.RpcError):  # refusing is fine; writing through is not
            upload(stubs, stream(model_name, {"model.py": b"# v2\n"}))
        assert outside.read_bytes() == b"precious bytes outside the repository\n"
    finally:
        delete_model_quietly(stubs, model_name)


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


# --- the embedded Triton stays private --------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            found.append(int(entry.name))
    return found


def triton_pid(mlserve_pid: int) -> int:
    for child in _children(mlserve_pid):
        with contextlib.suppress(OSError):
            if b"tritonserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    raise AssertionError(f"no tritonserver child of process {mlserve_pid}")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_sockets(pid: int) -> list[tuple[str, str, int, str]]:
    """(table, hex local address, port, inode) of every LISTEN socket in pid's namespace."""
    found = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":
                continue
            address, port = fields[1].split(":")
            found.append((table, address, int(port, 16), fields[9]))
    return found


# 127.0.0.1 as /proc/net/tcp writes it, and as an IPv4-mapped address in tcp6
# (gRPC binds "127.0.0.1" through an AF_INET6 socket where it can). Never
# 00000000 (every interface) or :: (every interface, both families).
LOOPBACK = {("tcp", "0100007F"), ("tcp6", "0000000000000000FFFF00000100007F")}


def test_embedded_triton_listens_on_loopback_only(stubs: Stubs, mlserve: MLServeProcess) -> None:
    assert mlserve.process is not None
    local = stubs.servers.GetServer(server_pb2.GetServerRequest(name="local"), metadata=stubs.auth)
    host, _, port_text = local.address.rpartition(":")
    assert host == "127.0.0.1"
    grpc_port = int(port_text)

    pid = triton_pid(mlserve.process.pid)
    inodes = _socket_inodes(pid)
    everything = listening_sockets(pid)
    owned = [s for s in everything if s[3] in inodes]
    assert owned, "Triton owns no listening socket"
    assert {(table, address) for table, address, _, _ in owned} <= LOOPBACK
    assert {port for _, _, port, _ in owned} == {grpc_port}, "Triton opened another port"
    assert not {8000, 8002} & {port for _, _, port, _ in owned}
    on_port = [s for s in everything if s[2] == grpc_port]
    assert {(table, address) for table, address, _, _ in on_port} <= LOOPBACK
    assert "--grpc-address=127.0.0.1" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
        errors="replace"
    ).replace("\0", " ")
