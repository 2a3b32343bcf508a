"""A training job's ``env`` artifact: requirements.txt-style lines, each checked
against the packages the runner's interpreter has. The runner installs nothing:
a job whose requirement is missing or of the wrong version is refused at create
(FAILED_PRECONDITION naming the requirement), before anything is queued.

Each line is a PEP 508 requirement (``numpy>=1.24,<2``, ``scikit-learn``,
``tomli; python_version < "3.11"``); ``#`` starts a comment. A marker that does
not hold on the runner drops its line. Options (``-r``, ``--index-url``, ``-e``)
and URL requirements are INVALID_ARGUMENT: nothing would fetch them. Extras are
accepted, but only the named distribution is checked, not what the extra adds.
"""

from __future__ import annotations

from collections.abc import Mapping

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from mlserve.core.errors import FailedPrecondition, InvalidArgument

MAX_ENV_BYTES = 64 * 1024


def parse_requirements(content: bytes, path: str) -> list[Requirement]:
    """The requirements of an env artifact's ``content``, in order.

    Raises:
        InvalidArgument: too big, not UTF-8, an option line, a URL, or a line that
            is not a requirement (the line number and the parser's message).
    """
    if len(content) > MAX_ENV_BYTES:
        raise InvalidArgument(
            f"env artifact {path!r} has {len(content)} bytes, more than {MAX_ENV_BYTES}: "
            "list only the requirements, one per line"
        )
    try:
        text = content.decode()
    except UnicodeDecodeError:
        raise InvalidArgument(f"env artifact {path!r} is not UTF-8 text") from None
    found: list[Requirement] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        where = f"env artifact {path!r} line {number}"
        if line.startswith("-"):
            raise InvalidArgument(
                f"{where}: {line!r} is a pip option; the runner installs nothing, it checks "
                "what its interpreter has: list requirements only"
            )
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise InvalidArgument(f"{where}: {line!r} is not a requirement: {error}") from None
        if requirement.url:
            raise InvalidArgument(
                f"{where}: {line!r} names a URL; the runner installs nothing: give a name "
                "and versions, e.g. numpy>=1.24"
            )
        found.append(requirement)
    return found


def check_requirements(
    requirements: list[Requirement], installed: Mapping[str, str], path: str
) -> None:
    """Raise FailedPrecondition naming the first requirement ``installed`` (canonical
    name -> version of the runner's interpreter) does not meet."""
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = installed.get(canonicalize_name(requirement.name))
        if version is None:
            raise FailedPrecondition(
                f"requirement {str(requirement)!r} of env artifact {path!r} is not installed "
                "in the training runner's interpreter: install it there (MLServe's "
                "environment) or drop the line"
            )
        if not requirement.specifier.contains(version, prereleases=True):
            raise FailedPrecondition(
                f"requirement {str(requirement)!r} of env artifact {path!r} is not met: the "
                f"training runner has {requirement.name} {version}"
            )
