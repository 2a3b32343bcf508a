"""How one MLServe process is configured: every option of ``mlserve serve``.

Each field has its one default here and is read, strongest first, from its
``mlserve serve`` flag, its ``MLSERVE_*`` environment variable, or that
default. ``mlserve/cli.py`` builds the serve flags from these fields, and the
README's table is this module's ``markdown_table()`` (a test compares them), so
neither repeats a default or a variable name. ``python -m mlserve.settings``
prints the table.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mlserve.storage.db import POSTGRESQL_SCHEMES
from mlserve.storage.s3 import S3Location
from mlserve.training.sandboxed import JobLimits

_JOB_LIMITS = JobLimits()  # the training limits' defaults: the sandbox's own
# One job's log at most (lines times bytes per line): it is kept in the database.
MAX_JOB_LOG_BYTES = 256 * 1024**2

GRPC_MESSAGE_LIMIT = 2**31 - 1  # gRPC's own ceiling, and what Triton accepts


class SettingError(ValueError):
    """A value MLServe cannot run with; the message says what to give instead."""


# --- parsing one value (a flag's or an environment variable's text) ----------


def parse_path(text: str) -> Path:
    if not text:
        raise SettingError("a path is required")
    return Path(text).expanduser()


def _parse_address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingError("give host:port, e.g. 127.0.0.1:50051 (port 0 to 65535)")
    return text


def parse_instance_name(text: str) -> str:
    name = text.strip()
    if not name or len(name) > 253:
        raise SettingError("give a name of 1 to 253 characters")
    return name


def parse_listen(text: str) -> str:
    return _parse_address(text)


def parse_metrics_listen(text: str) -> str:
    """host:port, or ``off``."""
    return "" if text.lower() == "off" else _parse_address(text)


def parse_database(text: str) -> str:
    scheme = text.partition("://")[0]
    if scheme != "sqlite" and scheme not in POSTGRESQL_SCHEMES:
        raise SettingError("give sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME")
    return text


def parse_storage(text: str) -> Path | S3Location:
    """A local directory, or ``s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]``."""
    if text.startswith("s3://"):
        try:
            return S3Location.parse(text)
        except ValueError as error:
            raise SettingError(str(error)) from None
    if "://" in text:
        raise SettingError("give a local directory or s3://BUCKET[/PREFIX]")
    return parse_path(text)


def parse_workers(text: str) -> int:
    """A number of serving processes, or ``auto``: one per core but one (at least 1)."""
    if text.strip().lower() == "auto":
        return max(1, available_cores() - 1)
    try:
        workers = int(text)
    except ValueError:
        raise SettingError("give a whole number of processes, e.g. 2, or auto") from None
    if workers < 1:
        raise SettingError(f"give at least 1 process (got {workers}), or auto")
    return workers


def available_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class WorkerSlot:
    """Which of ``--workers`` processes this one is, as the parent process says."""

    index: int
    count: int
    ready_fd: int
    """A pipe's write end: the worker writes its port there once it serves."""

    @property
    def primary(self) -> bool:
        """Worker 0 runs what must run once: the embedded Triton, the reconciler,
        the assay scheduler, sweeps and retention, and the merged /metrics."""
        return self.index == 0


def parse_worker_slot(text: str) -> WorkerSlot:
    """``INDEX/COUNT:FD``, written by the parent of ``--workers`` processes."""
    try:
        place, _, fd = text.partition(":")
        index, _, count = place.partition("/")
        slot = WorkerSlot(int(index), int(count), int(fd))
    except ValueError:
        raise SettingError("set by mlserve serve --workers only: INDEX/COUNT:FD") from None
    if not 0 <= slot.index < slot.count:
        raise SettingError("set by mlserve serve --workers only: INDEX/COUNT:FD")
    return slot


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_issuer(text: str) -> str:
    """An OpenID Connect issuer URL: https, or http on loopback (a test issuer)."""
    issuer = text.strip()
    try:
        url = urllib.parse.urlsplit(issuer)
        host = url.hostname
    except ValueError:
        host = None
    if host is None or url.scheme not in ("https", "http"):
        raise SettingError("give the issuer's URL, e.g. https://id.example.com/realms/acme")
    if url.scheme == "http" and host not in _LOOPBACK_HOSTS:
        raise SettingError("an issuer on another host must use https://")
    return issuer


