"""A Triton-less MLServe per test module, for what needs no model served."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.mlserve import MLServeProcess, Stubs, started_without_triton


@pytest.fixture(scope="module")
def bare(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MLServeProcess]:
    home = tmp_path_factory.mktemp(f"{request.module.__name__.rpartition('.')[2]}-home")
    with started_without_triton(home) as process:
        yield process


@pytest.fixture(scope="module")
def root(bare: MLServeProcess) -> Iterator[Stubs]:
    """The admin's stubs on ``bare``."""
    stubs = bare.stubs()
    yield stubs
    stubs.channel.close()
