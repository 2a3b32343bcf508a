"""Uploads belong to the user who began them, over real sockets.

Another user's upload answers exactly like a missing one, whether asked
about (GetUpload), resumed, or cancelled; admins see every upload. Upload
ids are checked at the edge, and no id's lock or staging can meet another's.
Every refusal is checked for its code and for nothing having been written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest

from mlserve_api.v1 import model_pb2, workspace_pb2
from tests.support.checks import expect_error, nothing_written, sha, tree
from tests.support.mlserve import MLServeProcess, Stubs, started_without_triton
from tests.support.uploading import get_upload, stream, upload, upload_error
from tests.support.uploads import begin, blob_file, missing, upload_ids
from tests.support.users import PID, make_user

Code = grpc.StatusCode
WEIGHTS = os.urandom(64 * 1024 + 7)
FILES = {"model.py": b"# owned\n", "weights.bin": WEIGHTS}


@pytest.fixture(scope="module")
def owners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServeProcess]:
    """An MLServe without Triton: uploads need none."""
    with started_without_triton(tmp_path_factory.mktemp("owners-home")) as process:
        yield process


@pytest.fixture(scope="module")
def admin(owners: MLServeProcess) -> Iterator[Stubs]:
    stubs = owners.stubs()
    yield stubs
    stubs.channel.close()


@pytest.fixture(scope="module")
def ann(admin: Stubs) -> Stubs:
    return make_user(admin, f"up-ann-{PID}", "editor")


@pytest.fixture(scope="module")
def bob(admin: Stubs) -> Stubs:
    return make_user(admin, f"up-bob-{PID}", "editor")


def test_another_users_upload_answers_like_a_missing_one(
    owners: MLServeProcess, admin: Stubs, ann: Stubs, bob: Stubs, model_name: str
) -> None:
    upload_id = f"{model_name}-u"
    begin(ann, model_name, upload_id, FILES)
    mine = get_upload(ann, upload_id)
    assert {f.path: f.size for f in mine.files} == {p: len(d) for p, d in FILES.items()}
    assert mine.owner == f"up-ann-{PID}"
    assert mine.HasField("expire_time")
    staging = owners.home / "staging"
    before = tree(staging)

    with nothing_written(admin, owners.home):
        for asked in (upload_id, f"{upload_id}-none"):
            missing(expect_error(Code.NOT_FOUND, get_upload, bob, asked), asked)
            cancel = model_pb2.CancelUploadRequest(upload_id=asked)
            error = expect_error(Code.NOT_FOUND, bob.models.CancelUpload, cancel, metadata=bob.auth)
            missing(error, asked)
        # Resuming it, with its header or with another one, tells nothing either.
        for files in (FILES, {"model.py": b"# another\n"}):
            resume = stream(model_name, files, upload_id=upload_id)
            missing(upload_error(bob, Code.NOT_FOUND, resume), upload_id)
        assert upload_id not in upload_ids(bob)
        denied = model_pb2.ListUploadsRequest(all_users=True)
        expect_error(Code.PERMISSION_DENIED, bob.models.ListUploads, denied, metadata=bob.auth)
    assert tree(staging) == before
    assert get_upload(ann, upload_id) == mine

    # Admins see every upload, with its owner; the owner lists their own.
    assert get_upload(admin, upload_id).owner == f"up-ann-{PID}"
    assert upload_id in upload_ids(admin, all_users=True)
    assert upload_id not in upload_ids(admin)
    assert upload_id in upload_ids(ann)

    # Ann finishes it; Bob still cannot see it, committed or not.
    version = upload(ann, stream(model_name, FILES, upload_id=upload_id))
    assert get_upload(ann, upload_id).version == version.version
    missing(expect_error(Code.NOT_FOUND, get_upload, bob, upload_id), upload_id)


def test_same_content_from_two_users_gets_two_uploads(
    admin: Stubs, ann: Stubs, bob: Stubs, model_name: str
) -> None:
    """Ids derived by the server are the caller's own: two users never meet on one."""
    workspace = f"shared-{PID}"
    admin.workspaces.CreateWorkspace(
        workspace_pb2.CreateWorkspaceRequest(workspace=workspace_pb2.Workspace(name=workspace)),
        metadata=admin.auth,
    )
    for user in (f"up-ann-{PID}", f"up-bob-{PID}"):
        admin.workspaces.AddMember(
            workspace_pb2.AddMemberRequest(workspace=workspace, user=user), metadata=admin.auth
        )
    admin.models.CreateModel(
        model_pb2.CreateModelRequest(model=model_pb2.Model(name=model_name, workspace=workspace)),
        metadata=admin.auth,
    )
    files = {"model.py": b"# shared\n", "data.bin": os.urandom(4096)}
    begin(ann, model_name, "", files)
    begin(bob, model_name, "", files)
    (ann_id,) = [i for i in upload_ids(ann) if i.startswith("auto-")]
    (bob_id,) = [i for i in upload_ids(bob) if i.startswith("auto-")]
    assert ann_id != bob_id
    assert get_upload(bob, bob_id).received_bytes == len(files["data.bin"]) // 2