def parse_claim(text: str) -> str:
    """A claim's name, or a dotted path into nested claims (``realm_access.roles``)."""
    claim = text.strip()
    if not claim or any(not part for part in claim.split(".")):
        raise SettingError("give a claim name such as sub, or a path such as realm_access.roles")
    return claim


def parse_optional_claim(text: str) -> str:
    """A claim, or ``off``."""
    return "" if text.lower() == "off" else parse_claim(text)


def parse_backends(text: str) -> tuple[str, ...]:
    names = tuple(sorted({name.strip() for name in text.split(",") if name.strip()}))
    if not names or not all(name.replace("_", "").isalnum() for name in names):
        raise SettingError("give backend names separated by commas, e.g. python,onnxruntime")
    return names


def parse_labels(text: str) -> tuple[str, ...]:
    """Comma-separated runner labels: letters, digits, ``-``, ``_``, ``.``, ``=``."""
    labels = tuple(sorted({label.strip() for label in text.split(",") if label.strip()}))
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.=")
    bad = [label for label in labels if not set(label) <= allowed or len(label) > 63]
    if bad:
        raise SettingError(
            f"{bad[0]!r} is not a label: give labels of letters, digits, -, _, . or = "
            "(at most 63 characters) separated by commas, e.g. cpu,local"
        )
    return labels


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SettingError("give a whole number, e.g. 1") from None
    if value < 1:
        raise SettingError("give a whole number of at least 1")
    return value


def parse_size(text: str) -> int:
    """Bytes, with an optional k/M/G/T suffix (powers of 1024): ``64G``, ``512k``."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    number, unit = (text[:-1], units[text[-1].lower()]) if text[-1:].lower() in units else (text, 1)
    try:
        value = float(number)
    except ValueError:
        raise SettingError(
            "give a size in bytes, optionally with k, M, G or T (e.g. 64G)"
        ) from None
    if not math.isfinite(value) or value < 1:
        raise SettingError("give a size of at least 1 byte")
    return int(value * unit)


def parse_model_memory(text: str) -> int:
    """A size (``parse_size``), or ``auto`` (0: read from the host at start)."""
    return 0 if text.lower() == "auto" else parse_size(text)


def parse_headroom(text: str) -> float:
    """A fraction from 0 to 0.9, or a percentage from 0% to 90%."""
    percent = text.endswith("%")
    try:
        value = float(text[:-1] if percent else text) / (100 if percent else 1)
    except ValueError:
        raise SettingError("give a fraction such as 0.1 or a percentage such as 10%") from None
    if not math.isfinite(value) or not 0 <= value <= 0.9:
        raise SettingError("give a headroom from 0 to 0.9 (0% to 90%)")
    return value


def parse_milliseconds(text: str) -> float:
    """Milliseconds, 0 or more (0: off)."""
    try:
        value = float(text)
    except ValueError:
        raise SettingError("give a number of milliseconds, e.g. 50 (0: off)") from None
    if not math.isfinite(value) or value < 0:
        raise SettingError("give a number of milliseconds that is 0 (off) or more")
    return value


def parse_message_size(text: str) -> int:
    size = parse_size(text)
    if size > GRPC_MESSAGE_LIMIT:
        raise SettingError(f"gRPC carries at most {GRPC_MESSAGE_LIMIT} bytes in one message")
    return size


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingError("give a number of seconds, e.g. 2 or 0.5") from None
    if not math.isfinite(value) or value < 0:
        raise SettingError("give a number of seconds that is 0 or more")
    return value


def parse_duration(text: str) -> float:
    """Seconds, with an optional s/m/h/d suffix: ``24h``, ``90m``, ``30s``, ``7d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1].lower()]) if text[-1:].lower() in units else (text, 1)
    try:
        value = float(number) * unit
    except ValueError:
        raise SettingError("give a duration such as 24h, 90m or 30s (or seconds)") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingError("give a duration above 0, such as 24h")
    return value


