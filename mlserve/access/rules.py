"""Every access rule of MLServe, in one place.

Two layers. The per-RPC table (``RULES``) says who may call each full method
name at all; a method missing from it is refused (deny by default). Then the
domain asks this module about the resource a call touches: a model's
workspace and visibility, an app's routes, a model's flags.

The visibility rule: a private model that the caller may not see answers
exactly as a model that does not exist (NOT_FOUND, same message), so names
in other workspaces never leak through a difference in codes. A model the
caller may see but not change (a public model of another workspace, or any
model for a viewer) answers PERMISSION_DENIED.

``current_principal`` is set by the call guard for every authenticated call;
``None`` means MLServe's own work (the reconciler, start-up), which is not
subject to these rules.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from mlserve.core.errors import FailedPrecondition, MLServeError, NotFound, PermissionDenied
from mlserve.storage import tables

ADMIN, EDITOR, VIEWER, CONSUMER = "admin", "editor", "viewer", "consumer"
USER_ROLES = (ADMIN, EDITOR, VIEWER)
OWNER, COLLABORATOR = "owner", "collaborator"
PRIVATE, PUBLIC = "private", "public"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (with role and workspaces) or an app's consumer."""

    key_prefix: str
    name: str
    role: str
    user_id: int | None = None
    default_workspace: int | None = None
    # workspace id -> member role (owner / collaborator)
    workspaces: Mapping[int, str] = field(default_factory=dict)
    app: str = ""
    routes: frozenset[str] = frozenset()
    retries: int = 0
    timeout_seconds: float = 0.0

    @property
    def owner(self) -> str:
        """The name the key stands for (what schema 3's Principal called owner)."""
        return self.name

    @property
    def is_admin(self) -> bool:
        """Admins may do everything, in every workspace."""
        return self.role == ADMIN

    @property
    def is_consumer(self) -> bool:
        """An app consumer's key: it may only infer on its app's routed models."""
        return self.role == CONSUMER


current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)


# --- who may call which method ------------------------------------------------


class Who(enum.Enum):
    """The least a caller must be to call a method."""

    ANYONE = "anyone"  # no key (health, reflection)
    ANY_KEY = "any key"  # users and app consumers (inference)
    USER = "user"  # any user, not a consumer
    EDITOR = "editor"  # editors and admins
    ADMIN = "admin"


@dataclass(frozen=True)
class Rule:
    who: Who
    # A write: recorded in the audit trail.
    audited: bool = False


_PUBLIC = Rule(Who.ANYONE)
_READ = Rule(Who.USER)
_USER_WRITE = Rule(Who.USER, audited=True)
_EDIT = Rule(Who.EDITOR, audited=True)
_ADMIN = Rule(Who.ADMIN, audited=True)
_INFER = Rule(Who.ANY_KEY)


def _service(name: str, **methods: Rule) -> dict[str, Rule]:
    return {f"/{name}/{method}": rule for method, rule in methods.items()}


