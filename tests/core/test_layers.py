"""The house rules of the package, read from the source with ``ast``.

(a) Imports point down the layers: core < storage, triton < access < the
domain (catalog, deploy, gateway, monitor, assays, training) < api < the process
(server, cli, settings, memory). Modules of one layer may import each other;
nothing imports a layer above its own. The client library never imports the
server package; only ``mlserve.cli`` imports the client (for its commands).

(b) Each table has owning modules; only they name ``tables.<Table>``, everyone
else calls them. ``KNOWN_VIOLATIONS`` lists today's exceptions around the
deployment tables, which are being reorganised: it may only shrink, and an
entry that is no longer a violation fails the test until it is removed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mlserve"
CLIENT = ROOT / "clients" / "python" / "mlserve_client"

LAYERS: dict[str, int] = {
    "core": 0,
    "storage": 1,
    "triton": 1,
    "access": 2,
    "catalog": 3,
    "deploy": 3,
    "gateway": 3,
    "monitor": 3,
    "assays": 3,  # with monitor: drift assays over the inference log
    "training": 3,
    "api": 4,
    "server": 5,
    "cli": 5,
    "settings": 5,
    "memory": 5,
    "workers": 5,
    "__main__": 5,
}

# Table -> the modules that may name it. Several owners are one concept split
# in modules (a model and its versions; the upload a commit marks committed).
OWNERS: dict[str, set[str]] = {
    "SchemaInfo": {"storage.tables"},
    "Setting": {"storage.tables"},
    # access.tokens: an OIDC sign-in provisions its user and memberships
    "Workspace": {
        "access.workspaces",
        "access.users",
        "access.keys",
        "access.rules",
        "access.tokens",
    },
    "User": {"access.users", "access.workspaces", "access.keys", "access.tokens"},
    "OidcIdentity": {"access.tokens"},
    "WorkspaceMember": {"access.workspaces", "access.users", "access.keys", "access.tokens"},
    "App": {"access.apps"},
    "AppRoute": {"access.apps", "access.keys"},  # keys: a consumer's routes
    "AppConsumer": {"access.apps", "access.users"},  # users: consumers' keys
    "ApiKey": {"access.keys", "access.users"},
    "AuditEvent": {"access.audit"},
    # access.rules reads a model's (or pipeline's) workspace and visibility: the rule
    # every read goes through; catalog.namespace keeps models and pipelines apart.
    "Model": {"catalog.models", "access.rules", "catalog.namespace"},
    "ModelTag": {"catalog.models", "catalog.model_metadata"},
    "ModelLabel": {"catalog.models", "catalog.model_metadata"},
    # datasets: the model versions that name a dataset as their training data
    "ModelVersion": {"catalog.versions", "catalog.models", "catalog.datasets"},
    "Upload": {"catalog.uploads", "catalog.versions", "catalog.artifacts", "catalog.datasets"},
    "Blob": {"storage.blobs", "catalog.artifacts", "catalog.datasets"},  # size and sha256
    "BlobPin": {"storage.blobs"},
    # S3 multipart parts of a staged file: only the S3 repository records and reads them
    "UploadPart": {"storage.s3"},
    "VersionFile": {"catalog.versions", "storage.blobs"},  # blobs: what uses a blob
    "Artifact": {"catalog.artifacts", "storage.blobs"},  # blobs: what uses a blob
    # Datasets follow the rules of models (access.rules); a model version shows the
    # name and version of its training dataset (catalog.versions).
    "Dataset": {"catalog.datasets", "access.rules", "catalog.versions"},
    "DatasetTag": {"catalog.datasets"},
    "DatasetVersion": {"catalog.datasets", "catalog.versions"},
    "DatasetFile": {"catalog.datasets", "storage.blobs"},  # blobs: what uses a blob
    "Pipeline": {"catalog.pipelines", "access.rules", "catalog.namespace"},
    "PipelineVersion": {"catalog.pipelines"},
    # deploy.targets: a target is a deployment on a server (its rows join the server's).
    "Server": {"deploy.fleet", "deploy.targets"},
    # One deployment concept for models and pipelines: the lifecycle and the
    # targets it shares (placement, per-server records).
    "Deployment": {"deploy.lifecycle", "deploy.targets"},
    "DeploymentTarget": {"deploy.lifecycle", "deploy.targets"},
    "DeploymentMember": {"deploy.lifecycle", "deploy.targets"},
    "InferenceCount": {"gateway.stats"},
    # The pipeline deployment tables before schema 12, only for the migrations.
    **{
        f"_Unfolded{name}": {"storage.tables"}
        for name in (
            "Model",
            "Pipeline",
            "Server",
            "PipelineDeployment",
            "PipelineMember",
            "PipelineTarget",
        )
    },
    "LoggingPolicy": {"monitor.policy"},
    "Assay": {"assays.service", "assays.scheduler"},
    "AssayResult": {"assays.service", "assays.scheduler"},
    "TrainingJob": {"training.store"},
    "TrainingJobLogLine": {"training.store"},
    "BusyMark": {"deploy.busy"},
}

# (module, table): today's references to the deployment-side tables from
# outside their owner, and the deploy and gateway modules' own reaches into the
# catalog, all being reorganised by the deployment lifecycle work. This set may
# only shrink: fix a violation, then remove its entry.
KNOWN_VIOLATIONS: set[tuple[str, str]] = {
    ("deploy.fleet", "Workspace"),
    ("deploy.tenancy", "Model"),
    ("gateway.router", "Model"),
    ("gateway.router", "Pipeline"),
}


def modules(root: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join((prefix, *parts)), path


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in the file, TYPE_CHECKING ones included."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def layer(module: str) -> str:
    """``mlserve.catalog.models`` -> ``catalog``; ``mlserve.cli`` -> ``cli``."""
    return module.split(".")[1]


def test_every_package_and_module_has_a_layer() -> None:
    unplaced = {layer(name) for name, _ in modules(PACKAGE, "mlserve") if name != "mlserve"}
    assert unplaced <= set(LAYERS), f"give these a place in LAYERS: {unplaced - set(LAYERS)}"


def test_imports_point_down_the_layers() -> None:
    upward = []
    for name, path in modules(PACKAGE, "mlserve"):
        if name == "mlserve":
            continue
        own = LAYERS[layer(name)]
        for line, target in imported(path):
            if target.startswith("mlserve_client") and name != "mlserve.cli":
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            if not target.startswith("mlserve.") or target == "mlserve":
                continue
            if LAYERS[layer(target)] > own:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target} (a layer up)")
    assert not upward, "\n".join(upward)


def test_the_client_library_never_imports_the_server() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for _, path in modules(CLIENT, "mlserve_client")
        for line, target in imported(path)
        if target == "mlserve" or target.startswith("mlserve.")
    ]
    assert not found, "\n".join(found)


TABLE = re.compile(r"\btables\.([A-Z]\w*)")


def table_references() -> set[tuple[str, str]]:
    """(module, table) for every ``tables.<Table>`` outside the schema module."""
    found = set()
    for name, path in modules(PACKAGE, "mlserve"):
        module = name.removeprefix("mlserve.")
        if module == "storage.tables":
            continue
        found |= {(module, table) for table in TABLE.findall(path.read_text())}
    return found


def test_every_table_has_owners() -> None:
    schema = (PACKAGE / "storage" / "tables.py").read_text()
    declared = set(re.findall(r"^class (\w+)\(BaseModel\):", schema, re.M))
    assert declared == set(OWNERS), (
        f"tables without owners: {declared - set(OWNERS)}; "
        f"owners of tables that do not exist: {set(OWNERS) - declared}"
    )


def test_only_the_owners_name_a_table() -> None:
    violations = {(module, table) for module, table in table_references()
                  if module not in OWNERS.get(table, set())}  # fmt: skip
    new = sorted(violations - KNOWN_VIOLATIONS)
    assert not new, "call the owning module instead of naming its table:\n" + "\n".join(
        f"  {module} names tables.{table} (owners: {', '.join(sorted(OWNERS[table]))})"
        for module, table in new
    )
    fixed = sorted(KNOWN_VIOLATIONS - violations)
    assert not fixed, "no longer violations; remove them from KNOWN_VIOLATIONS:\n" + "\n".join(
        f"  {module} -> {table}" for module, table in fixed
    )
