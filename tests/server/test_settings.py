"""Settings: one default per field, each from its flag, else its MLSERVE_*
variable, else the default; bad values stop ``mlserve serve`` with exit 2 and
a message naming what to fix; ``--help`` and the README say the same as the
dataclass. The last tests start a real MLServe (no Triton) configured only
through the environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from mlserve.settings import SettingError, Settings, markdown_table, options, resolve
from mlserve.storage.s3 import S3Location
from mlserve.training.sandboxed import JobLimits
from mlserve_api.v1 import server_pb2
from tests.support.mlserve import MLServeProcess
from tests.support.uploading import stream

README = Path(__file__).resolve().parents[2] / "README.md"


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``mlserve serve ARGS`` that is expected to stop before serving."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "mlserve", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, **(env or {})},
    )


# --- resolve: flag, then environment, then default ----------------------------


def test_defaults_come_from_the_dataclass_alone() -> None:
    assert resolve({}, {}) == Settings()
    assert Settings().listen == "127.0.0.1:50051"
    assert Settings().database_url == f"sqlite:///{Settings().home / 'mlserve.db'}"


def test_every_field_is_read_from_its_variable(tmp_path: Path) -> None:
    environ = {
        "MLSERVE_HOME": str(tmp_path / "home"),
        "MLSERVE_LISTEN": "127.0.0.1:6000",
        "MLSERVE_DATABASE_URL": "postgresql://mlserve:s3cret@db:5432/mlserve",
        "MLSERVE_STORAGE": str(tmp_path / "storage"),
        "MLSERVE_WORKERS": "1",
        "MLSERVE_EMBEDDED_TRITON": "false",
        "MLSERVE_MAX_UPLOAD_BYTES": "2G",
        "MLSERVE_MAX_MESSAGE_BYTES": "16M",
        "MLSERVE_METRICS_LISTEN": "127.0.0.1:9100",
        "MLSERVE_HEALTH_INTERVAL": "0.5",
        "MLSERVE_SHUTDOWN_GRACE": "0",
        "MLSERVE_TLS_CERT": str(tmp_path / "cert.pem"),
        "MLSERVE_TLS_KEY": str(tmp_path / "key.pem"),
    }
    settings = resolve({}, environ)
    assert settings == Settings(
        home=tmp_path / "home",
        listen="127.0.0.1:6000",
        database="postgresql://mlserve:s3cret@db:5432/mlserve",
        storage=tmp_path / "storage",
        workers=1,
        embedded_triton=False,
        max_upload_bytes=2 * 1024**3,
        max_message_bytes=16 * 1024**2,
        metrics_listen="127.0.0.1:9100",
        health_interval=0.5,
        shutdown_grace=0.0,
        tls_cert=tmp_path / "cert.pem",
        tls_key=tmp_path / "key.pem",
    )
    assert settings.repository_dir == tmp_path / "storage" / "repository"
    assert settings.triton_log == tmp_path / "home" / "triton.log"


def test_database_url_beats_the_shorter_name_and_empty_means_unset() -> None:
    assert resolve({}, {"MLSERVE_DATABASE": "sqlite:///b.db"}).database == "sqlite:///b.db"
    both = {"MLSERVE_DATABASE_URL": "sqlite:///a.db", "MLSERVE_DATABASE": "sqlite:///b.db"}
    assert resolve({}, both).database == "sqlite:///a.db"
    assert resolve({}, {"MLSERVE_LISTEN": ""}).listen == Settings().listen


def test_a_flag_beats_its_variable_and_the_variable_is_then_not_read() -> None:
    settings = resolve({"listen": "127.0.0.1:7000"}, {"MLSERVE_LISTEN": "not an address"})
    assert settings.listen == "127.0.0.1:7000"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("MLSERVE_LISTEN", "nohost", "host:port"),
        ("MLSERVE_LISTEN", "127.0.0.1:70000", "port 0 to 65535"),
        ("MLSERVE_DATABASE_URL", "mysql://x/y", "postgresql://"),
        ("MLSERVE_WORKERS", "abc", "whole number"),
        ("MLSERVE_WORKERS", "0", "give at least 1 process (got 0), or auto"),
        ("MLSERVE_STORAGE", "s3://Bad_Bucket/prefix", "is not an S3 bucket name"),
        ("MLSERVE_OIDC_ISSUER", "http://id.example.com", "must use https://"),
        ("MLSERVE_EMBEDDED_TRITON", "maybe", "true or false"),
        ("MLSERVE_MAX_UPLOAD_BYTES", "lots", "size"),
        ("MLSERVE_MAX_MESSAGE_BYTES", "4G", "at most"),
        ("MLSERVE_HEALTH_INTERVAL", "0", "above 0"),
        ("MLSERVE_SHUTDOWN_GRACE", "-1", "0 or more"),
    ],
)
def test_a_bad_variable_is_named_with_what_to_give(variable: str, value: str, says: str) -> None:
    with pytest.raises(SettingError) as error:
        resolve({}, {variable: value})
    assert str(error.value).startswith(f"{variable}={value!r}: ")
    assert says in str(error.value)


def test_the_training_limits_are_read_and_default_to_the_sandboxs_own() -> None:
    assert Settings().training_limits == JobLimits()
    limits = resolve(
        {},
        {
            "MLSERVE_TRAINING_CPU_TIME": "90.5",
            "MLSERVE_TRAINING_WALL_TIME": "2h",
            "MLSERVE_TRAINING_MEMORY": "512M",
            "MLSERVE_TRAINING_FILE_SIZE": "10M",
            "MLSERVE_TRAINING_PROCESSES": "8",
            "MLSERVE_TRAINING_LOG_LINES": "50",
            "MLSERVE_TRAINING_LOG_LINE_BYTES": "1k",
        },
    ).training_limits
    assert limits == JobLimits(
        cpu_seconds=91,  # whole seconds, rounded up
        wall_seconds=7200.0,
        memory_bytes=512 * 1024**2,
        file_bytes=10 * 1024**2,
        processes=8,
        log_lines=50,
        log_line_bytes=1024,
    )


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("MLSERVE_TRAINING_CPU_TIME", "0", "above 0"),
        ("MLSERVE_TRAINING_CPU_TIME", "8d", "'8d' is not a CPU time from 1s to 7d"),
        (
            "MLSERVE_TRAINING_WALL_TIME",
            "0.5",
            "'0.5' is not a wall-clock time from 1s to 7d",
        ),
        ("MLSERVE_TRAINING_WALL_TIME", "-1", "above 0"),
        ("MLSERVE_TRAINING_MEMORY", "1M", "'1M' is not a memory size from 128M to 64T"),
        ("MLSERVE_TRAINING_MEMORY", "100T", "memory size"),
        ("MLSERVE_TRAINING_FILE_SIZE", "1k", "'1k' is not a file size from 1M to 64T"),
        ("MLSERVE_TRAINING_PROCESSES", "1", "'1' is not a number of processes from 4 to 32768"),
        ("MLSERVE_TRAINING_PROCESSES", "1000000", "number of processes"),
        ("MLSERVE_TRAINING_LOG_LINES", "5", "'5' is not a number of log lines from 10 to 100000"),
        ("MLSERVE_TRAINING_LOG_LINES", "many", "whole number"),
        ("MLSERVE_TRAINING_LOG_LINE_BYTES", "10", "is not a line length from 256 to 1M bytes"),
        ("MLSERVE_TRAINING_LOG_LINE_BYTES", "2M", "is not a line length from 256 to 1M bytes"),
    ],
)
def test_an_absurd_training_limit_is_named_with_its_range(
    variable: str, value: str, says: str
) -> None:
    test_a_bad_variable_is_named_with_what_to_give(variable, value, says)


def test_a_training_log_over_256_mib_a_job_is_refused() -> None:
    big = {"MLSERVE_TRAINING_LOG_LINES": "100000", "MLSERVE_TRAINING_LOG_LINE_BYTES": "1M"}
    with pytest.raises(SettingError, match="more than 256 MiB of log per job"):
        resolve({}, big)
    assert resolve({}, {**big, "MLSERVE_TRAINING_LOG_LINES": "256"}).training_log_lines == 256


def test_workers_auto_is_one_per_core_but_one() -> None:
    cores = len(os.sched_getaffinity(0))
    assert resolve({}, {"MLSERVE_WORKERS": "auto"}).workers == max(1, cores - 1)
    assert resolve({}, {"MLSERVE_WORKERS": "3"}).workers == 3


def test_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="go together"):
        resolve({}, {"MLSERVE_TLS_CERT": str(tmp_path / "cert.pem")})


# --- the command line ----------------------------------------------------------


def test_help_shows_every_flag_with_its_variable_and_default() -> None:
    result = serve("--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for setting, option in options():
        if option.hidden:
            assert option.env not in text
            continue
        # argparse wraps long help lines; compare with the whitespace folded
        flag = "--" + setting.name.replace("_", "-")
        assert flag in text
        if setting.name == "home":  # the global option, shared with the client commands
            assert "$MLSERVE_HOME or ~/.mlserve" in text
            continue
        assert re.search(rf"\(env \${option.env}\b[^)]*default: ", text), option.env


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--workers", "abc"], {}, "argument --workers: give a whole number"),
        (["--workers", "0"], {}, "argument --workers: give at least 1 process (got 0), or auto"),
        (["--workers", "-3"], {}, "argument --workers: give at least 1 process (got -3), or auto"),
        (["--workers=-1"], {}, "argument --workers: give at least 1 process (got -1), or auto"),
        (["--workers", "two"], {}, "argument --workers: give a whole number of processes"),
        (["--workers", "1.5"], {}, "argument --workers: give a whole number of processes"),
        (["--oidc-issuer", "https://id"], {}, "--oidc-issuer needs --oidc-audience"),
        (["--storage", "s3://b/p"], {}, "argument --storage: 'b' is not an S3 bucket name"),
        (["--storage", "gs://b/p"], {}, "give a local directory or s3://BUCKET[/PREFIX]"),
        (["--log-storage", "s3://b"], {}, "argument --log-storage: 'b' is not an S3 bucket name"),
        (["--log-storage", "gs://b/p"], {}, "give a local directory or s3://BUCKET[/PREFIX]"),
        (["--listen", "nohost"], {}, "argument --listen: give host:port"),
        ([], {"MLSERVE_WORKERS": "abc"}, "MLSERVE_WORKERS='abc': give a whole number"),
        ([], {"MLSERVE_LISTEN": "x"}, "MLSERVE_LISTEN='x': give host:port"),
        (["--tls-cert", "c.pem"], {}, "--tls-cert and --tls-key"),
        (["--training-processes", "2"], {}, "argument --training-processes: '2' is not a"),
        (["--training-memory", "64k"], {}, "argument --training-memory: '64k' is not a memory"),
        (
            ["--training-log-lines", "100000"],
            {"MLSERVE_TRAINING_LOG_LINE_BYTES": "64k"},
            "--training-log-lines 100000 times --training-log-line-bytes 65536 keeps more",
        ),
    ],
)
def test_a_bad_value_exits_2_with_a_clear_error(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    home = tmp_path / "home"
    result = serve("--home", str(home), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert not home.exists(), "nothing is written before the settings are valid"


def test_the_readme_table_is_the_dataclass() -> None:
    assert markdown_table() in README.read_text(), (
        "README's settings table differs from mlserve/settings.py: "
        "paste the output of `python -m mlserve.settings` into it"
    )


# --- a real MLServe configured through its environment ------------------------


def test_a_server_reads_its_variables(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    database = tmp_path / "elsewhere.db"
    server = MLServeProcess(
        tmp_path / "home",
        env={
            "MLSERVE_EMBEDDED_TRITON": "off",
            "MLSERVE_STORAGE": str(storage),
            "MLSERVE_DATABASE_URL": f"sqlite:///{database}",
            # the test's --listen flag beats this variable, which would not start
            "MLSERVE_LISTEN": "nohost",
        },
    )
    try:
        server.start(wait_for_triton=False)
        stubs = server.stubs()
        version = stubs.models.UploadModelVersion(
            stream("t-settings-env", {"model.py": b"# from the environment\n"}),
            metadata=stubs.auth,
            timeout=60,
        )
        assert (storage / "repository" / "t-settings-env" / str(version.version)).is_dir()
        assert not (server.home / "repository").exists()
        assert database.exists()
        assert not (server.home / "mlserve.db").exists()
        with pytest.raises(grpc.RpcError) as no_triton:
            stubs.servers.GetServer(
                server_pb2.GetServerRequest(name="local"), metadata=stubs.auth, timeout=10
            )
        assert no_triton.value.code() == grpc.StatusCode.NOT_FOUND
        stubs.channel.close()
    finally:
        assert server.stop() == 0


def test_the_log_goes_where_storage_goes_unless_named(tmp_path: Path) -> None:
    home = {"home": tmp_path}
    assert resolve(home, {}).log_location == tmp_path / "logs"
    on_bucket = resolve({**home, "storage": S3Location("fleet-bucket", "p")}, {})
    assert on_bucket.log_location == (S3Location("fleet-bucket", "p"), "logs")
    named = resolve({**home, "storage": S3Location("fleet-bucket", "p")},
                    {"MLSERVE_LOG_STORAGE": "s3://log-bucket/here"})  # fmt: skip
    assert named.log_location == (S3Location("log-bucket", "here"), "")
    local = resolve(home, {"MLSERVE_LOG_STORAGE": str(tmp_path / "elsewhere")})
    assert local.log_location == tmp_path / "elsewhere"
