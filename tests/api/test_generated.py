"""Generated stubs are committed; they must be exactly what `make generate` makes."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_protos.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "mlserve_api"
    committed = ROOT / "generated" / "mlserve_api"
    stale = _differences(filecmp.dircmp(fresh, committed, ignore=["__pycache__"]))
    assert not stale, f"generated/ is stale, run `make generate`: {stale}"


def _differences(comparison: filecmp.dircmp[str]) -> list[str]:
    found = [*comparison.left_only, *comparison.right_only]
    _, mismatched, errors = filecmp.cmpfiles(
        comparison.left, comparison.right, comparison.common_files, shallow=False
    )
    found += mismatched + errors
    for sub in comparison.subdirs.values():
        found += _differences(sub)
    return found