def parse_interval(text: str) -> float:
    value = parse_seconds(text)
    if value == 0:
        raise SettingError("give a number of seconds above 0")
    return value


def parse_arguments(text: str) -> tuple[str, ...]:
    """Words split the way a shell splits them: ``--log-verbose=1 --exit-timeout-secs=30``."""
    try:
        return tuple(shlex.split(text))
    except ValueError as error:
        raise SettingError(f"give arguments as a shell would take them ({error})") from None


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise SettingError("give true or false (also 1/0, yes/no, on/off)")


Number = TypeVar("Number", int, float)


def _ranged(
    parse: Callable[[str], Number], low: Number, high: Number, what: str
) -> Callable[[str], Number]:
    """``parse``, refusing a value outside ``low``..``high``: "TEXT is not WHAT" (which
    says the range)."""

    def parse_within(text: str) -> Number:
        value = parse(text)
        if not low <= value <= high:
            raise SettingError(f"{text!r} is not {what}")
        return value

    return parse_within


_WEEK = 7 * 86400
# The training job limits: values past these are mistakes, not policies.
parse_job_cpu_time = _ranged(
    lambda text: math.ceil(parse_duration(text)), 1, _WEEK, "a CPU time from 1s to 7d"
)
parse_job_wall_time = _ranged(parse_duration, 1.0, _WEEK, "a wall-clock time from 1s to 7d")
# Under 128 MiB of address space Python cannot start with its libraries.
parse_job_memory = _ranged(
    parse_size, 128 * 1024**2, 64 * 1024**4, "a memory size from 128M to 64T"
)
parse_job_file_size = _ranged(parse_size, 1024**2, 64 * 1024**4, "a file size from 1M to 64T")
# The sandbox and the script need a few.
parse_job_processes = _ranged(parse_count, 4, 32768, "a number of processes from 4 to 32768")
parse_job_log_lines = _ranged(parse_count, 10, 100_000, "a number of log lines from 10 to 100000")
parse_job_log_line_bytes = _ranged(parse_size, 256, 1024**2, "a line length from 256 to 1M bytes")


# --- the settings -------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """How a field is given: its environment variable, its help and its parser.

    The flag is the field's name with dashes (``--max-upload-bytes``); a bool
    field gets ``--NAME`` and ``--no-NAME``.
    """

    env: str
    help: str
    parse: Callable[[str], Any]
    metavar: str = ""
    shown_default: str = ""
    """The default as --help and the README say it, when its value does not say it well."""
    env_aliases: tuple[str, ...] = ()
    """Other variables read, weaker than ``env``, for the names people already use."""
    hidden: bool = False
    """Left out of --help and the README (benchmark switches)."""
    repeatable: bool = False
    """The flag may be given several times, the variable may list values with commas:
    the field is a tuple of parsed values."""


def _given_by(option: Option) -> dict[str, Option]:
    """A field's metadata: how it is given."""
    return {"option": option}


