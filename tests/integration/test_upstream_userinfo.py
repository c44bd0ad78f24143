"""Upstream OIDC IdPs that release profile and group claims at userinfo only (OIDC Core 5.4,
as a conforming ``oidc-provider`` does): the broker reads them there, checks the answer is
about the ID token's ``sub`` (OIDC Core 5.3.2), and fails the login closed when userinfo
cannot be had. Its own ``private_key_jwt`` assertion lives 60 s, which a strict IdP (here
the demo IdPs refuse assertions living over 300 s, as idbroker does) accepts.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from idbroker.audit.log import records
from idbroker.demo.idp import CLIENT_ASSERTION_MAX_AGE, DemoAccount, DemoClient, create_idp_app
from idbroker.demo.launcher import build_demo
from tests.integration.conftest import Chain
from tests.support.browser import Browser
from tests.support.wsgi_server import DeferredApp, serve_wsgi

REPO = Path(__file__).resolve().parents[2]
SCOPE = "ui.dossier"

#: organisation id -> (demo IdP options, the policy's attribute mapping overrides)
ORGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # profile, e-mail and groups at userinfo only
    "ui-conform": ({"profile_in_id_token": False}, {}),
    # ... and userinfo speaks of someone else
    "ui-andere-sub": ({"profile_in_id_token": False, "faults": {"userinfo_other_sub"}}, {}),
    # ... and userinfo answers with something other than a JSON object
    "ui-geen-json": ({"profile_in_id_token": False, "faults": {"userinfo_not_json"}}, {}),
    # ... and userinfo is down
    "ui-storing": ({"profile_in_id_token": False, "faults": {"userinfo_unavailable"}}, {}),
    # everything the mapping reads is in the ID token: userinfo (down) is never asked
    "ui-id-token": ({"faults": {"userinfo_unavailable"}},
                    {"given_name": None, "family_name": None}),
}
ACCOUNT = DemoAccount("l.smit", "demo", "ui-501", "Lotte Smit", "l.smit@ui.demo", "501", ("ui-crisis",))


def _policy(policy_dir: Path, base: str, rp_key: ECKey) -> None:
    shutil.copytree(REPO / "policies", policy_dir)
    organisations = [{"id": org, "name": f"Organisatie {org}", "idp": {
        "protocol": "oidc", "issuer": f"{base}/{org}-idp", "client_id": "idbroker", "algorithms": ["ES256"],
        "scopes": ["openid", "profile", "email", "groups"], **({"attributes": mapping} if mapping else {})}}
        for org, (_, mapping) in ORGS.items()]
    (policy_dir / "ui-organisations.yaml").write_text(json.dumps({"organisations": organisations}))
    teams = [{"id": f"{org}-crisis", "organisation": org, "name": f"Crisisteam {org}", "roles": [
        {"id": "medewerker", "min_level": "low", "grants": {"test-rp": [SCOPE]}}],
        "members": [{"group": "ui-crisis"}]} for org in ORGS]
    (policy_dir / "ui-teams.yaml").write_text(json.dumps({"teams": teams}))
    client = {"id": "test-rp", "name": "Test RP", "redirect_uris": [f"{base}/test-rp/cb"],
              "auth_method": "private_key_jwt", "min_level": "low", "subject_type": "public",
              "jwks": {"keys": [rp_key.as_dict(private=False) | {"alg": "ES256", "use": "sig"}]},
              "scopes": ["openid", "profile", "email"],
              "claims": ["name", "email", "organisation", "team", "roles", "acr"],
              "application_scopes": [{"name": SCOPE, "personal_data": False}]}
    (policy_dir / "ui-clients.yaml").write_text(json.dumps({"clients": [client]}))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """The broker (example chain plus the organisations above) and one demo IdP per organisation."""
    tmp_path = tmp_path_factory.mktemp("userinfo")
    deferred = DeferredApp()
    with serve_wsgi(deferred) as (base, _shutdown):
        rp_key = ECKey.generate_key("P-256", private=True, auto_kid=True)
        _policy(tmp_path / "policies", base, rp_key)
        demo = build_demo(base, policies=tmp_path / "policies", state_dir=tmp_path / "state")
        idps = {f"/{org}-idp": create_idp_app(
            f"{base}/{org}-idp", display_name=f"Organisatie {org}", accounts=[ACCOUNT],
            clients=[DemoClient("idbroker", (f"{base}/upstream/{org}/callback",),
                                jwks_uri=f"{base}/jwks.json")],
            client_assertion_max_age=CLIENT_ASSERTION_MAX_AGE, **options)
            for org, (options, _) in ORGS.items()}
        deferred.target = DispatcherMiddleware(demo.app, idps)
        yield Chain(base, demo, rp_key, tmp_path / "policies", tmp_path / "state")


def _verify(chain: Chain, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(requests.get(f"{chain.base}/jwks.json", timeout=5).json())
    return dict(jwt.decode(token, keys, algorithms=["ES256"]).claims)


def _login(chain: Chain, org: str) -> tuple[dict[str, Any], Browser]:
    browser = Browser(username=ACCOUNT.username, organisation=org)
    query, request, _ = chain.login(browser, idp_hint=org, scope=f"openid profile email {SCOPE}")
    assert "code" in query, query
    reply = chain.redeem(query["code"][0], request["verifier"])
    assert reply.status_code == 200, reply.text
    return _verify(chain, reply.json()["id_token"]), browser


def _refused(chain: Chain, org: str) -> tuple[int, str, dict[str, Any]]:
    """A login at ``org`` that the broker ends on its own error page, and the audit event of it."""
    before = chain.broker.audit.head().seq
    browser = Browser(username=ACCOUNT.username, organisation=org)
    url, _ = chain.authorize_url(idp_hint=org)
    step = browser.go(url, stop_at=chain.rp_redirect)
    assert f"/upstream/{org}/callback" in step.url, [s.url for s in browser.history]
    events = [r.event for r in records(chain.broker.audit) if r.seq > before]
    upstream = [e for e in events if e.get("reason", "").startswith("upstream_")]
    assert len(upstream) == 1, events
    return step.status, step.body, upstream[0]


def test_profile_and_groups_at_userinfo_only_reach_the_client(chain: Chain) -> None:
    """The IdP's ID token has ``sub`` (and the protocol claims) only; the same IdP with its
    userinfo down fails the login (below), so name, e-mail and groups came from userinfo."""
    claims, _ = _login(chain, "ui-conform")
    assert claims["name"] == ACCOUNT.name and claims["email"] == ACCOUNT.email
    # The groups claim (at userinfo only) made the person a member of the team.
    assert claims["organisation"] == "ui-conform"
    assert claims["team"] == "ui-conform-crisis" and claims["roles"] == ["medewerker"]


def test_userinfo_about_another_sub_is_refused(chain: Chain) -> None:
    status, body, event = _refused(chain, "ui-andere-sub")
    assert status == 400 and "klopte niet" in body
    assert event["reason"] == "upstream_invalid"


def test_userinfo_that_is_not_json_is_refused(chain: Chain) -> None:
    status, body, event = _refused(chain, "ui-geen-json")
    assert status == 400 and "klopte niet" in body
    assert event["reason"] == "upstream_invalid"


def test_userinfo_unavailable_fails_the_login_closed(chain: Chain) -> None:
    status, body, event = _refused(chain, "ui-storing")
    assert status == 502 and "niet bereikbaar" in body
    assert event["reason"] == "upstream_unreachable" and event["outcome"] == "failure"


def test_an_id_token_with_every_mapped_claim_needs_no_userinfo(chain: Chain) -> None:
    """This IdP's userinfo is down, but its ID token carries all the mapping reads: the broker
    does not ask (userinfo could add nothing, the ID token's values win) and the login works."""
    claims, _ = _login(chain, "ui-id-token")
    assert claims["name"] == ACCOUNT.name and claims["team"] == "ui-id-token-crisis"


@pytest.mark.parametrize(("lifetime", "refused"), [(60, False), (CLIENT_ASSERTION_MAX_AGE + 600, True)])
def test_the_demo_idp_refuses_a_broker_assertion_living_too_long(chain: Chain, lifetime: int,
                                                                 refused: bool) -> None:
    """The strictness the broker's 60 s assertion meets in every login above: an assertion
    under the broker's own key is refused for its lifetime alone (a 60 s one gets past client
    authentication, to the bogus code)."""
    token_endpoint = f"{chain.base}/ui-conform-idp/token"
    key = chain.broker.keys.active_key("ES256").key
    now = int(time.time())
    assertion = jwt.encode({"alg": "ES256", "kid": key.kid},
                           {"iss": "idbroker", "sub": "idbroker", "aud": token_endpoint,
                            "jti": secrets.token_urlsafe(16), "iat": now, "exp": now + lifetime}, key)
    reply = requests.post(token_endpoint, timeout=5, data={
        "grant_type": "authorization_code", "code": "no-such-code", "redirect_uri": chain.rp_redirect,
        "code_verifier": "v" * 43,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})
    if refused:
        assert reply.status_code in (400, 401) and reply.json()["error"] == "invalid_client"
        assert "too long" in reply.json()["error_description"]
    else:
        assert reply.json()["error"] == "invalid_grant", reply.text
