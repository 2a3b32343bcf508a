"""A file's sha256 may follow its bytes (the header leaves it empty, the chunk that
ends the file carries it): checked like a declared one, against a real MLServe.

Every bad stream gets its exact code, and nothing is committed; a wrong digest
also drops the file's staged bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping

import grpc
import pytest

from mlserve_api.v1 import model_pb2
from tests.support.checks import delete_model_quietly, download, nothing_written, sha
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.uploading import Request, chunk, chunks, get_upload, stream, upload, upload_error

MiB = 1024 * 1024
Code = grpc.StatusCode
WEIGHTS = "weights.bin"


def late_header(model: str, files: Mapping[str, bytes], upload_id: str) -> Request:
    """A header declaring every file with its size only: the digests follow the bytes."""
    declared = [
        model_pb2.FileManifest(path=path, size=len(data)) for path, data in sorted(files.items())
    ]
    return Request(header=model_pb2.UploadHeader(model=model, upload_id=upload_id, files=declared))


def digest_chunk(path: str, data: bytes, digest: str | None = None) -> Request:
    """The empty chunk at the file's end that carries its sha256."""
    sha256 = hashlib.sha256(data).hexdigest() if digest is None else digest
    return Request(chunk=model_pb2.FileChunk(path=path, offset=len(data), sha256=sha256))


def late_stream(model: str, files: Mapping[str, bytes], upload_id: str) -> Iterator[Request]:
    yield late_header(model, files, upload_id)
    yield from chunks(files)
    for path, data in sorted(files.items()):
        yield digest_chunk(path, data)


@pytest.fixture
def files() -> dict[str, bytes]:
    return {"model.py": b"# digest after the bytes\n", WEIGHTS: os.urandom(3 * MiB + 7)}


def test_digests_after_the_bytes_commit_the_same_version_as_declared_ones(
    stubs: Stubs, model_name: str, files: dict[str, bytes]
) -> None:
    version = upload(stubs, late_stream(model_name, files, f"{model_name}-late"))
    assert {f.path: f.sha256 for f in version.files} == {p: sha(d) for p, d in files.items()}
    assert download(stubs, model_name) == files
    # The manifest digest is over the verified digests: the same content declared
    # up front is that version, not a new one.
    again = upload(stubs, stream(model_name, files, upload_id=f"{model_name}-early"))
    assert (again.version, again.sha256) == (version.version, version.sha256)
    # The digest may also ride on the last chunk with data.
    other = {"model.py": b"# on the last data chunk\n"}
    last = Request(
        chunk=model_pb2.FileChunk(
            path="model.py", offset=0, data=other["model.py"], sha256=sha(other["model.py"])
        )
    )
    second = upload(stubs, [late_header(model_name, other, f"{model_name}-last"), last])
    assert second.version == version.version + 1
    delete_model_quietly(stubs, model_name)


def test_a_wrong_digest_after_the_bytes_is_data_loss_and_drops_the_staged_file(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, files: dict[str, bytes]
) -> None:
    upload_id = f"{model_name}-wrong"
    staged = mlserve.home / "staging" / upload_id / WEIGHTS
    wrong = [
        late_header(model_name, files, upload_id),
        *chunks(files),
        digest_chunk("model.py", files["model.py"]),
        digest_chunk(WEIGHTS, files[WEIGHTS], sha(b"something else")),
    ]
    with nothing_written(stubs, mlserve.home):
        error = upload_error(stubs, Code.DATA_LOSS, wrong)
        assert WEIGHTS in error.details()
        assert "send the file again" in error.details()
        assert not staged.exists()
        status = get_upload(stubs, upload_id)
        assert status.state == model_pb2.UPLOAD_STATE_RECEIVING
        assert {f.path: f.received_bytes for f in status.files}[WEIGHTS] == 0


def test_every_byte_without_a_digest_is_incomplete_until_the_digest_comes(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, files: dict[str, bytes]
) -> None:
    upload_id = f"{model_name}-unsigned"
    with nothing_written(stubs, mlserve.home):
        error = upload_error(
            stubs,
            Code.FAILED_PRECONDITION,
            [late_header(model_name, files, upload_id), *chunks(files)],
        )
        assert "sha256" in error.details()
        status = get_upload(stubs, upload_id)
        assert status.received_bytes == status.size_bytes  # the bytes are kept
    # A resume that sends nothing but the digests completes it; the server hashes
    # what it staged before.
    resumed = [late_header(model_name, files, upload_id)]
    resumed += [digest_chunk(path, data) for path, data in sorted(files.items())]
    version = upload(stubs, resumed)
    assert {f.path: f.sha256 for f in version.files} == {p: sha(d) for p, d in files.items()}
    delete_model_quietly(stubs, model_name)


def test_a_resumed_stream_ends_with_the_digest_of_the_whole_file(
    stubs: Stubs, model_name: str, files: dict[str, bytes]
) -> None:
    upload_id = f"{model_name}-resume"
    data = files[WEIGHTS]
    first = [late_header(model_name, files, upload_id), chunk(WEIGHTS, 0, data[:MiB])]
    upload_error(stubs, Code.FAILED_PRECONDITION, first)
    rest = [
        late_header(model_name, files, upload_id),
        chunk("model.py", 0, files["model.py"]),
        digest_chunk("model.py", files["model.py"]),
        *[
            chunk(WEIGHTS, offset, data[offset : offset + MiB])
            for offset in range(MiB, len(data), MiB)
        ],
        digest_chunk(WEIGHTS, data),
    ]
    version = upload(stubs, rest)
    assert download(stubs, model_name) == files
    assert {f.path: f.sha256 for f in version.files}[WEIGHTS] == sha(data)
    delete_model_quietly(stubs, model_name)


@pytest.mark.parametrize(
    "case",
    ["not-at-the-end", "not-hex", "contradicts-header", "no-upload-id", "bad-header-digest"],
)
def test_bad_digests_are_invalid_argument_and_commit_nothing(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, files: dict[str, bytes], case: str
) -> None:
    upload_id = f"{model_name}-{case}"
    data = files["model.py"]
    messages: list[Request]
    if case == "not-at-the-end":
        early = model_pb2.FileChunk(path="model.py", offset=0, data=data[:5], sha256=sha(data))
        messages = [late_header(model_name, files, upload_id), Request(chunk=early)]
        expected = "does not end the file"
    elif case == "not-hex":
        messages = [
            late_header(model_name, files, upload_id),
            chunk("model.py", 0, data),
            digest_chunk("model.py", data, "z" * 64),
        ]
        expected = "64 hex digits"
    elif case == "contradicts-header":
        declared = stream(model_name, files, upload_id=upload_id)
        messages = [next(declared), chunk("model.py", 0, data)]
        messages.append(digest_chunk("model.py", data, sha(b"other")))
        expected = "the header declared"
    elif case == "no-upload-id":
        messages = [late_header(model_name, files, "")]
        expected = "set upload_id"
    else:
        header = late_header(model_name, files, upload_id)
        header.header.files[0].sha256 = "abc"
        messages = [header]
        expected = "64 hex digits"
    with nothing_written(stubs, mlserve.home):
        error = upload_error(stubs, Code.INVALID_ARGUMENT, messages)
        assert expected in error.details()