RULES: dict[str, Rule] = {
    **_service("grpc.health.v1.Health", Check=_PUBLIC, Watch=_PUBLIC, List=_PUBLIC),
    # The API's schema is public (it is in the repository): reflection needs
    # no key, so grpcurl can resolve grpc.health.v1.Health/Check without one.
    **_service("grpc.reflection.v1alpha.ServerReflection", ServerReflectionInfo=_PUBLIC),
    **_service("grpc.reflection.v1.ServerReflection", ServerReflectionInfo=_PUBLIC),
    **_service(
        "mlserve.v1.ModelService",
        CreateModel=_EDIT,
        GetModel=_READ,
        ListModels=_READ,
        UpdateModel=_EDIT,
        DeleteModel=_EDIT,
        UploadModelVersion=_EDIT,
        GetUpload=_READ,
        ListUploads=_READ,
        CancelUpload=_EDIT,
        ListModelVersions=_READ,
        GetModelVersion=_READ,
        DeleteModelVersion=_EDIT,
        DownloadModelVersion=_READ,
        UploadArtifact=_EDIT,
        GetArtifact=_READ,
        ListArtifacts=_READ,
        DownloadArtifact=_READ,
    ),
    **_service(
        "mlserve.v1.ServerService",
        RegisterServer=_ADMIN,
        GetServer=_READ,
        ListServers=_READ,
        UpdateServer=_ADMIN,
        DeleteServer=_ADMIN,
    ),
    **_service(
        "mlserve.v1.DeploymentService",
        CreateDeployment=_EDIT,
        GetDeployment=_READ,
        ListDeployments=_READ,
        UpdateDeployment=_EDIT,
        DeleteDeployment=_EDIT,
        LoadModel=_EDIT,
        UnloadModel=_EDIT,
    ),
    **_service(
        "mlserve.v1.PipelineService",
        CreatePipeline=_EDIT,
        GetPipeline=_READ,
        ListPipelines=_READ,
        UpdatePipeline=_EDIT,
        DeletePipeline=_EDIT,
        CopyPipeline=_EDIT,
    ),
    **_service(
        "mlserve.v1.UserService",
        CreateUser=_ADMIN,
        GetUser=_READ,
        ListUsers=_READ,
        UpdateUser=_ADMIN,
        DeleteUser=_ADMIN,
        ActivateUser=_ADMIN,
        DeactivateUser=_ADMIN,
        CreateApiKey=_USER_WRITE,
        ListApiKeys=_READ,
        RevokeApiKey=_USER_WRITE,
    ),
    **_service(
        "mlserve.v1.WorkspaceService",
        CreateWorkspace=_EDIT,
        GetWorkspace=_READ,
        ListWorkspaces=_READ,
        ArchiveWorkspace=_USER_WRITE,
        AddMember=_USER_WRITE,
        RemoveMember=_USER_WRITE,
        ListMembers=_READ,
    ),
    **_service(
        "mlserve.v1.AppService",
        CreateApp=_ADMIN,
        GetApp=_READ,
        ListApps=_READ,
        UpdateApp=_ADMIN,
        DeleteApp=_ADMIN,
        AddRoute=_ADMIN,
        RemoveRoute=_ADMIN,
        ListRoutes=_READ,
        AddConsumer=_ADMIN,
        RemoveConsumer=_ADMIN,
        ListConsumers=_READ,
    ),
    **_service("mlserve.v1.AuditService", ListAuditEvents=Rule(Who.ADMIN)),
    # Consumers see no log; users see the records of the models they may see.
    **_service(
        "mlserve.v1.InferenceLogService",
        ListInferenceLogs=_READ,
        RecordInference=_EDIT,
        GetLoggingPolicy=_READ,
        UpdateLoggingPolicy=_EDIT,
    ),
    **_service(
        "mlserve.v1.AssayService",
        CreateAssay=_EDIT,
        GetAssay=_READ,
        ListAssays=_READ,
        UpdateAssay=_EDIT,
        SetAssayActive=_EDIT,
        DeleteAssay=_EDIT,
        PreviewBaseline=_READ,
        RunAssay=_READ,
        ListAssayResults=_READ,
    ),
    **_service("mlserve.v1.InstanceService", GetInstance=Rule(Who.ANY_KEY)),
    # Users only: an explanation reads the background dataset.
    **_service("mlserve.v1.ExplainService", Explain=_READ),
    **_service(
        "mlserve.v1.TrainingService",
        CreateTrainingJob=_EDIT,
        GetTrainingJob=_READ,
        ListTrainingJobs=_READ,
        CancelTrainingJob=_EDIT,
        WatchTrainingJob=_READ,
    ),
    **_service(
        "mlserve.v1.DatasetService",
        CreateDataset=_EDIT,
        GetDataset=_READ,
        ListDatasets=_READ,
        UpdateDataset=_EDIT,
        DeleteDataset=_EDIT,
        UploadDatasetVersion=_EDIT,
        GetDatasetVersion=_READ,
        ListDatasetVersions=_READ,
        DownloadDatasetVersion=_READ,
        ListDatasetTags=_READ,
        SearchDatasets=_READ,
    ),
    # The gateway: model-level checks happen per call (infer_decision).
    **_service(
        "inference.GRPCInferenceService",
        ServerLive=_INFER,
        ServerReady=_INFER,
        ServerMetadata=_INFER,
        ModelReady=_INFER,
        ModelMetadata=_INFER,
        ModelConfig=_INFER,
        ModelStatistics=_INFER,
        ModelInfer=_INFER,
        ModelStreamInfer=_INFER,
        RepositoryIndex=_INFER,
        RepositoryModelLoad=_EDIT,
        RepositoryModelUnload=_EDIT,
        # Refused by the gateway with UNIMPLEMENTED and the reason.
        SystemSharedMemoryStatus=_INFER,
        SystemSharedMemoryRegister=_INFER,
        SystemSharedMemoryUnregister=_INFER,
        CudaSharedMemoryStatus=_INFER,
        CudaSharedMemoryRegister=_INFER,
        CudaSharedMemoryUnregister=_INFER,
        TraceSetting=_INFER,
        LogSettings=_INFER,
    ),
}

_RANK = {VIEWER: 1, EDITOR: 2, ADMIN: 3}
_NEEDS_RANK = {Who.USER: 1, Who.EDITOR: 2, Who.ADMIN: 3}


def rule_for(method: str) -> Rule | None:
    """The rule for a full method name ("/package.Service/Method"), None when unknown."""
    return RULES.get(method)


