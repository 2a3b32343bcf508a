"""Unit tests of the validation that keeps names, paths, page tokens and
configs honest: mlserve.core.names, mlserve.core.paging, mlserve.triton.modelconfig. No server."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from mlserve.core.errors import InvalidArgument
from mlserve.core.names import (
    MAX_NAME_LENGTH,
    check_name,
    check_relative_path,
    safe_join,
)
from mlserve.core.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageTokens, page_size
from mlserve.triton import modelconfig

# --- check_name -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "add", "Add_2", "resnet-50", "v1.2.3", "_private", "9lives", "a" * MAX_NAME_LENGTH],
)
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("../x", id="dotdot-slash"),
        pytest.param("..", id="dotdot"),
        pytest.param(".", id="dot"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("-flag", id="leading-dash"),
        pytest.param("/abs", id="absolute"),
        pytest.param("a/b", id="slash"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("a b", id="space"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\n", id="trailing-newline"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a" * (MAX_NAME_LENGTH + 1), id="129-chars"),
        pytest.param("a" * 300, id="300-chars"),
        pytest.param("modèle", id="non-ascii"),
        pytest.param("a\u200bb", id="zero-width-space"),
        pytest.param("١٢٣", id="arabic-digits"),
        pytest.param("a:b", id="colon"),
        pytest.param("a*", id="glob"),
    ],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_name(name, "model name")
    assert "model name" in error.value.message


def test_over_long_name_message_gives_the_limit() -> None:
    with pytest.raises(InvalidArgument, match=str(MAX_NAME_LENGTH)):
        check_name("a" * 300)


# --- check_relative_path ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "normalised"),
    [
        ("model.py", "model.py"),
        ("weights/blob.bin", "weights/blob.bin"),
        ("a/b/c/d.txt", "a/b/c/d.txt"),
        ("..hidden", "..hidden"),
        ("a..b/c", "a..b/c"),
        ("...", "..."),
        ("x" * 255, "x" * 255),
    ],
)
def test_good_relative_paths(path: str, normalised: str) -> None:
    assert check_relative_path(path) == normalised


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("", id="empty"),
        pytest.param("../../etc/passwd", id="dotdot-etc"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("a/../../b", id="inner-dotdot"),
        pytest.param("a/..", id="trailing-dotdot"),
        pytest.param("..", id="dotdot"),
        pytest.param(".", id="dot"),
        pytest.param("./a", id="leading-dot"),
        pytest.param("a/./b", id="inner-dot"),
        pytest.param("a//b", id="double-slash"),
        pytest.param("a/", id="trailing-slash"),
        pytest.param("//server/share", id="unc"),
        pytest.param("a\\..\\..\\b", id="backslash"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("x" * 256, id="component-256"),
        pytest.param("a/" * 600 + "b", id="over-1024"),
    ],
)
def test_bad_relative_paths(path: str) -> None:
    with pytest.raises(InvalidArgument):
        check_relative_path(path)


def test_component_limit_counts_bytes() -> None:
    with pytest.raises(InvalidArgument):
        check_relative_path("é" * 200)


# --- safe_join --------------------------------------------------------------


def test_safe_join_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert safe_join(root, "a", "b.txt") == root / "a" / "b.txt"
    assert safe_join(root, "a/b") == root / "a" / "b"


@pytest.mark.parametrize("parts", [("..",), ("..", "x"), ("a", "..", "..", "x"), ("/etc",)])
def test_safe_join_refuses_escapes(tmp_path: Path, parts: tuple[str, ...]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InvalidArgument):
        safe_join(root, *parts)


def test_safe_join_is_not_fooled_by_a_shared_prefix(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "repo2").mkdir()
    with pytest.raises(InvalidArgument):
        safe_join(root, "../repo2/x")


def test_safe_join_refuses_a_planted_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "model").symlink_to(outside)
    (root / "file").symlink_to(outside / "secret")
    with pytest.raises(InvalidArgument):
        safe_join(root, "model", "1")
    with pytest.raises(InvalidArgument):
        safe_join(root, "file")
    # A link that stays inside is harmless.
    (root / "inside").mkdir()
    (root / "alias").symlink_to(root / "inside")
    assert safe_join(root, "alias", "x") == root / "alias" / "x"


def test_safe_join_works_when_the_root_itself_is_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert safe_join(link, "a") == link / "a"
    with pytest.raises(InvalidArgument):
        safe_join(link, "..", "x")


# --- paging -----------------------------------------------------------------


def test_page_size_rules() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(1) == 1
    assert page_size(MAX_PAGE_SIZE) == MAX_PAGE_SIZE
    assert page_size(MAX_PAGE_SIZE + 1) == MAX_PAGE_SIZE
    assert page_size(2**31 - 1) == MAX_PAGE_SIZE
    for negative in (-1, -(2**31)):
        with pytest.raises(InvalidArgument, match="page_size"):
            page_size(negative)


QUERY = {"list": "models", "prefix": "a", "tag": ""}


def test_page_token_round_trip() -> None:
    tokens = PageTokens(b"secret")
    for key in ("model-7", 42, None, "ü/..", ""):
        token = tokens.encode(QUERY, key)
        assert tokens.decode(QUERY, token) == key
        assert "=" not in token
        assert key is None or str(key) == "" or str(key) not in token  # opaque to the eye
    assert tokens.decode(QUERY, "") is None


def test_page_token_is_tamper_evident() -> None:
    tokens = PageTokens(b"secret")
    token = tokens.encode(QUERY, "model-7")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    body = json.loads(raw[16:])
    forged_body = json.dumps({**body, "k": "zzz"}, separators=(",", ":")).encode()
    forged = base64.urlsafe_b64encode(raw[:16] + forged_body).decode().rstrip("=")
    flipped = bytearray(raw)
    flipped[-3] ^= 1
    candidates = [
        forged,
        base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip("="),
        token[:-1],
        token[:10],
        token + "A",
        "not-a-token",
        "%%%%",
        "é",
        "A",
        base64.urlsafe_b64encode(b"\0" * 16 + b"{}").decode(),
    ]
    for bad in candidates:
        with pytest.raises(InvalidArgument, match="page_token"):
            tokens.decode(QUERY, bad)


def test_page_token_from_another_server_or_query() -> None:
    token = PageTokens(b"secret").encode(QUERY, "model-7")
    with pytest.raises(InvalidArgument, match="page_token"):
        PageTokens(b"other secret").decode(QUERY, token)
    for other in (
        {**QUERY, "prefix": "b"},
        {**QUERY, "tag": "x"},
        {"list": "servers"},
        {},
    ):
        with pytest.raises(InvalidArgument, match="different query"):
            PageTokens(b"secret").decode(other, token)
    # Key order of the query does not matter.
    reordered = dict(reversed(list(QUERY.items())))
    assert PageTokens(b"secret").decode(reordered, token) == "model-7"


# --- modelconfig ------------------------------------------------------------

ADD_CONFIG = """
name: "whatever"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def test_parse_sets_the_models_name() -> None:
    config = modelconfig.parse(ADD_CONFIG, "add")
    assert config.name == "add"
    assert config.backend == "python"
    assert [t.name for t in config.input] == ["INPUT0"]
    again = modelconfig.parse(modelconfig.render(config), "add")
    assert again == config


