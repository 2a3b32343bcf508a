"""The README's mermaid diagrams: every one is marked with the picture drawn from
it, that picture is committed and shown, and docs/diagrams.py translates each
one (no Graphviz needed to check that; ``make docs`` draws them)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def load_diagrams() -> ModuleType:
    spec = importlib.util.spec_from_file_location("diagrams", ROOT / "docs" / "diagrams.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["diagrams"] = module
    spec.loader.exec_module(module)
    return module


diagrams = load_diagrams()


def test_every_mermaid_diagram_has_its_picture_committed_and_shown() -> None:
    found = dict(diagrams.blocks(README))
    assert len(found) == README.count("```mermaid")
    assert set(found) >= {"docs/several-machines.png", "docs/cold-load.png"}
    for picture in found:
        assert (ROOT / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
        assert re.search(rf"!\[[^\]]+\]\({re.escape(picture)}\)", README), picture


def test_each_diagram_translates_to_dot_with_every_node_and_edge() -> None:
    for picture, source in diagrams.blocks(README):
        chart = diagrams.parse(source)
        dot = diagrams.to_dot(chart)
        assert chart.edges, picture
        for name in chart.nodes:
            assert f"{name} [label=" in dot, (picture, name)
        drawn = [line for line in dot.splitlines() if " -> " in line and "style=invis" not in line]
        assert len(drawn) == len(chart.edges), picture


def test_the_translator_reads_shapes_labels_and_clusters() -> None:
    chart = diagrams.parse(
        "flowchart LR\n"
        '  subgraph hosts["the hosts"]\n'
        '    a["A<br/>box"]\n'
        "  end\n"
        '  s[("store")] -- "writes" --> a\n'
        '  a --- d{"ok?"} -- yes --> e(["end"])\n'
    )
    assert chart.direction == "LR"
    assert {name: node.shape for name, node in chart.nodes.items()} == {
        "a": "box",
        "s": "store",
        "d": "decision",
        "e": "rounded",
    }
    assert chart.clusters["hosts"].members == ["a"]
    assert [(e.tail, e.head, e.label, e.arrow) for e in chart.edges] == [
        ("s", "a", "writes", True),
        ("a", "d", "", False),
        ("d", "e", "yes", True),
    ]
    assert 'label="A\\nbox"' in diagrams.to_dot(chart)
    with pytest.raises(diagrams.DiagramError):
        diagrams.parse("flowchart LR\n  a ==> b\n")
    with pytest.raises(diagrams.DiagramError):
        diagrams.parse('flowchart LR\n  subgraph x["x"]\n  a\n')