def authorize(method: str, principal: Principal) -> None:
    """PermissionDenied unless ``principal`` may call ``method`` at all."""
    rule = RULES.get(method)
    if rule is None:
        raise PermissionDenied(
            f"{method} has no access rule in this MLServe, so it is refused for everyone"
        )
    if rule.who in (Who.ANYONE, Who.ANY_KEY):
        return
    if principal.is_consumer:
        raise PermissionDenied(
            f"{method} is a management call; the key of consumer {principal.name!r} may "
            "only infer on its app's routes"
        )
    if _RANK.get(principal.role, 0) < _NEEDS_RANK[rule.who]:
        raise PermissionDenied(
            f"{method} needs the {rule.who.value} role; user {principal.name!r} is "
            f"{principal.role}: ask an admin"
        )


# --- resources ------------------------------------------------------------------


def caller() -> Principal | None:
    """The principal of the call being served; None for MLServe's own work (startup, the
    reconciler), to which every rule says yes.
    """
    return current_principal.get()


def require_admin(what: str) -> None:
    """PermissionDenied, naming ``what``, unless the caller is an admin (or MLServe itself)."""
    principal = caller()
    if principal is not None and not principal.is_admin:
        raise PermissionDenied(f"{what} is for admins; ask an admin")


def can_see_model(principal: Principal | None, row: Any) -> bool:
    """Whether ``principal`` may see the model (or pipeline) ``row``: admins and MLServe see
    all, consumers their app's routes, users public models and those of their workspaces.
    """
    if principal is None or principal.is_admin:
        return True
    if principal.is_consumer:
        return bool(row.name in principal.routes)
    return row.visibility == PUBLIC or row.workspace_id in principal.workspaces


def visible_models(table: Any = tables.Model) -> pw.Expression | None:
    """A where-clause keeping the models (or pipelines) the caller may see (None: all)."""
    principal = caller()
    if principal is None or principal.is_admin:
        return None
    where: pw.Expression
    if principal.is_consumer:
        where = table.name.in_(sorted(principal.routes))
    else:
        where = (table.visibility == PUBLIC) | table.workspace.in_(sorted(principal.workspaces))
    return where


def visible_model_name_query() -> Any:
    """A query of the names of the models the caller may see (None: every model)."""
    visible = visible_models()
    return None if visible is None else tables.Model.select(tables.Model.name).where(visible)


def visible_name_query() -> Any:
    """A query of the names of the models and pipelines the caller may see (None: all)."""
    models, pipelines = visible_models(tables.Model), visible_models(tables.Pipeline)
    if models is None or pipelines is None:
        return None
    return tables.Model.select(tables.Model.name).where(models) | tables.Pipeline.select(
        tables.Pipeline.name
    ).where(pipelines)


def require_model(name: str) -> None:
    """NotFound unless a model (not a pipeline) is named ``name`` (blocking)."""
    if not tables.Model.select().where(tables.Model.name == name).exists():
        raise not_found(name)


def visible_model_names(names: Iterable[str]) -> set[str]:
    """Of ``names`` (Triton model names), those the caller may see (blocking).

    A name is a model or a pipeline (an ensemble); one that is neither (a
    directory of a shared repository MLServe has no row for) is shown only to
    admins and to MLServe's own work, so nothing outside the catalog leaks.
    """
    wanted = set(names)
    principal = caller()
    if principal is None or principal.is_admin or not wanted:
        return wanted
    seen: set[str] = set()
    for table in (tables.Model, tables.Pipeline):
        query = table.select(table.name).where(table.name.in_(sorted(wanted)))
        where = visible_models(table)
        if where is not None:
            query = query.where(where)
        seen.update(str(row.name) for row in query)
    return seen


def not_found(name: str, noun: str = "model") -> NotFound:
    """The one answer for 'no such model' and 'a model you may not see'."""
    return NotFound(f"{noun} {name!r} does not exist")


def _noun(row: Any) -> str:
    """What ``row`` is called in messages: the rules hold for models, pipelines and
    datasets alike."""
    if isinstance(row, tables.Dataset):
        return "dataset"
    return "pipeline" if isinstance(row, tables.Pipeline) else "model"


def check_model_read(row: Any) -> Any:
    """The model (or pipeline) row, if the caller may see it; NotFound otherwise."""
    if not can_see_model(caller(), row):
        raise not_found(row.name, _noun(row))
    return row


def check_model_write(row: Any) -> Any:
    """The model (or pipeline) row, if the caller may change it (editors of its
    workspace, admins)."""
    principal = caller()
    check_model_read(row)
    if principal is None or principal.is_admin:
        return row
    if principal.role != EDITOR:
        raise PermissionDenied(
            f"changing {_noun(row)} {row.name!r} needs the editor role; user {principal.name!r} is "
            f"{principal.role}"
        )
    if row.workspace_id not in principal.workspaces:
        raise PermissionDenied(
            f"{_noun(row)} {row.name!r} belongs to another workspace; only its members may "
            "change it"
        )
    return row


