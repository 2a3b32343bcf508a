"""Draw the README's mermaid diagrams as PNG images with Graphviz's ``dot``.

The README keeps each diagram's mermaid source (GitHub draws it) right after
a marker naming its picture::

    <!-- diagram: docs/runtime.png -->

This script reads every marked block, translates the part of mermaid's
flowchart language the README uses (``flowchart LR|TB``, ``subgraph id["…"]``
… ``end``, nodes ``id["…"]`` boxes, ``id(["…"])`` rounded, ``id[("…")]``
stores, ``id{"…"}`` decisions, edges ``-->``, ``---``, ``-- "label" -->`` and ``-- label -->``,
``<br/>`` line breaks) into DOT, and renders it with ``dot`` (Debian's
``graphviz``, installed by ``scripts/ensure_graphviz.sh``). So the pictures
are drawn from the same source as the mermaid, and ``make docs`` redraws them.

    .venv/bin/python docs/diagrams.py [README] [--check]

``--check`` only parses (no ``dot`` needed) and fails on anything it cannot
translate; ``tests/docs/test_diagrams.py`` runs it.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"<!-- diagram: (docs/[\w.-]+\.png) -->\s*\n(?:.*\n){0,3}?```mermaid\n")
FONT = "DejaVu Sans"
WRAP = 44  # characters per line of a node's label
EDGE_WRAP = 22  # and of an edge's

# mermaid's node shapes -> Graphviz attributes. Decisions are boxes with a
# colour of their own: dot's diamonds around three-line labels are huge.
SHAPES: dict[str, dict[str, str]] = {
    "box": {"shape": "box", "style": "rounded,filled", "fillcolor": "#e8f0fe"},
    "rounded": {"shape": "box", "style": "rounded,filled,bold", "fillcolor": "#fff4d6"},
    "store": {"shape": "cylinder", "style": "filled", "fillcolor": "#e6f4ea"},
    "decision": {"shape": "box", "style": "filled,diagonals", "fillcolor": "#fde8e6"},
}
_NODE = re.compile(
    r"""(?P<id>[A-Za-z_][\w]*)\s*
    (?:\(\["(?P<rounded>.*?)"\]\)
      |\[\("(?P<store>.*?)"\)\]
      |\["(?P<box>.*?)"\]
      |\{"(?P<decision>.*?)"\})?""",
    re.VERBOSE,
)
_EDGE = re.compile(
    r"""\s*(?:(?P<kind2>-->|---)
      |--\s*"(?P<label>.*?)"\s*(?P<kind1>-->|---)
      |--\s+(?P<bare>[^"]+?)\s+(?P<kind3>-->|---))\s*""",
    re.VERBOSE,
)
_SUBGRAPH = re.compile(r'subgraph\s+(?P<id>\w+)\s*(?:\["(?P<label>.*?)"\])?\s*$')


class DiagramError(ValueError):
    """A line of a diagram this translator does not understand."""


@dataclass
class Node:
    label: str
    shape: str = "box"


@dataclass
class Cluster:
    label: str
    members: list[str] = field(default_factory=list)


@dataclass
class Edge:
    tail: str
    head: str
    label: str
    arrow: bool


@dataclass
class Flowchart:
    direction: str
    nodes: dict[str, Node] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)


def blocks(readme: str) -> Iterator[tuple[str, str]]:
    """(picture path, mermaid source) of each marked block of ``readme``."""
    for match in MARKER.finditer(readme):
        end = readme.index("\n```", match.end() - 1)
        yield match.group(1), readme[match.end() : end + 1]


def parse(source: str) -> Flowchart:
    """The flowchart ``source`` describes (DiagramError on a line it cannot read)."""
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    header = lines[0].split()
    if header[0] != "flowchart" or len(header) != 2 or header[1] not in ("LR", "TB", "TD"):
        raise DiagramError(f"expected 'flowchart LR' or 'flowchart TB', got {lines[0]!r}")
    chart = Flowchart("LR" if header[1] == "LR" else "TB")
    open_clusters: list[str] = []
    for line in lines[1:]:
        if subgraph := _SUBGRAPH.match(line):
            name = subgraph["id"]
            chart.clusters[name] = Cluster(subgraph["label"] or name)
            open_clusters.append(name)
        elif line == "end":
            if not open_clusters:
                raise DiagramError("'end' without a subgraph")
            open_clusters.pop()
        else:
            _statement(chart, line, open_clusters[-1] if open_clusters else None)
    if open_clusters:
        raise DiagramError(f"subgraph {open_clusters[-1]!r} is not closed")
    return chart


def _statement(chart: Flowchart, line: str, cluster: str | None) -> None:
    """A node, or a chain of nodes and edges, on one line."""
    position = 0
    tail: str | None = None
    pending: tuple[str, bool] | None = None
    while position < len(line):
        node = _NODE.match(line, position)
        if node is None:
            raise DiagramError(f"cannot read {line[position:]!r} in {line!r}")
        name = node["id"]
        shape = next((s for s in SHAPES if node[s] is not None), None)
        if shape is not None:
            chart.nodes[name] = Node(node[shape], shape)
            if cluster is not None:
                chart.clusters[cluster].members.append(name)
        elif name in chart.clusters:
            pass  # an edge to a whole subgraph: drawn to the cluster
        elif name not in chart.nodes:
            chart.nodes[name] = Node(name)
            if cluster is not None:
                chart.clusters[cluster].members.append(name)
        if tail is not None and pending is not None:
            chart.edges.append(Edge(tail, name, pending[0], pending[1]))
        tail, position = name, node.end()
        if position >= len(line):
            break
        edge = _EDGE.match(line, position)
        if edge is None:
            raise DiagramError(f"expected an edge at {line[position:]!r} in {line!r}")
        kind = edge["kind1"] or edge["kind2"] or edge["kind3"]
        pending = (edge["label"] or edge["bare"] or "", kind == "-->")
        position = edge.end()
    if pending is not None and tail is not None and not chart.edges:
        raise DiagramError(f"an edge without a head in {line!r}")


def _text(label: str, width: int = WRAP) -> str:
    """A mermaid label as a DOT string: ``<br/>`` is a line break, and lines longer
    than ``width`` are wrapped too (long lines make dot's pictures too wide to read
    once a page scales them down)."""
    lines = [
        wrapped
        for line in re.split(r"<br\s*/?>", label)
        for wrapped in textwrap.wrap(line, width, break_on_hyphens=False) or [""]
    ]
    escaped = "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines)
    return f'"{escaped}"'


def to_dot(chart: Flowchart) -> str:
    """``chart`` in Graphviz's DOT language, styled for the README."""
    out = [
        "digraph G {",
        f'  graph [rankdir={chart.direction}, fontname="{FONT}", fontsize=15, pad=0.3,'
        " nodesep=0.35, ranksep=0.45, compound=true, bgcolor=white];",
        f'  node [fontname="{FONT}", fontsize=14, color="#5f6368", margin="0.15,0.08"];',
        f'  edge [fontname="{FONT}", fontsize=12, color="#5f6368", fontcolor="#3c4043"];',
    ]
    in_cluster = {member for cluster in chart.clusters.values() for member in cluster.members}
    for name, node in chart.nodes.items():
        if name not in in_cluster:
            out.append(f"  {_node(name, node)}")
    for name, cluster in chart.clusters.items():
        out.append(f"  subgraph cluster_{name} {{")
        out.append(
            f'    label={_text(cluster.label)}; style="rounded,filled"; fillcolor="#f8f9fa";'
            ' color="#9aa0a6"; labeljust=l;'
        )
        out.extend(f"    {_node(member, chart.nodes[member])}" for member in cluster.members)
        if not cluster.members:  # an empty subgraph still needs something to draw
            out.append(f'    {name}_anchor [label="", shape=point, style=invis];')
        elif _unlinked(chart, cluster.members):
            # Members with no edges among them sit side by side in the order the
            # source lists them (dot would otherwise order them as it likes).
            out.append(f"    {{ rank=same; {'; '.join(cluster.members)} }}")
            # Left to right in TB; in LR dot stacks a rank bottom up, so reversed.
            order = cluster.members if chart.direction == "TB" else cluster.members[::-1]
            out.extend(
                f"    {first} -> {second} [style=invis];"
                for first, second in itertools.pairwise(order)
            )
        out.append("  }")
    for edge in chart.edges:
        attributes = [] if edge.arrow else ["arrowhead=none"]
        if edge.label:
            attributes.append(f"label={_text(edge.label, EDGE_WRAP)}")
        tail, head = edge.tail, edge.head
        if tail in chart.clusters:
            attributes.append(f"ltail=cluster_{tail}")
            tail = _anchor(chart, tail)
        if head in chart.clusters:
            attributes.append(f"lhead=cluster_{head}")
            head = _anchor(chart, head)
        out.append(f"  {tail} -> {head} [{', '.join(attributes)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _unlinked(chart: Flowchart, members: list[str]) -> bool:
    inside = set(members)
    return not any(e.tail in inside and e.head in inside for e in chart.edges)


def _anchor(chart: Flowchart, cluster: str) -> str:
    """The node an edge to or from a whole subgraph is drawn to: its middle one."""
    members = chart.clusters[cluster].members
    return members[len(members) // 2] if members else f"{cluster}_anchor"


def _node(name: str, node: Node) -> str:
    attributes = {"label": _text(node.label), **SHAPES[node.shape]}
    return (
        f"{name} ["
        + ", ".join(f'{k}="{v}"' if k != "label" else f"{k}={v}" for k, v in attributes.items())
        + "];"
    )


def render(dot_source: str, out: Path) -> None:
    """Write ``dot_source`` drawn as a PNG to ``out`` (needs Graphviz's ``dot``)."""
    dot = shutil.which("dot")
    if dot is None:
        raise SystemExit("Graphviz's dot is not installed: run scripts/ensure_graphviz.sh")
    subprocess.run(
        [dot, "-Tpng", "-Gdpi=110", "-o", str(out)], input=dot_source.encode(), check=True
    )


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [arg for arg in argv if arg != "--check"]
    readme = Path(paths[0]) if paths else README
    found = list(blocks(readme.read_text(encoding="utf-8")))
    if not found:
        raise SystemExit(f"no '<!-- diagram: docs/NAME.png -->' block in {readme}")
    for picture, source in found:
        dot_source = to_dot(parse(source))
        if not check:
            render(dot_source, readme.parent / picture)
        print(f"{picture}: {'parsed' if check else 'drawn'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
