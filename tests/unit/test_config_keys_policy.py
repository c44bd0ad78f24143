"""Settings, keys and policy loading: the refusals an operator meets at start."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

import pytest
from joserfc import jws, jwt
from joserfc.jwk import RSAKey

from idbroker.config import ConfigError, load_settings
from idbroker.keys import KeyRing, TokenInvalid
from idbroker.policy import PolicyError, load_policy

REPO = Path(__file__).resolve().parents[2]


def test_environment_overrides_the_file_and_relative_paths_follow_the_file(tmp_path: Path) -> None:
    config = tmp_path / "idbroker.yaml"
    config.write_text("issuer: https://broker.example\nsession:\n  idle_timeout: 600\n")
    settings = load_settings(config, environ={"IDBROKER_SESSION__IDLE_TIMEOUT": "900",
                                              "IDBROKER_HTTP__TRUSTED_PROXIES": "[10.0.0.0/8]"})
    assert settings.session.idle_timeout == 900
    assert settings.http.trusted_proxies == ("10.0.0.0/8",)
    assert settings.keys_dir == tmp_path / "keys"
    assert settings.store.url == f"sqlite:///{tmp_path / 'var/idbroker.sqlite3'}"
    assert settings.secure_cookies


@pytest.mark.parametrize(("environ", "named"), [
    ({"IDBROKER_SESSION__IDLE_TIMEOUT": "5"}, "session.idle_timeout"),
    ({"IDBROKER_SESION__IDLE_TIMEOUT": "600"}, "sesion: unknown setting"),
    ({"IDBROKER_ISSUER": "http://broker.example"}, "issuer: must be an https:// URL"),
    ({"IDBROKER_HTTP__TRUSTED_PROXIES": "[not-an-ip]"}, "http.trusted_proxies"),
    ({"IDBROKER_ISSUER": ""}, "issuer"),
    ({"IDBROKER_TOKENS__REFRESH_TOKEN_IDLE_TIMEOUT": "21601"},
     "tokens.refresh_token_idle_timeout: must be at most 21600 seconds (6 hours, the NL GOV"),
    ({"IDBROKER_TOKENS__REFRESH_TOKEN_IDLE_TIMEOUT": "0"},
     "tokens.refresh_token_idle_timeout: Input should be greater than 0"),
    # Once found only when serving (a traceback), or turned into the config directory:
    ({"IDBROKER_STORE__URL": "mysql://db/idbroker"}, "store.url: unsupported URL scheme 'mysql'"),
    ({"IDBROKER_STORE__URL": "sqlite:///"}, "store.url: sqlite:/// needs a file path"),
    ({"IDBROKER_AUDIT__URL": "postgres://x:secret@db/a"}, "audit.url: unsupported URL scheme 'postgres'"),
    ({"IDBROKER_SERVER__BIND": "nonsense"}, "server.bind: 'nonsense' is not host:port"),
    ({"IDBROKER_SERVER__BIND": "127.0.0.1:99999"}, "server.bind: '127.0.0.1:99999' is not host:port"),
    ({"IDBROKER_SESSION__ABSOLUTE_TIMEOUT": "10000000000000000"},
     "session.absolute_timeout: Input should be less than or equal to 604800"),
])
def test_a_bad_setting_is_named(environ: dict, named: str) -> None:
    base = {"IDBROKER_ISSUER": "https://broker.example"}
    with pytest.raises(ConfigError) as error:
        load_settings(environ=base | environ)
    assert named in str(error.value)


def test_a_bad_url_names_no_password() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"IDBROKER_ISSUER": "https://broker.example",
                               "IDBROKER_STORE__URL": "postgres://x:secret@db/a"})
    assert "secret" not in str(error.value)


@pytest.mark.parametrize("damage", ["world_readable", "group_writable_directory", "not_json", "no_keys"])
def test_a_key_file_the_broker_should_not_use_is_one_clear_line(
        tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused (as ssh refuses a private key others can read), never used as it is, and
    never a traceback: 'idbroker keys' and every other command stop with the file named."""
    from idbroker.cli import main

    config = tmp_path / "idbroker.yaml"
    config.write_text(f"issuer: https://broker.example\npolicies_dir: {REPO / 'policies'}\n")
    assert main(["--config", str(config), "keys", "list"]) == 0
    keys = tmp_path / "keys"
    if damage == "world_readable":
        (keys / "signing-keys.json").chmod(0o644)
    elif damage == "group_writable_directory":
        keys.chmod(0o770)
    else:
        (keys / "signing-keys.json").write_text("{broken" if damage == "not_json" else '{"kees": []}')
    capsys.readouterr()
    assert main(["--config", str(config), "keys", "list"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("idbroker: ") and "Traceback" not in error and str(keys) in error
    if damage == "world_readable":
        assert f"chmod 600 {keys / 'signing-keys.json'}" in error


def test_the_refresh_idle_limit_is_six_hours_unless_set_shorter() -> None:
    base = {"IDBROKER_ISSUER": "https://broker.example"}
    assert load_settings(environ=base).tokens.refresh_token_idle_timeout == 6 * 3600
    shorter = load_settings(environ=base | {"IDBROKER_TOKENS__REFRESH_TOKEN_IDLE_TIMEOUT": "900"})
    assert shorter.tokens.refresh_token_idle_timeout == 900


def test_missing_issuer_is_named() -> None:
    with pytest.raises(ConfigError, match="issuer: required setting is missing"):
        load_settings(environ={})


def test_keys_are_private_files_and_rotation_keeps_old_keys_published(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys", retire_grace=600)
    for path in (tmp_path / "keys").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    old = ring.sign({"iss": "x", "exp": int(time.time()) + 60})
    old_kids = {k["kid"] for k in ring.public_jwks()["keys"]}
    added = ring.rotate()
    published = {k["kid"] for k in ring.public_jwks()["keys"]}
    assert old_kids | set(added) == published
    assert ring.verify(old)["iss"] == "x"
    assert jws.extract_compact(ring.sign({"a": 1}).encode()).headers()["kid"] in added
    # Long after, a second rotation prunes the first generation.
    ring.rotate(now=int(time.time()) + 10_000)
    assert not old_kids & {k["kid"] for k in ring.public_jwks()["keys"]}


def test_a_key_verifies_only_under_its_own_algorithm(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    rsa = ring.active_key("RS256")
    # A PS256 signature by the RS256 key: right key, wrong algorithm for that key.
    unpinned = RSAKey.import_key({k: v for k, v in rsa.key.as_dict(private=True).items() if k != "alg"})
    forged = jwt.encode({"alg": "PS256", "kid": rsa.kid}, {"iss": "x"}, unpinned, algorithms=["PS256"])
    with pytest.raises(TokenInvalid):
        ring.verify(forged)
    with pytest.raises(TokenInvalid):
        ring.verify("not-a-token")


def test_example_policy_loads() -> None:
    policy = load_policy(REPO / "policies", environ={})
    assert policy.clients["wvggz-portaal"].redirect_uris == (
        "http://localhost:8080/demo-app/wvggz-portaal/callback",)
    assert policy.organisation_for_domain("UTRECHT.demo").id == "gemeente-utrecht"


@pytest.mark.parametrize(("document", "expected"), [
    ({"clients": [{"id": "a", "name": "A", "redirect_uris": ["https://a.example/cb"],
                   "jwks_uri": "https://a.example/j"}] * 2}, "duplicate id 'a'"),
    ({"clients": [{"id": "a", "name": "A", "redirect_uris": ["https://a.example/*"],
                   "jwks_uri": "https://a.example/j"}]}, "wildcard"),
    ({"clients": [{"id": "a", "name": "A", "redirect_uris": ["http://a.example/cb"],
                   "jwks_uri": "https://a.example/j"}]}, "must use https"),
    ({"clients": [{"id": "a", "name": "A", "redirect_uris": ["https://a.example/cb"]}]},
     "exactly one of jwks or jwks_uri"),
    ({"clients": [{"id": "a", "name": "A", "redirect_uris": ["https://a.example/cb"],
                   "jwks_uri": "https://a.example/j", "colour": "red"}]}, "colour"),
    ({"organisations": [{"id": "o", "name": "O", "idp": {
        "protocol": "oidc", "issuer": "${UNSET_VARIABLE}", "client_id": "b"}}]}, "UNSET_VARIABLE"),
    ({"team": []}, "unknown section 'team'"),
])
def test_a_bad_policy_is_refused_with_the_place(tmp_path: Path, document: dict, expected: str) -> None:
    (tmp_path / "chain.yaml").write_text(json.dumps(document))
    with pytest.raises(PolicyError) as error:
        load_policy(tmp_path, environ={})
    assert expected in str(error.value)
    assert "chain.yaml" in str(error.value)


def test_non_utf8_and_broken_yaml_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes(b"clients: [\xff\xfe]")
    (tmp_path / "b.yaml").write_text("clients: [unclosed")
    with pytest.raises(PolicyError) as error:
        load_policy(tmp_path, environ={})
    # Each names its file and line (file:line, as editors and CI annotations read it).
    assert "a.yaml:1: not UTF-8" in str(error.value)
    assert re.search(r"b\.yaml:\d+: not valid YAML", str(error.value))


def test_a_store_that_cannot_be_reached_stops_the_start(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Not the first request: the app is not built (and `idbroker serve` says why in one line)."""
    from idbroker.app import create_app
    from idbroker.cli import main
    from idbroker.store import StoreUnavailable

    config = tmp_path / "idbroker.yaml"
    config.write_text(f"issuer: https://broker.example\npolicies_dir: {REPO / 'policies'}\n"
                      f"store:\n  url: redis://127.0.0.1:1/0\naudit:\n  url: sqlite:///{tmp_path}/audit.sqlite3\n")
    with pytest.raises(StoreUnavailable):
        create_app(load_settings(config))
    assert main(["--config", str(config), "serve"]) == 2
    assert capsys.readouterr().err.startswith("idbroker: Redis store is unavailable")