def can_see_upload(owner_id: int | None) -> bool:
    """Uploads belong to the user who began them: only they and admins see one.

    An upload with no owner (begun before uploads had owners, or whose user
    was deleted) is for admins only.
    """
    principal = caller()
    if principal is None or principal.is_admin:
        return True
    return principal.user_id is not None and owner_id == principal.user_id


def check_download(row: Any) -> None:
    """NotFound when the caller may not see the model; PermissionDenied when its allow_download
    is off.
    """
    check_model_read(row)
    if not row.allow_download:
        raise PermissionDenied(
            f"model {row.name!r} has allow_download=false: its files cannot be downloaded"
        )


def workspace_for_new_model(name: str) -> Any:
    """The workspace a model created now goes to: ``name``, or the caller's default.

    None for MLServe's own work with no workspace named.
    """
    principal = caller()
    row: Any
    if not name:
        if principal is None or principal.default_workspace is None:
            return None
        row = tables.Workspace.get_or_none(tables.Workspace.id == principal.default_workspace)
        if row is None:
            raise FailedPrecondition(
                f"user {principal.name!r} has no default workspace: name one (workspace)"
            )
    else:
        row = tables.Workspace.get_or_none(tables.Workspace.name == name)
        visible = row is not None and (
            principal is None or principal.is_admin or row.id in principal.workspaces
        )
        if not visible:
            raise NotFound(f"workspace {name!r} does not exist")
    if principal is not None and not principal.is_admin and row.id not in principal.workspaces:
        raise PermissionDenied(f"only members of workspace {row.name!r} may add models to it")
    if row.archived:
        raise FailedPrecondition(f"workspace {row.name!r} is archived: it takes no new models")
    return row


def check_workspace_read(row: Any, name: str) -> Any:
    """The workspace ``row`` (found by ``name``), if the caller belongs to it (or is an admin);
    NotFound alike for absent and foreign workspaces.
    """
    principal = caller()
    if row is None or not (
        principal is None or principal.is_admin or row.id in principal.workspaces
    ):
        raise NotFound(f"workspace {name!r} does not exist")
    return row


def check_workspace_owner(row: Any, name: str) -> Any:
    """The workspace ``row``, if the caller owns it (or is an admin); NotFound when it may not
    see it, PermissionDenied for a collaborator.
    """
    principal = caller()
    check_workspace_read(row, name)
    if principal is None or principal.is_admin or principal.workspaces.get(row.id) == OWNER:
        return row
    raise PermissionDenied(f"only owners of workspace {name!r} (or admins) may change it")


def check_own_user(user_name: str, what: str) -> None:
    """Users act on themselves; admins on anyone."""
    principal = caller()
    if principal is None or principal.is_admin or principal.name == user_name:
        return
    raise PermissionDenied(f"{what} of another user is for admins")


# --- inference --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPolicy:
    """What the gateway needs to know about a model to decide a call."""

    name: str
    exists: bool
    workspace_id: int | None = None
    visibility: str = PRIVATE
    allow_remote_inference: bool = True


def model_policy(name: str) -> ModelPolicy:
    """Read a model's policy from the store (blocking)."""
    row: Any = tables.Model.get_or_none(tables.Model.name == name)
    if row is not None:
        return ModelPolicy(name, True, row.workspace_id, row.visibility, row.allow_remote_inference)
    pipeline: Any = tables.Pipeline.get_or_none(tables.Pipeline.name == name)
    if pipeline is not None:  # an ensemble: served by name like a model
        return ModelPolicy(name, True, pipeline.workspace_id, pipeline.visibility)
    return ModelPolicy(name, exists=False)


def infer_decision(principal: Principal, policy: ModelPolicy) -> MLServeError | None:
    """Why ``principal`` may not infer on the model, or None when it may.

    A private model the caller may not see answers as one that does not exist.
    """
    if principal.is_consumer:
        if policy.name not in principal.routes:
            return PermissionDenied(
                f"model {policy.name!r} is not a route of app {principal.app!r}: its consumers "
                "may infer only on the app's routes"
            )
    elif not principal.is_admin and policy.exists:
        visible = policy.visibility == PUBLIC or policy.workspace_id in principal.workspaces
        if not visible:
            return not_found(policy.name)
    if policy.exists and not policy.allow_remote_inference:
        return PermissionDenied(
            f"model {policy.name!r} has allow_remote_inference=false: the gateway does not serve it"
        )
    return None
