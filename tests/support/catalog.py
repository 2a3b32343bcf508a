"""The catalog's services over one repository and blob store, wired as the
server wires them, for the tests that run the domain without a server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlserve.catalog.artifacts import Artifacts
from mlserve.catalog.models import Models
from mlserve.catalog.versions import Versions
from mlserve.core.paging import PageTokens
from mlserve.deploy.lifecycle import DeploymentUsage
from mlserve.storage.blobs import Blobs
from mlserve.storage.repository import LocalRepository, Repository


@dataclass(frozen=True)
class Catalog:
    repository: Repository
    blobs: Blobs
    models: Models
    versions: Versions
    artifacts: Artifacts


def open_catalog(
    root: Path, secret: bytes = b"k" * 32, repository: Repository | None = None
) -> Catalog:
    """A catalog keeping its files under ``root`` (repository, staging, blobs), or in
    ``repository`` when given."""
    if repository is None:
        repository = LocalRepository(root / "repository", root / "staging", root / "blobs")
    blobs = Blobs(repository)
    tokens = PageTokens(secret)
    return Catalog(
        repository,
        blobs,
        Models(repository, tokens, blobs, DeploymentUsage()),
        Versions(repository, tokens, blobs, DeploymentUsage()),
        Artifacts(repository, tokens, blobs),
    )
