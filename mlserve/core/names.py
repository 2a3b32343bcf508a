"""Validation of every name that becomes part of a path.

Checked at the API edge and again where paths are built (``safe_join``), so a
model, server, upload or file name can never escape the directory it belongs
in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path, PurePosixPath

from mlserve.core.errors import InvalidArgument

MAX_NAME_LENGTH = 128
MAX_PATH_LENGTH = 1024
MAX_COMPONENT_LENGTH = 255
MAX_TAG_LENGTH = 64
MAX_TAGS = 64

# Triton model names end up as directory names and in ensemble configs; keep
# them to a portable alphabet that needs no quoting anywhere.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a valid resource name, else raise InvalidArgument."""
    if not value:
        raise InvalidArgument(f"{what} is required")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{what} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if not _NAME.fullmatch(value):
        raise InvalidArgument(
            f"{what} {value!r} is not allowed: use letters, digits, '_', '-' and '.', "
            "not starting with '.' or '-'"
        )
    return value


def check_relative_path(value: str, what: str = "file path") -> str:
    """Return a normalised '/'-separated relative path, or raise InvalidArgument.

    Rejects absolute paths, '..' and '.' components, empty components,
    backslashes and NUL, so the result can be joined under any root.
    """
    if not value:
        raise InvalidArgument(f"{what} is required")
    if len(value.encode()) > MAX_PATH_LENGTH:
        raise InvalidArgument(f"{what} is longer than {MAX_PATH_LENGTH} bytes")
    if "\x00" in value or "\\" in value:
        raise InvalidArgument(f"{what} {value!r} contains NUL or a backslash")
    if value.startswith("/"):
        raise InvalidArgument(f"{what} {value!r} must be relative, not absolute")
    parts = value.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidArgument(
                f"{what} {value!r} must not contain empty, '.' or '..' components"
            )
        if len(part.encode()) > MAX_COMPONENT_LENGTH:
            raise InvalidArgument(f"{what} {value!r} has a component over 255 bytes")
    return str(PurePosixPath(*parts))


def safe_join(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and prove the result stays inside it.

    The check uses resolved paths, so a symlink planted anywhere along the way
    (the attack behind Triton's CVE-2023-31036) cannot lead outside ``root``.
    """
    candidate = root.joinpath(*parts)
    resolved_root = root.resolve()
    resolved = candidate.resolve()
    if os.path.commonpath([resolved_root, resolved]) != str(resolved_root):
        raise InvalidArgument(f"path {'/'.join(parts)!r} leads outside its directory")
    return candidate


def check_tags(tags: Sequence[str], where: str) -> list[str]:
    """``tags`` sorted and without repeats, if each is 1 to 64 characters without NUL
    and there are at most 64; InvalidArgument naming ``where`` otherwise. Models,
    users and the ListModels filters share this rule."""
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"{where}: at most {MAX_TAGS} tags, got {len(tags)}")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_LENGTH or "\x00" in tag:
            raise InvalidArgument(
                f"{where}: tag {tag!r} must be 1 to {MAX_TAG_LENGTH} characters, no NUL"
            )
    return sorted(set(tags))


def check_update_mask(mask: Sequence[str], updatable: Collection[str]) -> None:
    """InvalidArgument unless ``mask`` names at least one field, all of them in ``updatable``."""
    unknown = set(mask) - set(updatable)
    if unknown or not mask:
        raise InvalidArgument(
            f"update_mask must name some of {', '.join(sorted(updatable))}"
            + (f"; cannot update {', '.join(sorted(unknown))}" if unknown else "")
        )