@pytest.mark.parametrize(
    "text",
    [
        'backend: "python"\nthis is { not valid',
        'backend: "python"\nno_such_field: 1',
        'max_batch_size: "eight"',
        "input [ { name: ",
        'input { name: "\\xff" }',
        "max_batch_size: 99999999999999999999",
        "input " + "{ " * 500,
    ],
)
def test_parse_errors_carry_the_parsers_message(text: str) -> None:
    with pytest.raises(text_format.ParseError) as parsed:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    with pytest.raises(InvalidArgument) as error:
        modelconfig.parse(text, "m", ["model.py"])
    assert str(parsed.value) in error.value.message
    assert "config.pbtxt" in error.value.message


@pytest.mark.parametrize(
    ("files", "backend"),
    [
        (["model.py"], "python"),
        (["weights/model.onnx"], "onnxruntime"),
        (["model.pt"], "pytorch"),
        (["model.plan"], "tensorrt"),
        (["README.md", "model.py"], "python"),
    ],
)
def test_backend_recognised_from_files(files: list[str], backend: str) -> None:
    assert modelconfig.parse("", "m", files).backend == backend


def test_no_backend_and_nothing_recognisable() -> None:
    with pytest.raises(InvalidArgument, match="backend"):
        modelconfig.parse("", "m", ["weights.bin"])
    with pytest.raises(InvalidArgument, match="backend"):
        modelconfig.parse("max_batch_size: 4", "m", [])
    # A platform is as good as a backend.
    assert modelconfig.parse('platform: "onnxruntime_onnx"', "m", []).platform


@pytest.mark.parametrize(
    "text",
    [
        'backend: "python" input [ { name: "X" }, { name: "X" } ]',
        'backend: "python" output [ { name: "Y" }, { name: "Y" } ]',
        'backend: "python" input [ { data_type: TYPE_FP32 } ]',
        'platform: "ensemble" ensemble_scheduling { step [ { model_name: "../secret" } ] }',
        'platform: "ensemble" ensemble_scheduling { step [ { model_name: "/etc" } ] }',
        'platform: "ensemble" ensemble_scheduling { step [ { model_name: "" } ] }',
    ],
)
def test_semantic_errors(text: str) -> None:
    with pytest.raises(InvalidArgument):
        modelconfig.parse(text, "m")


def test_for_version_pins_a_copy() -> None:
    config = modelconfig.parse(ADD_CONFIG + "version_policy { latest { num_versions: 2 } }", "m")
    pinned = modelconfig.for_version(config, 3)
    assert list(pinned.version_policy.specific.versions) == [3]
    assert config.version_policy.HasField("latest")  # the original is untouched
    loaded = json_format.Parse(modelconfig.to_json(pinned), model_config_pb2.ModelConfig())
    assert loaded == pinned
    assert "\n" not in modelconfig.to_json(pinned)


def test_parse_does_not_touch_the_file_system(tmp_path: Path) -> None:
    before = set(os.listdir(tmp_path))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        modelconfig.parse(ADD_CONFIG, "m")
        with pytest.raises(InvalidArgument):
            modelconfig.parse('backend: "python" garbage', "m")
    finally:
        os.chdir(cwd)
    assert set(os.listdir(tmp_path)) == before