def test_upload_ids_x_and_x_lock_do_not_collide(
    owners: MLServeProcess, ann: Stubs, model_name: str
) -> None:
    upload_id = f"{model_name}-x"
    files = {"model.py": b"# x\n", "weights.bin": os.urandom(5000)}
    begin(ann, model_name, upload_id, files)
    other = {"model.py": b"# lock\n", "weights.bin": os.urandom(1000)}
    locked = upload(ann, stream(f"{model_name}-b", other, upload_id=f"{upload_id}.lock"))
    assert locked.version == 1
    version = upload(ann, stream(model_name, files, upload_id=upload_id))
    assert {f.path: f.sha256 for f in version.files} == {p: sha(d) for p, d in files.items()}
    assert not (owners.home / "staging" / upload_id).exists()


@pytest.mark.parametrize(
    "bad", ["../x", ".hidden", "a/b", "-dash", "x" * 129, "nul\x00", "space d"]
)
def test_malformed_upload_ids_are_invalid_argument(
    owners: MLServeProcess, admin: Stubs, ann: Stubs, model_name: str, bad: str
) -> None:
    before = (tree(owners.home / "staging"), tree(owners.home / "upload-locks"))
    listed = upload_ids(admin, all_users=True)
    with nothing_written(admin, owners.home):
        for request, call in (
            (model_pb2.GetUploadRequest(upload_id=bad), ann.models.GetUpload),
            (model_pb2.CancelUploadRequest(upload_id=bad), ann.models.CancelUpload),
        ):
            error = expect_error(Code.INVALID_ARGUMENT, call, request, metadata=ann.auth)
            assert "upload_id" in error.details()
        error = upload_error(ann, Code.INVALID_ARGUMENT, stream(model_name, FILES, upload_id=bad))
        assert "upload_id" in error.details()
    assert (tree(owners.home / "staging"), tree(owners.home / "upload-locks")) == before
    assert upload_ids(admin, all_users=True) == listed


def test_list_uploads_pages_with_tamper_evident_tokens(
    admin: Stubs, ann: Stubs, model_name: str
) -> None:
    lister = make_user(admin, f"up-pages-{PID}", "editor")
    ids = [f"{model_name}-{n}" for n in range(3)]
    for upload_id in ids:
        begin(lister, model_name, upload_id, FILES)
    first = lister.models.ListUploads(
        model_pb2.ListUploadsRequest(page_size=2), metadata=lister.auth
    )
    assert [u.upload_id for u in first.uploads] == ids[:2]
    assert first.next_page_token
    second = lister.models.ListUploads(
        model_pb2.ListUploadsRequest(page_size=2, page_token=first.next_page_token),
        metadata=lister.auth,
    )
    assert [u.upload_id for u in second.uploads] == ids[2:]
    assert second.next_page_token == ""
    token = first.next_page_token
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for request in (
        model_pb2.ListUploadsRequest(page_size=2, page_token=tampered),
        model_pb2.ListUploadsRequest(page_size=-1),
    ):
        expect_error(
            Code.INVALID_ARGUMENT, lister.models.ListUploads, request, metadata=lister.auth
        )
    # A token belongs to its query: not valid for the all-users list.
    other_query = model_pb2.ListUploadsRequest(all_users=True, page_token=token)
    expect_error(Code.INVALID_ARGUMENT, admin.models.ListUploads, other_query, metadata=admin.auth)


def test_cancel_removes_staging_and_releases_pins(
    owners: MLServeProcess, admin: Stubs, ann: Stubs, model_name: str
) -> None:
    shared = os.urandom(32 * 1024)
    upload(ann, stream(f"{model_name}-first", {"model.py": b"# 1\n", "shared.bin": shared}))
    upload_id = f"{model_name}-c"
    files = {"model.py": b"# 2\n", "shared.bin": shared, "fresh.bin": os.urandom(8192)}
    begin(ann, model_name, upload_id, files)
    progress = {f.path: f.received_bytes for f in get_upload(ann, upload_id).files}
    assert progress["shared.bin"] == len(shared)  # stored already: pinned, not sent
    # Only the upload's pin keeps the shared content now.
    ann.models.DeleteModel(
        model_pb2.DeleteModelRequest(name=f"{model_name}-first"), metadata=ann.auth
    )
    assert blob_file(owners.home, shared).exists()

    ann.models.CancelUpload(model_pb2.CancelUploadRequest(upload_id=upload_id), metadata=ann.auth)
    missing(expect_error(Code.NOT_FOUND, get_upload, ann, upload_id), upload_id)
    assert not (owners.home / "staging" / upload_id).exists()
    assert not (owners.home / "upload-locks" / upload_id).exists()
    assert not blob_file(owners.home, shared).exists()
    assert upload_id not in upload_ids(admin, all_users=True)
    cancel = model_pb2.CancelUploadRequest(upload_id=upload_id)
    missing(
        expect_error(Code.NOT_FOUND, ann.models.CancelUpload, cancel, metadata=ann.auth), upload_id
    )


def test_a_committed_upload_cannot_be_cancelled(
    owners: MLServeProcess, admin: Stubs, ann: Stubs, model_name: str
) -> None:
    upload_id = f"{model_name}-done"
    version = upload(ann, stream(model_name, FILES, upload_id=upload_id))
    with nothing_written(admin, owners.home):
        cancel = model_pb2.CancelUploadRequest(upload_id=upload_id)
        error = expect_error(
            Code.FAILED_PRECONDITION, ann.models.CancelUpload, cancel, metadata=ann.auth
        )
        assert f"version {version.version}" in error.details()
    assert get_upload(ann, upload_id).state == model_pb2.UPLOAD_STATE_COMMITTED