@dataclass(frozen=True)
class Settings:
    home: Path = field(
        default=Path("~/.mlserve").expanduser(),
        metadata=_given_by(
            Option(
                "MLSERVE_HOME",
                "state directory: database, admin.key, the embedded Triton's log",
                parse_path,
                "DIR",
                shown_default="~/.mlserve",
            )
        ),
    )
    instance_name: str = field(
        default="",
        metadata=_given_by(
            Option(
                "MLSERVE_INSTANCE_NAME",
                "this instance's name, as InstanceService/GetInstance tells callers",
                parse_instance_name,
                "NAME",
                shown_default="the host name",
            )
        ),
    )
    listen: str = field(
        default="127.0.0.1:50051",
        metadata=_given_by(
            Option(
                "MLSERVE_LISTEN",
                "host:port of every gRPC service; loopback unless told otherwise",
                parse_listen,
                "HOST:PORT",
            )
        ),
    )
    database: str = field(
        default="",
        metadata=_given_by(
            Option(
                "MLSERVE_DATABASE_URL",
                "sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME"
                "[?max_connections=N&timeout=S]; give a password here in the environment, "
                "never on the command line",
                parse_database,
                "URL",
                shown_default="sqlite:///<home>/mlserve.db",
                env_aliases=("MLSERVE_DATABASE",),
            )
        ),
    )
    storage: Path | S3Location | None = field(
        default=None,
        metadata=_given_by(
            Option(
                "MLSERVE_STORAGE",
                "directory of the model repository, uploads in progress and stored file "
                "contents (one file system: versions hard-link their contents), or "
                "s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME] to keep the repository and "
                "contents in a bucket (uploads are staged in <home>; credentials and endpoint "
                "from the standard AWS_* variables)",
                parse_storage,
                "DIR|S3URL",
                shown_default="<home>",
            )
        ),
    )
    workers: int = field(
        default=1,
        metadata=_given_by(
            Option(
                "MLSERVE_WORKERS",
                "processes serving the one port (SO_REUSEPORT), or auto (cores - 1, at "
                "least 1); worker 0 runs the embedded Triton and the background work",
                parse_workers,
                "N|auto",
            )
        ),
    )
    oidc_issuer: tuple[str, ...] = field(
        default=(),
        metadata=_given_by(
            Option(
                "MLSERVE_OIDC_ISSUER",
                "OpenID Connect issuer whose tokens sign callers in beside API keys; "
                "repeat the flag (or separate with commas) for several; with --oidc-audience",
                parse_issuer,
                "URL",
                shown_default="none",
                repeatable=True,
            )
        ),
    )
    oidc_audience: str = field(
        default="",
        metadata=_given_by(
            Option(
                "MLSERVE_OIDC_AUDIENCE",
                "audience (aud) every OIDC token must name: MLServe's client id at the issuer",
                str.strip,
                "AUDIENCE",
                shown_default="none",
            )
        ),
    )
    oidc_user_claim: str = field(
        default="sub",
        metadata=_given_by(
            Option(
                "MLSERVE_OIDC_USER_CLAIM",
                "claim naming the MLServe user a token signs in (created on first sign-in), "
                "e.g. preferred_username",
                parse_claim,
                "CLAIM",
            )
        ),
    )
    oidc_roles_claim: str = field(
        default="realm_access.roles",
        metadata=_given_by(
            Option(
                "MLSERVE_OIDC_ROLES_CLAIM",
                "claim (dotted path) listing the caller's roles: the highest of admin, editor, "
                "viewer found is the user's role, none of them means viewer; e.g. "
                "resource_access.mlserve.roles or groups",
                parse_claim,
                "CLAIM",
            )
        ),
    )
    oidc_workspaces_claim: str = field(
        default="",
        metadata=_given_by(
            Option(
                "MLSERVE_OIDC_WORKSPACES_CLAIM",
                "claim (dotted path, e.g. groups) whose values naming existing workspaces make "
                "the user a collaborator there at sign-in",
                parse_optional_claim,
                "CLAIM",
                shown_default="off",
            )
        ),
    )
    oidc_fetch_timeout: float = field(
        default=5.0,
        metadata=_given_by(
            Option(
                "MLSERVE_OIDC_FETCH_TIMEOUT",
                "seconds a fetch of an issuer's discovery document or keys may take",
                parse_interval,
                "SECONDS",
            )
        ),
    )
    embedded_triton: bool = field(
        default=True,
        metadata=_given_by(
            Option(
                "MLSERVE_EMBEDDED_TRITON",
                "start a Triton on the repository and register it as 'local'; without it "
                "only registered servers are used",
                parse_bool,
            )
        ),
    )
    unsafe_shared_user: bool = field(
        default=False,
        metadata=_given_by(
            Option(
                "MLSERVE_UNSAFE_SHARED_USER",
                "start the embedded Triton even where no sandbox (bubblewrap) can confine "
                "it: model code then runs as MLServe's user and can read its keys and database",
                parse_bool,
            )
        ),
    )
    allowed_backends: tuple[str, ...] = field(
        default=(),
        metadata=_given_by(
            Option(
                "MLSERVE_ALLOWED_BACKENDS",
                "comma-separated Triton backends an uploaded config.pbtxt may name "
                "(INVALID_ARGUMENT for others), e.g. python,onnxruntime",
                parse_backends,
                "LIST",
                shown_default="the bundled Triton's (python)",
            )
        ),
    )
    triton_args: tuple[str, ...] = field(
        default=(),
        metadata=_given_by(
            Option(
                "MLSERVE_TRITON_ARGS",
                "more tritonserver arguments for the embedded Triton, split like a shell's; "
                "give the flag with '=' (--triton-args='--log-verbose=1')",
                parse_arguments,
                "ARGS",
                shown_default="none",
            )
        ),
    )
    triton_liveness_interval: float = field(
        default=5.0,
        metadata=_given_by(
            Option(
                "MLSERVE_TRITON_LIVENESS_INTERVAL",
                "seconds between liveness probes (ServerLive) of the embedded Triton; 0: "
                "no probes, so a hung Triton is never restarted",
                parse_seconds,
                "SECONDS",
            )
        ),
    )
    triton_liveness_timeout: float = field(
        default=2.0,
        metadata=_given_by(
            Option(
                "MLSERVE_TRITON_LIVENESS_TIMEOUT",
                "seconds one liveness probe of the embedded Triton may take before it fails",
                parse_interval,
                "SECONDS",
            )
        ),
    )
    triton_liveness_failures: int = field(
        default=3,
        metadata=_given_by(
            Option(
                "MLSERVE_TRITON_LIVENESS_FAILURES",
                "failed liveness probes in a row after which the embedded Triton counts as "
                "hung: its process group is killed (SIGKILL) and Triton restarted",
                parse_count,
                "N",
            )
        ),
    )
    max_upload_bytes: int = field(
        default=64 * 1024**3,
        metadata=_given_by(
            Option(
                "MLSERVE_MAX_UPLOAD_BYTES",
                "largest model version accepted (RESOURCE_EXHAUSTED above); k/M/G/T suffixes",
                parse_size,
                "SIZE",
                shown_default="64G",
            )
        ),
    )
    max_staging_bytes: int = field(
        default=128 * 1024**3,
        metadata=_given_by(
            Option(
                "MLSERVE_MAX_STAGING_BYTES",
                "staging one user's unfinished uploads may fill together (RESOURCE_EXHAUSTED "
                "above); k/M/G/T suffixes",
                parse_size,
                "SIZE",
                shown_default="128G",
            )
        ),
    )
    upload_expiry: float = field(
        default=24 * 3600.0,
        metadata=_given_by(
            Option(
                "MLSERVE_UPLOAD_EXPIRY",
                "how long an unfinished upload may sit untouched before it is deleted with "
                "its staged bytes; s/m/h/d suffixes",
                parse_duration,
                "DURATION",
                shown_default="24h",
            )
        ),
    )
    load_timeout: float = field(
        default=120.0,
        metadata=_given_by(
            Option(
                "MLSERVE_LOAD_TIMEOUT",
                "how long loading a deployment on one Triton may take before it is FAILED "
                "(a deployment's load_timeout_seconds overrides it); s/m/h/d suffixes",
                parse_duration,
                "DURATION",
                shown_default="2m",
            )
        ),
    )
    training_labels: tuple[str, ...] = field(
        default=("local",),
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_LABELS",
                "comma-separated labels of the local training runner; a job asking for "
                "another label is FAILED_PRECONDITION, e.g. cpu,local",
                parse_labels,
                "LIST",
                shown_default="local",
            )
        ),
    )
    training_allow_network: bool = field(
        default=False,
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_ALLOW_NETWORK",
                "let a training job that asks for it (network: true) use the host's network; "
                "without this such a job is FAILED_PRECONDITION and no job has any network",
                parse_bool,
            )
        ),
    )
    training_concurrency: int = field(
        default=1,
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_CONCURRENCY",
                "training jobs the local runner runs at once",
                parse_count,
                "N",
            )
        ),
    )
    training_queue: int = field(
        default=16,
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_QUEUE",
                "training jobs waiting for the local runner at most; more are RESOURCE_EXHAUSTED",
                parse_count,
                "N",
            )
        ),
    )
    training_cpu_time: int = field(
        default=_JOB_LIMITS.cpu_seconds,
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_CPU_TIME",
                "CPU time one training job may use (RLIMIT_CPU; then it is killed and "
                "FAILED), 1s to 7d; s/m/h/d suffixes",
                parse_job_cpu_time,
                "DURATION",
                shown_default="10m",
            )
        ),
    )
    training_wall_time: float = field(
        default=_JOB_LIMITS.wall_seconds,
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_WALL_TIME",
                "how long one training job may run, queueing not counted (then its process "
                "group is killed and it is FAILED), 1s to 7d; s/m/h/d suffixes",
                parse_job_wall_time,
                "DURATION",
                shown_default="30m",
            )
        ),
    )
    training_memory: int = field(
        default=_JOB_LIMITS.memory_bytes,
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_MEMORY",
                "address space of each process of a training job (RLIMIT_AS), 128M to 64T; "
                "k/M/G/T suffixes",
                parse_job_memory,
                "SIZE",
                shown_default="4G",
            )
        ),
    )
    training_file_size: int = field(
        default=_JOB_LIMITS.file_bytes,
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_FILE_SIZE",
                "largest file a training job may write, output files included "
                "(RLIMIT_FSIZE), 1M to 64T; k/M/G/T suffixes",
                parse_job_file_size,
                "SIZE",
                shown_default="1G",
            )
        ),
    )
    training_processes: int = field(
        default=_JOB_LIMITS.processes,
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_PROCESSES",
                "processes one training job may have at once (a pids cgroup where the host "
                "offers one), 4 to 32768",
                parse_job_processes,
                "N",
            )
        ),
    )
    training_log_lines: int = field(
        default=_JOB_LIMITS.log_lines,
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_LOG_LINES",
                "a training job's log lines kept (the newest; in the database), 10 to 100000",
                parse_job_log_lines,
                "N",
            )
        ),
    )
    training_log_line_bytes: int = field(
        default=_JOB_LIMITS.log_line_bytes,
        metadata=_given_by(
            Option(
                "MLSERVE_TRAINING_LOG_LINE_BYTES",
                "a training job's log line is cut (and marked so) past this, 256 to 1M; "
                "lines times bytes at most 256M; k/M suffixes",
                parse_job_log_line_bytes,
                "SIZE",
                shown_default="8k",
            )
        ),
    )
    model_memory: int = field(
        default=0,
        metadata=_given_by(
            Option(
                "MLSERVE_MODEL_MEMORY",
                "host memory the embedded Triton offers models (its capacity); auto reads "
                "MemAvailable from /proc/meminfo at start; k/M/G/T suffixes",
                parse_model_memory,
                "SIZE",
                shown_default="auto",
            )
        ),
    )
    placement_headroom: float = field(
        default=0.10,
        metadata=_given_by(
            Option(
                "MLSERVE_PLACEMENT_HEADROOM",
                "share of each server's model memory that placement leaves free (0 to 0.9, "
                "or 0% to 90%)",
                parse_headroom,
                "FRACTION",
                shown_default="10%",
            )
        ),
    )
    scale_up_queue_ms: float = field(
        default=50.0,
        metadata=_given_by(
            Option(
                "MLSERVE_SCALE_UP_QUEUE_MS",
                "an on-demand model below max_copies gains a copy when, over one health "
                "interval, its mean Triton queue time per request exceeds this on every "
                "loaded copy; 0: never",
                parse_milliseconds,
                "MS",
            )
        ),
    )
    max_message_bytes: int = field(
        default=GRPC_MESSAGE_LIMIT,
        metadata=_given_by(
            Option(
                "MLSERVE_MAX_MESSAGE_BYTES",
                "largest single gRPC message accepted or sent; 2G-1 is gRPC's limit and what "
                "Triton accepts",
                parse_message_size,
                "SIZE",
                shown_default="2G-1",
            )
        ),
    )
    metrics_listen: str = field(
        default="",
        metadata=_given_by(
            Option(
                "MLSERVE_METRICS_LISTEN",
                "host:port to serve Prometheus metrics on over HTTP",
                parse_metrics_listen,
                "HOST:PORT",
                shown_default="off",
            )
        ),
    )
    health_interval: float = field(
        default=2.0,
        metadata=_given_by(
            Option(
                "MLSERVE_HEALTH_INTERVAL",
                "seconds between health checks of every Triton",
                parse_interval,
                "SECONDS",
            )
        ),
    )
    shutdown_grace: float = field(
        default=10.0,
        metadata=_given_by(
            Option(
                "MLSERVE_SHUTDOWN_GRACE",
                "seconds in-flight calls get to finish on SIGTERM/SIGINT",
                parse_seconds,
                "SECONDS",
            )
        ),
    )
    tls_cert: Path | None = field(
        default=None,
        metadata=_given_by(
            Option(
                "MLSERVE_TLS_CERT",
                "PEM certificate (chain): serve TLS on the same port; with --tls-key",
                parse_path,
                "PEM",
                shown_default="none (plaintext)",
            )
        ),
    )
    tls_key: Path | None = field(
        default=None,
        metadata=_given_by(
            Option("MLSERVE_TLS_KEY", "PEM private key of --tls-cert", parse_path, "PEM", "none")
        ),
    )
    log_queue_size: int = field(
        default=10_000,
        metadata=_given_by(
            Option(
                "MLSERVE_LOG_QUEUE_SIZE",
                "inference log: calls waiting for the writer at most; more are dropped and "
                "counted, never waited for",
                parse_count,
                "N",
            )
        ),
    )
    log_flush_interval: float = field(
        default=1.0,
        metadata=_given_by(
            Option(
                "MLSERVE_LOG_FLUSH_INTERVAL",
                "inference log: seconds between writes, the most a SIGKILL can lose",
                parse_interval,
                "SECONDS",
            )
        ),
    )
    log_retention_seconds: float = field(
        default=7 * 24 * 3600.0,
        metadata=_given_by(
            Option(
                "MLSERVE_LOG_RETENTION_SECONDS",
                "inference log: files older than this are deleted",
                parse_interval,
                "SECONDS",
                shown_default="604800 (7 days)",
            )
        ),
    )
    log_storage: Path | S3Location | None = field(
        default=None,
        metadata=_given_by(
            Option(
                "MLSERVE_LOG_STORAGE",
                "inference log: the directory of its Parquet files, or s3://BUCKET[/PREFIX]"
                "[?endpoint=URL&region=NAME] to write them to a bucket (default: <home>/logs, "
                "or the logs/ prefix of --storage's bucket when --storage is s3://)",
                parse_storage,
                "DIR|S3URL",
                shown_default="<home>/logs",
            )
        ),
    )
    log_retention_bytes: int = field(
        default=10 * 1024**3,
        metadata=_given_by(
            Option(
                "MLSERVE_LOG_RETENTION_BYTES",
                "inference log: per model, the oldest files beyond this size are deleted",
                parse_size,
                "SIZE",
                shown_default="10G",
            )
        ),
    )
    worker_slot: WorkerSlot | None = field(
        default=None,
        metadata=_given_by(
            Option(
                "MLSERVE_WORKER_SLOT",
                # Set by the parent of --workers N for each process it starts.
                "internal: which of the --workers processes this is",
                parse_worker_slot,
                hidden=True,
            )
        ),
    )
    bench_anonymous_gateway: bool = field(
        default=False,
        metadata=_given_by(
            Option(
                "MLSERVE_BENCH_ANONYMOUS_GATEWAY",
                # bench/auth.py compares keyed and keyless gateway calls in one process:
                # gateway calls that send no key at all are then served unauthenticated
                # (calls with a key are checked as always). Loopback only.
                "benchmark only: serve keyless gateway calls",
                parse_bool,
                hidden=True,
            )
        ),
    )

    def __post_init__(self) -> None:
        if self.training_log_lines * self.training_log_line_bytes > MAX_JOB_LOG_BYTES:
            raise SettingError(
                f"--training-log-lines {self.training_log_lines} times --training-log-line-bytes "
                f"{self.training_log_line_bytes} keeps more than {MAX_JOB_LOG_BYTES // 1024**2} "
                "MiB of log per job (MLSERVE_TRAINING_LOG_LINES, "
                "MLSERVE_TRAINING_LOG_LINE_BYTES): lower one of them"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingError(
                "--tls-cert and --tls-key (MLSERVE_TLS_CERT, MLSERVE_TLS_KEY) go together"
            )
        if self.oidc_issuer and not self.oidc_audience:
            raise SettingError(
                "--oidc-issuer needs --oidc-audience (MLSERVE_OIDC_AUDIENCE): the audience "
                "tokens for this MLServe carry, so tokens for other services are refused"
            )

    @property
    def training_limits(self) -> JobLimits:
        """What one training job may use."""
        return JobLimits(
            cpu_seconds=self.training_cpu_time,
            memory_bytes=self.training_memory,
            file_bytes=self.training_file_size,
            processes=self.training_processes,
            wall_seconds=self.training_wall_time,
            log_lines=self.training_log_lines,
            log_line_bytes=self.training_log_line_bytes,
        )

    @property
    def upload_sweep_interval(self) -> float:
        """Seconds between sweeps for expired uploads: often enough to honour the expiry."""
        return min(self.upload_expiry / 4, 300.0)

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.home / 'mlserve.db'}"

    @property
    def bucket(self) -> S3Location | None:
        """The bucket versions and contents are kept in; None: the local disk."""
        return self.storage if isinstance(self.storage, S3Location) else None

    @property
    def storage_dir(self) -> Path:
        """The local directory of staging (and, without a bucket, of everything stored)."""
        return self.storage if isinstance(self.storage, Path) else self.home

    @property
    def repository_dir(self) -> Path:
        return self.storage_dir / "repository"

    @property
    def staging_dir(self) -> Path:
        return self.storage_dir / "staging"

    @property
    def blobs_dir(self) -> Path:
        """Content-addressed file store; versions hard-link to it, so same file system."""
        return self.storage_dir / "blobs"

    @property
    def log_dir(self) -> Path:
        """The inference log's Parquet files (mlserve.monitor) on the local disk."""
        return self.log_storage if isinstance(self.log_storage, Path) else self.home / "logs"

    @property
    def log_location(self) -> Path | tuple[S3Location, str]:
        """Where the inference log is written: a local directory, or a bucket and the
        prefix under its location (``logs`` under --storage's bucket)."""
        if isinstance(self.log_storage, S3Location):
            return self.log_storage, ""
        if self.log_storage is None and self.bucket is not None:
            return self.bucket, "logs"
        return self.log_dir

    @property
    def triton_log(self) -> Path:
        return self.home / "triton.log"


