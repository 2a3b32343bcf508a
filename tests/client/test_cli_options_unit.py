"""The ``mlserve`` parser without a server: global options anywhere, an example in every
command's help, keys hidden from parse errors, and first steps when run bare."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator

import pytest

from mlserve.cli import main, parser
from mlserve_client.cli.common import redact

KEY = "mls_0123456789ab_SecretPartThatMustNeverBeShown-_x"


def commands(
    root: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every runnable command line prefix, e.g. ("models", "upload")."""
    subparsers = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers and path:
        yield path
    for action in subparsers:
        for name, child in action.choices.items():
            yield from commands(child, (*path, name))


@pytest.mark.parametrize(
    "argv",
    [
        [
            "--home",
            "/h",
            "--address",
            "10.0.0.1:1",
            "--key",
            "K",
            "--ca",
            "c.pem",
            "models",
            "list",
        ],
        [
            "models",
            "list",
            "--home",
            "/h",
            "--address",
            "10.0.0.1:1",
            "--key",
            "K",
            "--ca",
            "c.pem",
        ],
        [
            "--home",
            "/h",
            "--key",
            "K",
            "models",
            "list",
            "--address",
            "10.0.0.1:1",
            "--ca",
            "c.pem",
        ],
    ],
)
def test_global_options_mean_the_same_before_or_after_the_command(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    assert (str(args.home), args.address, args.key, str(args.ca)) == (
        "/h",
        "10.0.0.1:1",
        "K",
        "c.pem",
    )


def test_an_option_given_first_is_not_reset_by_the_command() -> None:
    args = parser().parse_args(["--key", "K", "-v", "deploy", "add"])
    assert args.key == "K"
    assert args.verbose is True


def test_serve_takes_home_after_its_name() -> None:
    args = parser().parse_args(["serve", "--home", "/srv/mlserve", "-v"])
    assert str(args.home) == "/srv/mlserve"
    assert args.verbose is True


def test_every_command_shows_an_example() -> None:
    root = parser()
    found = list(commands(root))
    assert ("models", "upload") in found
    assert ("serve",) in found
    for path in found:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            root.parse_args([*path, "--help"])
        help_text = out.getvalue()
        assert "example:\n  mlserve " + " ".join(path) in help_text, path
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        root.parse_args(["--help"])
    assert "example:\n  mlserve " in out.getvalue()


def test_bare_mlserve_prints_what_to_do_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "mlserve serve" in out
    assert "mlserve models upload examples/add --name add" in out
    assert "mlserve deploy add" in out


@pytest.mark.parametrize(
    "argv",
    [
        [KEY, "models", "list"],  # the key where the command belongs
        ["models", "list", KEY],  # --key forgotten
        ["--key", KEY, "models", "lst"],  # a typo in the command
        ["--key", KEY, "models", "versions"],  # a missing argument
        ["--key", KEY, "artifacts", "list", "add", KEY],  # the key where a number belongs
        ["serve", "--key", KEY],  # serve takes no key
    ],
)
def test_parse_errors_never_show_the_key(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "SecretPart" not in captured.err + captured.out
    assert "error:" in captured.err


def test_redact_keeps_the_public_id_and_hides_given_secrets() -> None:
    assert redact(f"bad {KEY}!") == "bad mls_0123456789ab_<secret hidden>!"
    assert redact("key hunter2 refused", "hunter2") == "key <the key> refused"
