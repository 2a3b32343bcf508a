"""The OIDC settings: repeatable issuers from flags or one comma-separated variable."""

from __future__ import annotations

import pytest

from mlserve.cli import parser
from mlserve.settings import SettingError, resolve

A, B = "https://id.example.com/realms/a", "http://127.0.0.1:8080/realms/b"


def test_issuers_come_from_a_comma_separated_variable() -> None:
    settings = resolve({}, {"MLSERVE_OIDC_ISSUER": f"{A}, {B}", "MLSERVE_OIDC_AUDIENCE": "ml"})
    assert settings.oidc_issuer == (A, B)
    assert settings.oidc_audience == "ml"
    assert settings.oidc_user_claim == "sub"
    assert settings.oidc_roles_claim == "realm_access.roles"


def test_the_issuer_flag_repeats_and_beats_the_variable() -> None:
    args = parser().parse_args(
        ["serve", "--oidc-issuer", A, "--oidc-issuer", B, "--oidc-audience", "ml"]
    )
    assert args.oidc_issuer == [A, B]


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"MLSERVE_OIDC_ISSUER": A}, "needs --oidc-audience"),
        ({"MLSERVE_OIDC_ISSUER": "id.example.com"}, "give the issuer's URL"),
        ({"MLSERVE_OIDC_ROLES_CLAIM": "realm_access..roles"}, "give a claim name"),
    ],
)
def test_a_bad_oidc_setting_says_what_to_give(environ: dict[str, str], says: str) -> None:
    with pytest.raises(SettingError, match=says):
        resolve({}, environ)