def options() -> Iterator[tuple[dataclasses.Field[Any], Option]]:
    """Every field of Settings with its Option, in declaration order."""
    for setting in dataclasses.fields(Settings):
        yield setting, setting.metadata["option"]


def flag(setting: dataclasses.Field[Any]) -> str:
    return "--" + setting.name.replace("_", "-")


def shown_default(setting: dataclasses.Field[Any], option: Option) -> str:
    if option.shown_default:
        return option.shown_default
    if isinstance(setting.default, bool):
        return "on" if setting.default else "off"
    return str(setting.default)


def resolve(given: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Settings from flag values already parsed (``given``: field name -> value),
    then the environment, then the defaults. An empty variable counts as unset.

    Raises:
        SettingError: a variable's value is unusable (the message names the
            variable) or the values do not go together.
    """
    values = dict(given)
    for setting, option in options():
        if setting.name in values:
            continue
        for name in (option.env, *option.env_aliases):
            text = environ.get(name, "")
            if text:
                try:
                    values[setting.name] = _parse_variable(option, text)
                except SettingError as error:
                    raise SettingError(f"{name}={text!r}: {error}") from None
                break
    return Settings(**values)


def _parse_variable(option: Option, text: str) -> Any:
    if not option.repeatable:
        return option.parse(text)
    return tuple(option.parse(part) for part in text.split(",") if part.strip())


def markdown_table() -> str:
    """The README's table of settings."""
    rows = ["| flag | environment | default | what |", "|---|---|---|---|"]
    for setting, option in options():
        if option.hidden:
            continue
        env = ", ".join(f"`{name}`" for name in (option.env, *option.env_aliases))
        flags = f"`{flag(setting)}`"
        if isinstance(setting.default, bool):
            flags += f", `--no-{flag(setting)[2:]}`"
        default = shown_default(setting, option)
        rows.append(f"| {flags} | {env} | `{default}` | {option.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
