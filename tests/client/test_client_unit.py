"""Unit tests of the Python client's pure logic: no server, only temporary folders."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from mlserve_api.v1 import model_pb2
from mlserve_client import (
    DownloadError,
    LocalVersion,
    MissingKeyError,
    ModelDirectoryError,
    derive_upload_id,
    read_admin_key,
    read_model_directory,
    safe_destination,
)
from mlserve_client.download import VersionWriter
from mlserve_client.upload import received_offsets, upload_requests

CONFIG = 'backend: "python"\n'


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def paths(version: LocalVersion) -> list[str]:
    return [file.path for file in version.files]


@pytest.fixture
def triton_dir(tmp_path: Path) -> Path:
    """config.pbtxt and version folders 1, 2 and 10 (10 is the highest, not 2)."""
    model = tmp_path / "model"
    write(model / "config.pbtxt", CONFIG)
    write(model / "1" / "model.py", "one")
    write(model / "2" / "model.py", "two")
    write(model / "10" / "model.py", "ten")
    write(model / "10" / "weights" / "layer.bin", b"\x00\x01" * 100)
    return model


# --- reading model folders ---------------------------------------------------


def test_triton_layout_uploads_highest_numbered_version(triton_dir: Path) -> None:
    version = read_model_directory(triton_dir)

    assert version.root == triton_dir / "10"
    assert paths(version) == ["model.py", "weights/layer.bin"]
    assert version.config == CONFIG


def test_triton_layout_honours_version_dir(triton_dir: Path) -> None:
    version = read_model_directory(triton_dir, version_dir="2")

    assert version.root == triton_dir / "2"
    assert paths(version) == ["model.py"]
    assert version.files[0].sha256 == hashlib.sha256(b"two").hexdigest()
    assert version.config == CONFIG


@pytest.mark.parametrize("version_dir", ["7", "..", "../model", "10/weights", ""])
def test_version_dir_must_be_an_existing_child_folder(triton_dir: Path, version_dir: str) -> None:
    with pytest.raises(ModelDirectoryError):
        read_model_directory(triton_dir, version_dir=version_dir)


def test_flat_folder_with_config_keeps_config_out_of_the_files(tmp_path: Path) -> None:
    write(tmp_path / "config.pbtxt", CONFIG)
    write(tmp_path / "model.py", "code")

    version = read_model_directory(tmp_path)

    assert version.root == tmp_path
    assert paths(version) == ["model.py"]
    assert version.config == CONFIG


def test_flat_folder_without_config(tmp_path: Path) -> None:
    write(tmp_path / "model.py", "code")

    version = read_model_directory(tmp_path)

    assert paths(version) == ["model.py"]
    assert version.config == ""


def test_nested_files_are_described_sorted_with_slash_paths(tmp_path: Path) -> None:
    data = b"x" * 5000
    write(tmp_path / "b.txt", "b")
    write(tmp_path / "a" / "deep" / "blob.bin", data)
    write(tmp_path / "a.txt", "a")
    write(tmp_path / "a" / "config.pbtxt", "not the model config")

    version = read_model_directory(tmp_path)

    assert paths(version) == ["a.txt", "a/config.pbtxt", "a/deep/blob.bin", "b.txt"]
    blob = version.files[2]
    assert (blob.size, blob.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert version.size_bytes == 5000 + 1 + 1 + len("not the model config")
    assert version.config == ""


def test_symlinked_file_is_refused(tmp_path: Path) -> None:
    outside = write(tmp_path / "secret", "secret")
    write(tmp_path / "model" / "model.py", "code")
    (tmp_path / "model" / "link").symlink_to(outside)

    with pytest.raises(ModelDirectoryError, match="symbolic link"):
        read_model_directory(tmp_path / "model")


def test_symlinked_folder_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "elsewhere" / "data.bin", "data")
    write(tmp_path / "model" / "model.py", "code")
    (tmp_path / "model" / "nested").symlink_to(tmp_path / "elsewhere")

    with pytest.raises(ModelDirectoryError, match="symbolic link"):
        read_model_directory(tmp_path / "model")


def test_symlinked_version_folder_and_config_are_refused(triton_dir: Path, tmp_path: Path) -> None:
    (triton_dir / "11").symlink_to(triton_dir / "10")
    with pytest.raises(ModelDirectoryError, match="symbolic link"):
        read_model_directory(triton_dir)

    flat = tmp_path / "flat"
    write(flat / "model.py", "code")
    (flat / "config.pbtxt").symlink_to(triton_dir / "config.pbtxt")
    with pytest.raises(ModelDirectoryError, match="symbolic link"):
        read_model_directory(flat)


def test_empty_or_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelDirectoryError, match="no files"):
        read_model_directory(tmp_path)
    with pytest.raises(ModelDirectoryError, match="not a directory"):
        read_model_directory(tmp_path / "missing")


# --- upload ids ----------------------------------------------------------------


def test_upload_id_is_deterministic_and_location_independent(
    triton_dir: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(triton_dir, tmp_path / "copy")

    upload_id = derive_upload_id("m", read_model_directory(triton_dir))

    assert upload_id == derive_upload_id("m", read_model_directory(copy))
    assert upload_id.startswith("c-")
    assert len(upload_id) == 42


def test_upload_id_changes_with_name_content_and_config(triton_dir: Path) -> None:
    original = derive_upload_id("m", read_model_directory(triton_dir))
    assert derive_upload_id("other", read_model_directory(triton_dir)) != original

    write(triton_dir / "config.pbtxt", CONFIG + "max_batch_size: 8\n")
    changed_config = derive_upload_id("m", read_model_directory(triton_dir))
    assert changed_config != original

    write(triton_dir / "10" / "model.py", "changed")
    assert derive_upload_id("m", read_model_directory(triton_dir)) not in (
        original,
        changed_config,
    )


# --- upload stream -------------------------------------------------------------


def test_upload_stream_resumes_from_received_bytes(tmp_path: Path) -> None:
    write(tmp_path / "a.bin", b"a" * 10)
    write(tmp_path / "b.bin", b"b" * 7)
    write(tmp_path / "empty", b"")
    version = read_model_directory(tmp_path)
    reports: list[tuple[int, int]] = []

    requests = list(
        upload_requests(
            "m",
            "id-1",
            version,
            {"a.bin": 4, "b.bin": 0},
            chunk_size=4,
            progress=lambda done, total: reports.append((done, total)),
        )
    )

    header = requests[0].header
    assert (header.model, header.upload_id, header.config) == ("m", "id-1", "")
    assert [f.path for f in header.files] == ["a.bin", "b.bin", "empty"]
    sent = [(r.chunk.path, r.chunk.offset, r.chunk.data) for r in requests[1:]]
    assert sent == [
        ("a.bin", 4, b"aaaa"),
        ("a.bin", 8, b"aa"),
        ("b.bin", 0, b"bbbb"),
        ("b.bin", 4, b"bbb"),
    ]
    assert reports == [(4, 17), (8, 17), (10, 17), (14, 17), (17, 17)]


def test_committed_upload_sends_only_the_header(tmp_path: Path) -> None:
    write(tmp_path / "model.py", "code")
    version = read_model_directory(tmp_path)
    upload = model_pb2.Upload(
        state=model_pb2.UPLOAD_STATE_COMMITTED,
        files=[model_pb2.UploadFileStatus(path="model.py", size=4, received_bytes=0)],
    )

    requests = list(upload_requests("m", "id", version, received_offsets(upload)))

    assert [r.WhichOneof("part") for r in requests] == ["header"]
    assert received_offsets(None) == {}


def test_chunk_size_is_bounded(tmp_path: Path) -> None:
    write(tmp_path / "model.py", "code")
    version = read_model_directory(tmp_path)

    with pytest.raises(ValueError, match="chunk_size"):
        list(upload_requests("m", "id", version, {}, chunk_size=5 * 1024 * 1024))


# --- download --------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative", ["../x", "/etc/passwd", "a/../../x", "", "a//b", "./a", "a\\..\\b", "a\x00b"]
)
def test_download_path_escaping_dest_is_refused(tmp_path: Path, relative: str) -> None:
    with pytest.raises(DownloadError):
        safe_destination(tmp_path, relative)


def test_download_path_through_symlink_out_of_dest_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "out").symlink_to(tmp_path)

    with pytest.raises(DownloadError, match="outside"):
        safe_destination(dest, "out/x")
    assert safe_destination(dest, "sub/model.py") == dest / "sub" / "model.py"


def manifest_version(files: dict[str, bytes], config: str = "") -> model_pb2.ModelVersion:
    return model_pb2.ModelVersion(
        model="m",
        version=1,
        config=config,
        files=[
            model_pb2.FileManifest(
                path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest()
            )
            for path, data in sorted(files.items())
        ],
    )


def write_version(
    dest: Path, version: model_pb2.ModelVersion, *chunks: tuple[str, int, bytes]
) -> None:
    with VersionWriter(dest, version) as writer:
        for path, offset, data in chunks:
            writer.write(model_pb2.FileChunk(path=path, offset=offset, data=data))
        writer.finish()


def test_version_writer_writes_files_empty_files_and_config(tmp_path: Path) -> None:
    version = manifest_version({"sub/a.bin": b"abcdef", "empty": b""}, config=CONFIG)

    write_version(tmp_path, version, ("sub/a.bin", 0, b"abc"), ("sub/a.bin", 3, b"def"))

    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"abcdef"
    assert (tmp_path / "empty").read_bytes() == b""
    assert (tmp_path / "config.pbtxt").read_text() == CONFIG
    assert not list(tmp_path.rglob("*.part"))


def test_version_writer_refuses_a_digest_mismatch(tmp_path: Path) -> None:
    version = manifest_version({"a.bin": b"abcdef"})

    with pytest.raises(DownloadError, match="sha256"):
        write_version(tmp_path, version, ("a.bin", 0, b"abcdeX"))

    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        ((), "none of its"),
        ((("b.bin", 0, b"abc"),), "not in the manifest"),
        ((("a.bin", 1, b"bc"),), "offset"),
        ((("a.bin", 0, b"abcd"),), "more bytes"),
        ((("a.bin", 0, b"ab"),), "received 2 of 3"),
    ],
)
def test_version_writer_refuses_what_the_manifest_does_not_match(
    tmp_path: Path, chunks: tuple[tuple[str, int, bytes], ...], error: str
) -> None:
    with pytest.raises(DownloadError, match=error):
        write_version(tmp_path, manifest_version({"a.bin": b"abc"}), *chunks)

    assert not list(tmp_path.iterdir())


# --- key ---------------------------------------------------------------------------


def test_admin_key_is_read_from_home_and_missing_key_is_explained(tmp_path: Path) -> None:
    write(tmp_path / "admin.key", "secret-key\n")
    assert read_admin_key(tmp_path) == "secret-key"

    with pytest.raises(MissingKeyError, match="--key"):
        read_admin_key(tmp_path / "elsewhere")
