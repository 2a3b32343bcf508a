"""The TypeScript and Go stubs and the vendored Triton protos are committed;
they must be exactly what `make generate` makes (scripts/generate_polyglot.py)."""

from __future__ import annotations

import filecmp
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.test_generated import ROOT, _differences

COMMITTED = ROOT / "generated"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("generated")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_polyglot.py"), str(output)],
        check=True,
        capture_output=True,
    )
    return output


@pytest.mark.parametrize("language", ["ts", "go"])
def test_the_stubs_of_mlserve_protos_are_fresh(fresh: Path, language: str) -> None:
    comparison = filecmp.dircmp(fresh / language, COMMITTED / language, ignore=["triton"])
    stale = _differences(comparison)
    assert not stale, f"generated/{language} is stale, run `make generate`: {stale}"


def test_the_vendored_triton_protos_and_their_stubs_are_fresh(fresh: Path) -> None:
    vendored = (COMMITTED / "triton" / "VERSION").read_text().split()[-1]
    installed = importlib.metadata.version("tritonclient")
    if installed != vendored:
        pytest.skip(f"tritonclient {installed} is installed, {vendored} vendored: `make generate`")
    for folder in ("triton", "ts/triton", "go/triton"):
        stale = _differences(filecmp.dircmp(fresh / folder, COMMITTED / folder))
        assert not stale, f"generated/{folder} is stale, run `make generate`: {stale}"


@pytest.mark.slow  # over ~20 s
def test_the_typescript_stubs_compile(tmp_path: Path) -> None:
    """Strict tsc over generated/ts, with the packages the stubs import (from .tools)."""
    tools = ROOT / ".tools" / "node_modules"
    if not (tools / ".bin" / "tsc").exists():
        pytest.fail("TypeScript is missing from .tools: `make install` installs it")
    shutil.copytree(COMMITTED / "ts", tmp_path / "src")
    (tmp_path / "node_modules").symlink_to(tools)
    (tmp_path / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    result = subprocess.run(
        [str(tools / ".bin" / "tsc"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:]


TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "target": "es2020",
        "module": "node16",
        "moduleResolution": "node16",
        "esModuleInterop": True,
        "skipLibCheck": True,
        "types": ["node"],
    },
    "include": ["src/**/*.ts"],
}
