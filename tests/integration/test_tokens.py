"""Scoped tokens for chain applications (issue 6), over real HTTP: RFC 9068 access tokens,
resource indicators, refresh rotation, introspection, revocation and token exchange."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet
from requests.cookies import extract_cookies_to_jar

from idbroker.app import create_app
from idbroker.audit import cli as audit_cli
from idbroker.audit.log import records
from idbroker.oidc.views import LOGOUT_CONFIRMATION
from idbroker.store import secret_key
from tests.integration.conftest import (
    API_CLIENT,
    BASIC_SECRET,
    ROLES_CLIENT,
    STEPUP_ORG,
    Chain,
    audit_locked,
    running_chain,
)
from tests.support.browser import Browser
from tests.support.forgery import FORGERIES, forge

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _auth(chain: Chain, client_id: str) -> dict[str, str]:
    """private_key_jwt for one of the test clients (they share the test key)."""
    return {"client_id": client_id, "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": chain.assertion(iss=client_id, sub=client_id)}


def _post(chain: Chain, path: str, client_id: str | None, **form: str) -> requests.Response:
    data = dict(form) | (_auth(chain, client_id) if client_id else {})
    return requests.post(f"{chain.base}/{path}", data=data, timeout=10)


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _roles_login(chain: Chain, n: int, scope: str = "openid roles.agenda offline_access",
                 **params: str) -> dict[str, Any]:
    """Stap tester ``n`` (team stap-team) logs in at the roles client; the token response."""
    query, request, _ = chain.login(Browser(username=f"s{n:02d}", organisation=STEPUP_ORG),
                                    client_id=ROLES_CLIENT, scope=scope, **params)
    assert "code" in query, query
    reply = chain.redeem(query["code"][0], request["verifier"], client_id=ROLES_CLIENT,
                         assertion=chain.assertion(iss=ROLES_CLIENT, sub=ROLES_CLIENT))
    assert reply.status_code == 200, reply.text
    return reply.json()


def _refresh(chain: Chain, client_id: str, token: str) -> requests.Response:
    return _post(chain, "token", client_id, grant_type="refresh_token", refresh_token=token)


def _rp_login(chain: Chain, scope: str = "openid profile offline_access") -> dict[str, Any]:
    query, request, _ = chain.login(scope=scope)
    reply = chain.redeem(query["code"][0], request["verifier"])
    assert reply.status_code == 200, reply.text
    return reply.json()


# -- RFC 9068 access tokens and RFC 8707 resources ------------------------------------------------


def test_access_tokens_are_rfc9068_for_one_audience_with_the_acting_team(chain: Chain) -> None:
    body = _roles_login(chain, 55)
    token = body["access_token"]
    keys = KeySet.import_key_set(requests.get(f"{chain.base}/jwks.json", timeout=5).json())
    header = jws.extract_compact(token.encode()).headers()
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    claims = dict(jwt.decode(token, keys, algorithms=["ES256"]).claims)
    for name in ("iss", "sub", "aud", "client_id", "azp", "iat", "exp", "jti", "scope", "acr", "auth_time",
                 "organisation", "team", "roles"):
        assert name in claims, name
    assert claims["aud"] == ROLES_CLIENT and claims["client_id"] == ROLES_CLIENT
    assert claims["exp"] - claims["iat"] == chain.broker.settings.tokens.access_token_lifetime
    assert claims["sub"].startswith("s-")  # pairwise for this client's sector
    assert (claims["team"], claims["roles"]) == ("stap-team", ["planner"])


#: Not a URI at all: ``urlsplit`` raises on it (an unclosed IPv6 literal).
NO_URI = "http://["


def test_a_resource_of_the_client_becomes_the_audience_and_a_foreign_one_is_invalid_target(
        chain: Chain) -> None:
    body = _roles_login(chain, 56, resource=f"{chain.base}/test-roles/api")
    assert _claims(body["access_token"])["aud"] == f"{chain.base}/test-roles/api"
    query, _, _ = chain.login(Browser(username="s56", organisation=STEPUP_ORG), client_id=ROLES_CLIENT,
                              scope="openid roles.agenda", resource="https://elders.example/api")
    assert query["error"] == ["invalid_target"], query
    query, _, _ = chain.login(Browser(username="s56", organisation=STEPUP_ORG), client_id=ROLES_CLIENT,
                              scope="openid roles.agenda", resource=NO_URI)
    assert query["error"] == ["invalid_target"], query
    query, _, _ = chain.login(Browser(username="s56", organisation=STEPUP_ORG), client_id=ROLES_CLIENT,
                              scope="openid roles.agenda", resource="")
    assert "code" in query, query  # sent without a value: as if omitted (RFC 6749 §3.1)


def test_a_resource_at_code_redemption_must_be_the_grants_audience(chain: Chain) -> None:
    """RFC 8707 §2.2: at the token endpoint ``resource`` names the token's audience, which the
    grant fixed; another is ``invalid_target``, refused before the code is taken."""
    api = f"{chain.base}/test-roles/api"
    query, request, _ = chain.login(Browser(username="s63", organisation=STEPUP_ORG), client_id=ROLES_CLIENT,
                                    scope="openid roles.agenda", resource=api)

    def redeem(resource: str) -> requests.Response:
        return chain.redeem(query["code"][0], request["verifier"], client_id=ROLES_CLIENT, resource=resource,
                            assertion=chain.assertion(iss=ROLES_CLIENT, sub=ROLES_CLIENT))

    for other in ("https://elders.example/api", ROLES_CLIENT, NO_URI):  # another's; the default audience
        refused = redeem(other)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_target", refused.text
    redeemed = redeem(api)  # the code was not used up by the refusals
    assert redeemed.status_code == 200, redeemed.text
    assert _claims(redeemed.json()["access_token"])["aud"] == api


def test_pairwise_subjects_differ_per_sector_and_stay_stable(chain: Chain) -> None:
    first = _claims(_roles_login(chain, 57)["access_token"])["sub"]
    again = _claims(_roles_login(chain, 57)["access_token"])["sub"]
    other_sector = _claims(_exchange(chain, _roles_login(chain, 57)["access_token"]).json()["access_token"])
    assert first == again and other_sector["sub"] != first and other_sector["sub"].startswith("s-")
    public = _claims(_rp_login(chain)["access_token"])["sub"]
    assert public.startswith("p-")  # the test RP is a public-subject client


def _audit_export(chain: Chain, *args: str) -> list[dict[str, Any]]:
    """``idbroker audit export ARGS`` on the running broker's trail: the exported rows."""
    parser = argparse.ArgumentParser()
    audit_cli.add_parser(parser.add_subparsers(dest="command"))
    out = io.StringIO()
    arguments = parser.parse_args(["audit", "export", *args, "--purpose", "test"])
    assert audit_cli.run(chain.broker.settings, arguments, out=out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_audit_trail_leads_from_each_sectors_subject_to_the_person(chain: Chain) -> None:
    """What a resource server logs is a pairwise ``sub``; the auditor finds the person."""
    body = _roles_login(chain, 65)
    roles_sub = _claims(body["access_token"])["sub"]
    assert _claims(body["id_token"])["sub"] == roles_sub  # one subject per client and person
    refreshed = _refresh(chain, ROLES_CLIENT, body["refresh_token"]).json()["access_token"]
    api_token = _exchange(chain, body["access_token"]).json()["access_token"]
    api_sub = _claims(api_token)["sub"]
    assert api_sub != roles_sub and {api_sub[:2], roles_sub[:2]} == {"s-"}  # two sectors, unlinkable
    by_roles = _audit_export(chain, "--subject", roles_sub)
    by_api = _audit_export(chain, "--subject", api_sub)
    issued = [(r["type"], r["detail"]["jti"]) for r in by_roles + by_api]
    assert issued == [("token.issued", _claims(body["access_token"])["jti"]),
                      ("token.refreshed", _claims(refreshed)["jti"]),
                      ("token.exchanged", _claims(api_token)["jti"])]
    persons = {r["person"] for r in by_roles + by_api}
    assert len(persons) == 1 and persons.pop().startswith("p-")
    everything = _audit_export(chain, "--person", by_api[0]["person"])
    assert {"login.completed", "token.issued", "token.refreshed", "token.exchanged"} <= {
        r["type"] for r in everything}


# -- refresh tokens ------------------------------------------------------------------------------------


def test_refresh_rotates_and_reuse_revokes_the_whole_family(chain: Chain) -> None:
    first = _rp_login(chain)
    assert first["refresh_token"]
    second = _refresh(chain, chain.rp_id, first["refresh_token"])
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert _claims(rotated["access_token"])["jti"] != _claims(first["access_token"])["jti"]
    reuse = _refresh(chain, chain.rp_id, first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    after = _refresh(chain, chain.rp_id, rotated["refresh_token"])
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    assert any(r.event["type"] == "refusal" and r.event.get("reason") == "refresh_token_reuse"
               for r in records(chain.broker.audit))


def test_no_refresh_token_without_offline_access_and_none_for_another_client(chain: Chain) -> None:
    assert "refresh_token" not in _rp_login(chain, scope="openid profile")
    token = _rp_login(chain)["refresh_token"]
    stolen = _refresh(chain, ROLES_CLIENT, token)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    # ... and the rightful client's token still works (presenting it elsewhere did not burn it)
    assert _refresh(chain, chain.rp_id, token).status_code == 200
    basic = requests.post(f"{chain.base}/token", auth=(chain.basic_id, "x" * 8), timeout=5,
                          data={"grant_type": "refresh_token", "refresh_token": token})
    assert basic.status_code == 401


def test_a_refused_refresh_changes_nothing_and_the_token_still_works(chain: Chain) -> None:
    """A request refused for its scope or resource does not spend the refresh token: using it
    afterwards is a refresh, not reuse (no false theft alarm, the family lives on)."""
    body = _roles_login(chain, 64, resource=f"{chain.base}/test-roles/api")
    token, audience = body["refresh_token"], _claims(body["access_token"])["aud"]
    refusals = [
        ([("scope", "openid roles.agenda roles.dossier")], "invalid_scope"),  # beyond the grant
        ([("scope", "bogus")], "invalid_scope"),
        ([("resource", "https://elders.example/api")], "invalid_target"),  # another client's resource
        ([("resource", audience), ("resource", audience)], "invalid_target"),  # one audience per token
        ([("resource", ROLES_CLIENT)], "invalid_target"),  # the client's default audience is no URI
        ([("resource", NO_URI)], "invalid_target"),
    ]
    for extra, error in refusals:
        form = [("grant_type", "refresh_token"), ("refresh_token", token), *extra,
                *_auth(chain, ROLES_CLIENT).items()]
        reply = requests.post(f"{chain.base}/token", data=form, timeout=10)
        assert reply.status_code == 400 and reply.json()["error"] == error, (extra, reply.text)
    same = _post(chain, "token", ROLES_CLIENT, grant_type="refresh_token", refresh_token=token,
                 resource=audience)
    assert same.status_code == 200, same.text  # the grant's own audience may be named
    assert _claims(same.json()["access_token"])["aud"] == audience
    again = _refresh(chain, ROLES_CLIENT, same.json()["refresh_token"])
    assert again.status_code == 200
    blank = _post(chain, "token", ROLES_CLIENT, grant_type="refresh_token",
                  refresh_token=again.json()["refresh_token"], resource="", scope="")
    assert blank.status_code == 200, blank.text  # sent without a value: as if omitted (RFC 6749 §3.2)
    default = _roles_login(chain, 64)["refresh_token"]  # no resource: the default audience, an id
    named = _post(chain, "token", ROLES_CLIENT, grant_type="refresh_token", refresh_token=default,
                  resource=ROLES_CLIENT)
    assert named.status_code == 400 and named.json()["error"] == "invalid_target", named.text
    assert _refresh(chain, ROLES_CLIENT, default).status_code == 200


def test_a_refresh_whose_answer_fails_leaves_the_token_usable(tmp_path: Path) -> None:
    """The audit trail fails after the rotation: 503, the rotation is undone (its successor
    never left), and the client's retry with the same token is served, not taken for theft."""
    with running_chain(tmp_path) as chain:
        token = _roles_login(chain, 65)["refresh_token"]
        with audit_locked(chain):
            failed = _refresh(chain, ROLES_CLIENT, token)
        assert failed.status_code == 503 and failed.json()["error"] == "temporarily_unavailable", failed.text
        retried = _refresh(chain, ROLES_CLIENT, token)
        assert retried.status_code == 200, retried.text
        assert _refresh(chain, ROLES_CLIENT, retried.json()["refresh_token"]).status_code == 200
        assert not any(r.event.get("reason") == "refresh_token_reuse" for r in records(chain.broker.audit))


def test_a_refresh_re_checks_the_audience_against_the_policy(tmp_path: Path) -> None:
    """A resource taken from the client in the policy ends its refresh families at the next
    refresh, as /authorize would now refuse it: no token for an audience the broker itself
    would report inactive."""
    with running_chain(tmp_path) as chain:
        api = f"{chain.base}/test-roles/api"
        body = _roles_login(chain, 66, resource=api)
        family = chain.broker.store.get("refresh", secret_key(body["refresh_token"]))["family"]
        clients_file = chain.policy_dir / "test-clients.yaml"
        original = clients_file.read_text()
        clients = json.loads(original)
        next(c for c in clients["clients"] if c["id"] == ROLES_CLIENT)["resource_uris"] = []
        clients_file.write_text(json.dumps(clients))
        assert chain.broker.policy_holder.refresh(force=True)
        gone = _refresh(chain, ROLES_CLIENT, body["refresh_token"])
        assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant", gone.text
        assert "audience" in gone.json()["error_description"]
        assert chain.broker.provider.revocations.family_revoked(family)
        assert any(r.event.get("reason") == "refresh_token_policy"
                   and r.event["detail"].get("family_sha256") == hashlib.sha256(family.encode()).hexdigest()
                   for r in records(chain.broker.audit))
        clients_file.write_text(original)  # given back, the family stays ended
        assert chain.broker.policy_holder.refresh(force=True)
        assert _refresh(chain, ROLES_CLIENT, body["refresh_token"]).json()["error"] == "invalid_grant"


def test_the_configured_refresh_idle_limit_is_enforced(tmp_path: Path) -> None:
    with running_chain(tmp_path, {"tokens.refresh_token_idle_timeout": 2}) as chain:
        token = _roles_login(chain, 67)["refresh_token"]
        time.sleep(2.5)
        idle = _refresh(chain, ROLES_CLIENT, token)
        assert idle.status_code == 400 and idle.json()["error"] == "invalid_grant", idle.text
        assert "expired" in idle.json()["error_description"]


@pytest.mark.parametrize("change", ["person_leaves_the_team", "team_loses_its_roles_here"])
def test_a_refresh_re_evaluates_the_policy(tmp_path: Path, change: str) -> None:
    """A person removed from the team, or whose team's roles no longer grant anything on this
    client (where /authorize now answers access_denied), loses access at the next refresh."""
    with running_chain(tmp_path) as chain:
        body = _roles_login(chain, 58)
        refreshed = _refresh(chain, ROLES_CLIENT, body["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text
        assert _claims(refreshed.json()["access_token"])["team"] == "stap-team"
        teams_file = chain.policy_dir / "test-teams.yaml"
        teams = json.loads(teams_file.read_text())
        if change == "person_leaves_the_team":
            teams["teams"][0]["members"] = [{"group": "nobody-any-more"}]
        else:
            for role in teams["teams"][0]["roles"]:
                role["grants"].pop(ROLES_CLIENT, None)
        teams_file.write_text(json.dumps(teams))
        assert chain.broker.policy_holder.refresh(force=True)
        query, _, _ = chain.login(Browser(username="s58", organisation=STEPUP_ORG), client_id=ROLES_CLIENT,
                                  scope="openid roles.agenda offline_access")
        assert query["error"] == ["access_denied"], query  # what /authorize says now
        gone = _refresh(chain, ROLES_CLIENT, refreshed.json()["refresh_token"])
        assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"
        assert any(r.event.get("reason") == "refresh_token_policy" for r in records(chain.broker.audit))


# -- introspection and revocation -----------------------------------------------------------------------


def test_introspection_needs_authentication_and_answers_only_for_the_tokens_audience(chain: Chain) -> None:
    token = _rp_login(chain)["access_token"]
    anonymous = requests.post(f"{chain.base}/introspect", data={"token": token}, timeout=5)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
    own = _post(chain, "introspect", chain.rp_id, token=token).json()
    assert own["active"] is True and own["client_id"] == chain.rp_id and own["token_type"] == "Bearer"
    assert own["acr"] and own["scope"].split() == ["openid", "profile", "offline_access"]
    assert _post(chain, "introspect", API_CLIENT, token=token).json() == {"active": False}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_tokens_are_inactive_everywhere(chain: Chain, forgery: str) -> None:
    token = _rp_login(chain)["access_token"]
    forged = forge(token, forgery, f"{chain.base}/jwks.json")
    assert _post(chain, "introspect", chain.rp_id, token=forged).json() == {"active": False}
    assert requests.get(f"{chain.base}/userinfo", headers={"Authorization": f"Bearer {forged}"},
                        timeout=5).status_code == 401
    exchanged = _exchange(chain, forged, client_id=ROLES_CLIENT)
    assert exchanged.status_code == 400 and exchanged.json()["error"] == "invalid_grant"
    assert _post(chain, "revoke", chain.rp_id, token=forged).status_code == 200  # RFC 7009: unknown
    assert _post(chain, "introspect", chain.rp_id, token=token).json()["active"] is True


def test_a_revoked_token_is_inactive_on_every_instance_and_its_use_is_audited(chain: Chain) -> None:
    body = _rp_login(chain)
    token = body["access_token"]
    assert requests.get(f"{chain.base}/userinfo", headers={"Authorization": f"Bearer {token}"},
                        timeout=5).status_code == 200
    assert _post(chain, "revoke", ROLES_CLIENT, token=token).status_code == 200  # not its token: no effect
    assert _post(chain, "introspect", chain.rp_id, token=token).json()["active"] is True
    assert _post(chain, "revoke", chain.rp_id, token=token).status_code == 200
    assert _post(chain, "introspect", chain.rp_id, token=token).json() == {"active": False}
    assert requests.get(f"{chain.base}/userinfo", headers={"Authorization": f"Bearer {token}"},
                        timeout=5).status_code == 401
    other_instance = create_app(chain.broker.settings).test_client()
    seen = other_instance.post("/introspect", data={"token": token, **_auth(chain, chain.rp_id)})
    assert seen.get_json() == {"active": False}
    jti = _claims(token)["jti"]
    events = [r.event for r in records(chain.broker.audit)]
    assert any(e["type"] == "token.revoked" and e["detail"].get("jti") == jti for e in events)
    assert any(e["type"] == "introspection.revoked" and e["detail"].get("jti") == jti for e in events)
    # Revoking the refresh token ends the family.
    assert _post(chain, "revoke", chain.rp_id, token=body["refresh_token"]).status_code == 200
    dead = _refresh(chain, chain.rp_id, body["refresh_token"])
    assert dead.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("hint", ["bogus", "refresh_token"])
def test_a_token_type_hint_does_not_stop_the_token_being_found(chain: Chain, hint: str) -> None:
    """RFC 7662 §2.1, RFC 7009 §2.1: an unknown or wrong hint is no refusal; the broker
    looks among all its token types."""
    body = _roles_login(chain, 41 if hint == "bogus" else 42)
    token = body["access_token"]
    seen = _post(chain, "introspect", ROLES_CLIENT, token=token, token_type_hint=hint)
    assert seen.status_code == 200 and seen.json()["active"] is True
    assert _post(chain, "revoke", ROLES_CLIENT, token=token, token_type_hint=hint).status_code == 200
    gone = _post(chain, "introspect", ROLES_CLIENT, token=token, token_type_hint=hint)
    assert gone.json() == {"active": False}
    family = _post(chain, "revoke", ROLES_CLIENT, token=body["refresh_token"], token_type_hint=hint)
    assert family.status_code == 200
    assert _refresh(chain, ROLES_CLIENT, body["refresh_token"]).json()["error"] == "invalid_grant"


CSRF_FIELD = re.compile(rf'name="{LOGOUT_CONFIRMATION}" value="([^"]+)"')


def _rp_logout(chain: Chain, browser: Browser, sent: dict[str, str], method: str) -> requests.Response:
    """The RP sends the browser to /logout: a top-level GET (with the browser's SameSite=Lax
    cookies), or a cross-site form POST (without them), whose redirect the browser follows."""
    if method == "GET":
        return browser.http.get(f"{chain.base}/logout", params=sent, timeout=5)
    posted = requests.post(f"{chain.base}/logout", data=sent, allow_redirects=False, timeout=5)
    assert posted.status_code == 303 and "Set-Cookie" not in posted.headers
    return browser.http.get(chain.base + posted.headers["Location"], timeout=5)


def _confirm_logout(chain: Chain, browser: Browser, page: requests.Response,
                    sent: dict[str, str]) -> requests.Response:
    csrf = CSRF_FIELD.search(page.text)
    assert csrf is not None, page.text[:300]
    confirmed = {LOGOUT_CONFIRMATION: csrf.group(1), **sent}
    return browser.http.post(f"{chain.base}/logout", data=confirmed, timeout=5)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("sso_session", ["live", "idled_out", "replaced_by_a_new_login"])
def test_logout_ends_the_sessions_tokens(chain: Chain, sso_session: str, method: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """At once with a hint of the browser's live session. When the session has idled out (its
    record is gone), or a newer login in this browser replaced it, while the app kept its
    tokens alive by refreshing, the hint is no current session: the person is asked, and once
    they confirm, the hinted session ends too, as the browser shows it logged in with it. Its
    tokens stay revoked until the session's real end, also when the person's IdP login
    (``auth_time``) was older."""
    import dataclasses

    import idbroker.login.views as login_views

    finish = login_views._finish_login

    def idp_login_this_morning(txn: Any, organisation: Any, identity: Any) -> Any:
        earlier = dataclasses.replace(identity, auth_time=int(time.time()) - 6 * 3600)
        return finish(txn, organisation, earlier)

    monkeypatch.setattr(login_views, "_finish_login", idp_login_this_morning)
    query, request, browser = chain.login(scope="openid offline_access")
    monkeypatch.setattr(login_views, "_finish_login", finish)
    body = chain.redeem(query["code"][0], request["verifier"]).json()
    cookie = browser.http.cookies.get("idb_session")
    live = chain.broker.sessions.get(cookie)
    assert live is not None
    if sso_session != "live":
        chain.broker.sessions.end(cookie)  # what the idle timeout does
        body = _refresh(chain, chain.rp_id, body["refresh_token"]).json() | {"id_token": body["id_token"]}
    if sso_session == "replaced_by_a_new_login":
        chain.login(browser)
    before = chain.broker.audit.head().seq
    sent = {"id_token_hint": body["id_token"]}
    page = _rp_logout(chain, browser, sent, method)
    if sso_session == "live":
        assert LOGOUT_CONFIRMATION not in page.text  # the hint is the current session: no question
    else:
        _confirm_logout(chain, browser, page, sent)
    ended = [r.event["sid"] for r in records(chain.broker.audit)
             if r.seq > before and r.event["type"] == "session.ended"]
    assert _claims(body["access_token"])["sid"] in ended
    assert _post(chain, "introspect", chain.rp_id, token=body["access_token"]).json() == {"active": False}
    dead = _refresh(chain, chain.rp_id, body["refresh_token"])
    assert dead.json()["error"] == "invalid_grant"
    revoked = chain.broker.store.get("revoked-sid", live.sid)  # until the session's real end
    assert revoked["until"] == int(live.created_at + chain.broker.settings.session.absolute_timeout)


@pytest.mark.parametrize("sso_session", ["live", "idled_out"])
@pytest.mark.parametrize("sender", ["a_server", "another_browser"])
def test_an_id_token_alone_ends_nobodys_session(chain: Chain, sso_session: str, sender: str) -> None:
    """RP-Initiated Logout asks the person whose session it is: a hint sent without that
    browser's cookies (from a server holding the ID token, or another browser, even one that
    confirms) ends nothing, whether the session is live or has idled out."""
    query, request, browser = chain.login(scope="openid offline_access")
    body = chain.redeem(query["code"][0], request["verifier"]).json()
    if sso_session == "idled_out":
        chain.broker.sessions.end(browser.http.cookies.get("idb_session"))
    hint = {"id_token_hint": body["id_token"]}
    if sender == "a_server":
        reply = requests.get(f"{chain.base}/logout", params=hint, allow_redirects=False, timeout=5)
        assert reply.status_code == 200 and CSRF_FIELD.search(reply.text)  # only a question
    else:
        stranger = Browser()
        _confirm_logout(chain, stranger, _rp_logout(chain, stranger, hint, "POST"), hint)
    assert _post(chain, "introspect", chain.rp_id, token=body["access_token"]).json()["active"] is True
    assert _refresh(chain, chain.rp_id, body["refresh_token"]).status_code == 200
    if sso_session == "live":
        url, _ = chain.authorize_url(prompt="none")
        silent = browser.http.get(url, allow_redirects=False, timeout=5)
        assert "code=" in silent.headers["Location"]  # still signed in, and nothing it issues is dead


def test_a_cross_site_post_with_a_made_up_confirmation_logs_nobody_out(chain: Chain) -> None:
    """Our confirmation field makes a POST the person's answer, which must then be this
    browser's own: a made-up one (beside the attacker's own ID token) is refused, the person
    stays in. An RP's own ``csrf_token`` field (as form frameworks post) is no confirmation:
    its POST is answered as its GET."""
    query, request, _ = chain.login()
    attackers_id_token = chain.redeem(query["code"][0], request["verifier"]).json()["id_token"]
    _, _, victim = chain.login()
    sent = {"id_token_hint": attackers_id_token, "post_logout_redirect_uri": f"{chain.base}/test-rp/bye"}
    # Posted cross-site: without the victim's SameSite=Lax cookies, but what it sets, they keep.
    forged = requests.post(f"{chain.base}/logout", data={**sent, LOGOUT_CONFIRMATION: "x"}, timeout=5,
                           allow_redirects=False)
    extract_cookies_to_jar(victim.http.cookies, forged.request, forged.raw)
    assert forged.status_code == 400 and "Location" not in forged.headers
    assert victim.http.cookies.get("idb_session")
    url, _ = chain.authorize_url(prompt="none")
    assert "code=" in victim.http.get(url, allow_redirects=False, timeout=5).headers["Location"]
    rp_form = requests.post(f"{chain.base}/logout", data={**sent, "csrf_token": "the-rp's-own"}, timeout=5,
                            allow_redirects=False)
    assert rp_form.status_code == 303 and rp_form.headers["Location"].startswith("/logout?")


@pytest.mark.parametrize("path", ["/authorize", "/logout", "/stepup/made-up/cancel", "/team/made-up",
                                  "/stepup/made-up/totp", "/stepup/made-up/activate",
                                  "/stepup/made-up/webauthn/options"])
def test_a_post_from_another_site_never_replaces_the_browser_binding(chain: Chain, path: str) -> None:
    """Any form another site posts brings none of our SameSite=Lax cookies: whatever it is
    answered, no new browser binding is set over the person's, so their confirmed logout still
    ends their idled-out session (which only the browser that logged in with it may end). An
    authorization request may come by POST (OIDC Core §3.1.2.1): it is answered as the same
    request by GET, which brings the cookies."""
    query, request, browser = chain.login(scope="openid offline_access")
    body = chain.redeem(query["code"][0], request["verifier"]).json()
    chain.broker.sessions.end(browser.http.cookies.get("idb_session"))  # idled out
    authorization = parse_qsl(urlsplit(chain.authorize_url()[0]).query)
    form = authorization if path == "/authorize" else [("x", "1")]
    posted = requests.post(f"{chain.base}{path}", data=form, allow_redirects=False, timeout=5)
    assert "idb_browser" not in posted.headers.get("Set-Cookie", "")
    if path == "/authorize":
        assert posted.status_code == 303
        assert sorted(parse_qsl(urlsplit(posted.headers["Location"]).query)) == sorted(authorization)
    extract_cookies_to_jar(browser.http.cookies, posted.request, posted.raw)
    sent = {"id_token_hint": body["id_token"]}
    _confirm_logout(chain, browser, browser.http.get(f"{chain.base}/logout", params=sent, timeout=5), sent)
    assert _post(chain, "introspect", chain.rp_id, token=body["access_token"]).json() == {"active": False}


def test_a_code_of_a_logged_out_session_gives_no_tokens(chain: Chain) -> None:
    """A code issued just before the person logged out is refused afterwards, and recorded."""
    query, request, browser = chain.login()
    _confirm_logout(chain, browser, browser.http.get(f"{chain.base}/logout", timeout=5), {})
    before = chain.broker.audit.head().seq
    reply = chain.redeem(query["code"][0], request["verifier"])
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_grant"
    assert [r.event["type"] for r in records(chain.broker.audit) if r.seq > before] == ["refusal"]


# -- token exchange ---------------------------------------------------------------------------------------


def _exchange(chain: Chain, subject_token: str, *, client_id: str = ROLES_CLIENT,
              **form: str) -> requests.Response:
    form = {"subject_token_type": ACCESS_TOKEN_TYPE, "audience": API_CLIENT} | form
    return _post(chain, "token", client_id, grant_type=TOKEN_EXCHANGE, subject_token=subject_token, **form)


def test_token_exchange_keeps_person_team_and_acr_and_names_the_caller(chain: Chain) -> None:
    subject = _roles_login(chain, 59)["access_token"]
    reply = _exchange(chain, subject, scope="api.lezen")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE and body["token_type"] == "Bearer"
    new, old = _claims(body["access_token"]), _claims(subject)
    assert new["aud"] == API_CLIENT and new["scope"] == "api.lezen" and new["act"] == {"sub": ROLES_CLIENT}
    assert (new["team"], new["organisation"], new["acr"], new["auth_time"]) == (
        old["team"], old["organisation"], old["acr"], old["auth_time"])
    assert new["exp"] <= old["exp"]
    introspected = _post(chain, "introspect", API_CLIENT, token=body["access_token"]).json()
    assert introspected["active"] is True and introspected["act"] == {"sub": ROLES_CLIENT}
    assert any(r.event["type"] == "token.exchanged" for r in records(chain.broker.audit))


def test_an_exchange_not_signed_is_not_recorded(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exchanged token is signed before ``token.exchanged`` is recorded: a signing failure
    answers an error and leaves no record of a token that never left."""
    subject = _roles_login(chain, 59)["access_token"]

    def signing_fails(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("the test broke the signing")

    monkeypatch.setattr(chain.broker.provider.keys, "sign", signing_fails)
    before = chain.broker.audit.head().seq
    _assert_json_answer(_exchange(chain, subject, scope="api.lezen"), 500, "server_error")
    assert [r.event for r in records(chain.broker.audit)
            if r.seq > before and r.event["type"] == "token.exchanged"] == []


def test_token_exchange_refusals(chain: Chain) -> None:
    subject = _roles_login(chain, 60)["access_token"]
    forbidden = _exchange(chain, subject, audience="test-rp")
    assert forbidden.status_code == 400 and forbidden.json()["error"] == "invalid_target"
    too_much = _exchange(chain, subject, scope="api.schrijven")
    assert too_much.json()["error"] == "invalid_scope"
    not_allowed = _exchange(chain, _rp_login(chain)["access_token"], client_id=chain.rp_id)
    assert not_allowed.json()["error"] == "unauthorized_client"
    foreign = _exchange(chain, _rp_login(chain)["access_token"])  # test-rp's token, at test-roles
    assert foreign.json()["error"] == "invalid_grant"
    assert _post(chain, "revoke", ROLES_CLIENT, token=subject).status_code == 200
    revoked = _exchange(chain, subject)
    assert revoked.json()["error"] == "invalid_grant"
    wrong_type = _exchange(chain, subject, subject_token_type="urn:ietf:params:oauth:token-type:id_token")
    assert wrong_type.json()["error"] == "invalid_request"


def _exchange_repeating(chain: Chain, subject_token: str, *pairs: tuple[str, str]) -> requests.Response:
    """An exchange with ``pairs`` added as given: a parameter may come twice."""
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE} | _auth(chain, ROLES_CLIENT)
    return requests.post(f"{chain.base}/token", data=[*form.items(), *pairs], timeout=10)


def test_token_exchange_refuses_what_it_would_not_act_on(chain: Chain) -> None:
    subject = _roles_login(chain, 63)["access_token"]
    other_persons = _rp_login(chain)["access_token"]
    token_type = "urn:ietf:params:oauth:token-type:"
    refusals = {
        "invalid_request": [
            _exchange(chain, subject, actor_token="garbage", actor_token_type=ACCESS_TOKEN_TYPE),
            _exchange(chain, subject, actor_token=other_persons, actor_token_type=ACCESS_TOKEN_TYPE),
            _exchange(chain, subject, actor_token_type=ACCESS_TOKEN_TYPE),
            _exchange(chain, subject, requested_token_type=f"{token_type}refresh_token"),
            _exchange(chain, subject, requested_token_type=f"{token_type}id_token"),
            _exchange(chain, subject, requested_token_type=f"{token_type}jwt"),
            _post(chain, "token", ROLES_CLIENT, grant_type=TOKEN_EXCHANGE, audience=API_CLIENT,
                  subject_token_type=ACCESS_TOKEN_TYPE),
            _post(chain, "token", ROLES_CLIENT, grant_type=TOKEN_EXCHANGE, audience=API_CLIENT,
                  subject_token=subject),
            _exchange_repeating(chain, subject, ("audience", API_CLIENT), ("subject_token", other_persons)),
            _exchange_repeating(chain, subject, ("audience", API_CLIENT), ("scope", "api.lezen"),
                                ("scope", "api.lezen")),
        ],
        "invalid_target": [
            _exchange_repeating(chain, subject, ("audience", API_CLIENT), ("audience", "test-rp")),
            _exchange_repeating(chain, subject, ("audience", "test-rp"), ("audience", API_CLIENT)),
            _exchange_repeating(chain, subject, ("resource", f"{chain.base}/test-roles/api"),
                                ("resource", f"{chain.base}/test-roles/api")),
            _exchange(chain, subject, resource=f"{chain.base}/test-roles/api"),  # and audience test-api
            _exchange_repeating(chain, subject, ("resource", NO_URI)),
        ],
    }
    for error, replies in refusals.items():
        assert [(r.status_code, r.json()["error"]) for r in replies] == [(400, error)] * len(replies)
    descriptions = [reply.json()["error_description"] for reply in refusals["invalid_request"]]
    assert "the authenticated client is the actor" in descriptions[0] and ACCESS_TOKEN_TYPE in descriptions[3]
    # ... and the subject token was not spent: the same request without the extras is answered
    assert _exchange(chain, subject, requested_token_type=ACCESS_TOKEN_TYPE).status_code == 200


@pytest.mark.parametrize("scope", ['api.lezen "evil\\ é', "api.lezen " + "x" * 30_000])
def test_a_refused_scope_is_not_echoed(chain: Chain, scope: str) -> None:
    reply = _exchange(chain, _roles_login(chain, 64)["access_token"], scope=scope)
    assert (reply.status_code, reply.json()["error"]) == (400, "invalid_scope")
    description = reply.json()["error_description"]
    assert "evil" not in description and "xxx" not in description and len(description) < 200


def test_an_expired_subject_token_cannot_be_exchanged(chain: Chain) -> None:
    subject = _roles_login(chain, 49)["access_token"]
    claims = _claims(subject) | {"exp": int(time.time()) - 5, "iat": int(time.time()) - 400}
    expired = chain.broker.keys.sign(claims, typ="at+jwt")
    reply = _exchange(chain, expired)
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_grant"


def test_discovery_names_the_new_endpoints_and_grants(chain: Chain) -> None:
    metadata = requests.get(f"{chain.base}/.well-known/openid-configuration", timeout=5).json()
    assert metadata["introspection_endpoint"] == f"{chain.base}/introspect"
    assert metadata["revocation_endpoint"] == f"{chain.base}/revoke"
    assert set(metadata["grant_types_supported"]) == {"authorization_code", "refresh_token", TOKEN_EXCHANGE}
    assert set(metadata["subject_types_supported"]) == {"pairwise", "public"}
    for endpoint in ("token", "introspection", "revocation"):  # RFC 8414 §2: with private_key_jwt
        assert "private_key_jwt" in metadata[f"{endpoint}_endpoint_auth_methods_supported"]
        algorithms = metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
        assert "ES256" in algorithms and not {"none", "HS256"} & set(algorithms)
    oauth = requests.get(f"{chain.base}/.well-known/oauth-authorization-server", timeout=5)
    assert oauth.status_code == 200 and oauth.json() == metadata


def test_discovery_lists_every_claim_the_id_token_and_userinfo_carry(chain: Chain) -> None:
    """OIDC Discovery §3 claims_supported: organisation, team and roles were left out."""
    metadata = requests.get(f"{chain.base}/.well-known/openid-configuration", timeout=5).json()
    body = _roles_login(chain, 62, scope="openid profile roles.agenda")
    userinfo = requests.get(f"{chain.base}/userinfo", timeout=5,
                            headers={"Authorization": f"Bearer {body['access_token']}"}).json()
    carried = set(_claims(body["id_token"])) | set(userinfo)
    assert {"organisation", "team", "roles"} <= carried
    assert carried - {"azp", "at_hash", "c_hash", "jti", "nbf"} <= set(metadata["claims_supported"])


def test_the_readmes_resource_server_example_works_with_pyjwt(chain: Chain) -> None:
    """The README's few lines of PyJWT accept a substantial token for their audience and
    answer a low one with the RFC 9470 challenge."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    code = readme.split("With PyJWT:\n\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    code = code.replace("https://idbroker.example", chain.base).replace('"zvh-casus"', f'"{API_CLIENT}"')
    exec(code, namespace)  # noqa: S102 - the README's own text is what is under test
    substantial = chain.broker.keys.sign(_claims(_roles_login(chain, 48)["access_token"]) | {
        "aud": API_CLIENT, "acr": "http://eidas.europa.eu/LoA/substantial"}, typ="at+jwt")
    assert namespace["authorize"](substantial)["team"] == "stap-team"
    low = _exchange(chain, _roles_login(chain, 48)["access_token"]).json()["access_token"]
    with pytest.raises(namespace["Challenge"], match=r"insufficient_user_authentication.*acr_values="):
        namespace["authorize"](low)
    with pytest.raises(Exception, match=r"(?i)audience"):
        namespace["authorize"](_rp_login(chain)["access_token"])


# -- the token endpoints' HTTP (served beside Flask: idbroker.oidc.token_endpoints) ----------------------


def _assert_json_answer(reply: requests.Response, status: int, error: str | None = None) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert "Traceback" not in reply.text
    body = reply.json()
    if error is not None:
        assert body["error"] == error, body
    return body


def test_token_endpoints_answer_other_methods_large_and_non_form_bodies_with_rfc_errors(chain: Chain) -> None:
    for path in ("token", "introspect", "revoke"):
        got = requests.get(f"{chain.base}/{path}", timeout=5)
        _assert_json_answer(got, 405, "invalid_request")
        assert got.headers["Allow"] == "POST"
        too_large = requests.post(f"{chain.base}/{path}", data={"token": "x" * (70 * 1024)}, timeout=5)
        _assert_json_answer(too_large, 413, "invalid_request")
    # JSON is not how OAuth clients talk: no parameters were sent, and the answer says so.
    as_json = requests.post(f"{chain.base}/token", json={"grant_type": "refresh_token"}, timeout=5)
    _assert_json_answer(as_json, 400, "unsupported_grant_type")
    not_utf8 = requests.post(f"{chain.base}/token", data=b"grant_type=\xff\xfe",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)
    _assert_json_answer(not_utf8, 400, "unsupported_grant_type")


def test_token_parameters_count_only_in_the_body(chain: Chain) -> None:
    """RFC 6749 §3.2: a refresh token in the URL (and so in proxy logs) is not accepted."""
    body = _roles_login(chain, 61)
    query = f"grant_type=refresh_token&refresh_token={body['refresh_token']}"
    in_query = requests.post(f"{chain.base}/token?{query}", data=_auth(chain, ROLES_CLIENT), timeout=5)
    _assert_json_answer(in_query, 400, "unsupported_grant_type")
    # The token was not spent by that attempt.
    reply = _refresh(chain, ROLES_CLIENT, body["refresh_token"])
    answer = _assert_json_answer(reply, 200)
    assert reply.headers["Pragma"] == "no-cache" and answer["refresh_token"] != body["refresh_token"]


def test_token_endpoints_refuse_plain_http_to_a_public_host(chain: Chain) -> None:
    """authlib's transport check: http is for loopback only (behind a TLS proxy, configure
    http.trusted_proxies so the broker sees https). Recorded like every other refusal."""
    before = chain.broker.audit.head().seq
    reply = requests.post(f"{chain.base}/token", data={"grant_type": "refresh_token", "refresh_token": "x",
                                                       "client_id": ROLES_CLIENT},
                          headers={"Host": "idbroker.keten.example"}, timeout=5)
    _assert_json_answer(reply, 400, "insecure_transport")
    refused = [r.event for r in records(chain.broker.audit) if r.seq > before]
    assert [(e["type"], e["reason"], e.get("client")) for e in refused] == [
        ("refusal", "insecure_transport", None)]  # the client_id anyone can type is not the client
    assert refused[0]["detail"]["claimed_client_id"] == ROLES_CLIENT


def test_token_endpoint_refusals_carry_the_callers_request_id_and_address(chain: Chain) -> None:
    reply = requests.post(f"{chain.base}/token", data={"grant_type": "refresh_token", "refresh_token": "nope",
                                                       **_auth(chain, ROLES_CLIENT)},
                          headers={"X-Request-ID": "req-token-endpoint-61", "User-Agent": "api-gateway/1.0"},
                          timeout=5)
    _assert_json_answer(reply, 400, "invalid_grant")
    refusals = [r.event for r in records(chain.broker.audit, client=ROLES_CLIENT)
                if r.event.get("correlation_id") == "req-token-endpoint-61"]
    assert [(e["type"], e["reason"], e["source_ip"], e["user_agent"]) for e in refusals] == [
        ("refusal", "invalid_grant", "127.0.0.1", "api-gateway/1.0")]


#: Everything a token endpoint might need in one form: what decides is the client authentication.
_ANY_ENDPOINT = {"grant_type": "refresh_token", "refresh_token": "x", "token": "x"}


def _basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize("path", ["token", "introspect", "revoke"])
@pytest.mark.parametrize("authorization", [
    pytest.param("Basic ", id="empty"), pytest.param(_basic(b"\xff:\xff"), id="not-utf8"),
    pytest.param("Basic \xe9", id="not-ascii"), pytest.param("Basic !!!", id="not-base64"),
    pytest.param(_basic(Chain.basic_id.encode()), id="no-colon"),
    pytest.param("Basic\t " + _basic(b"\xff:\xff").split()[1], id="tab-separated-not-utf8")])
def test_unreadable_basic_credentials_are_invalid_client_with_a_basic_challenge(
        chain: Chain, path: str, authorization: str) -> None:
    """RFC 6749 §5.2: a client that tried the Authorization header gets 401 and a challenge."""
    reply = requests.post(f"{chain.base}/{path}", data=_ANY_ENDPOINT, timeout=5,
                          headers={"Authorization": authorization})
    _assert_json_answer(reply, 401, "invalid_client")
    assert reply.headers["WWW-Authenticate"].startswith("Basic ")


@pytest.mark.parametrize("path", ["token", "introspect", "revoke"])
def test_two_client_authentication_methods_are_refused_before_either_is_checked(chain: Chain,
                                                                               path: str) -> None:
    """RFC 6749 §2.3: one method per request; §5.2: more than one is ``invalid_request``."""
    with_assertion = _ANY_ENDPOINT | _auth(chain, ROLES_CLIENT)
    wrong_basic = requests.post(f"{chain.base}/{path}", data=with_assertion, auth=(chain.basic_id, "wrong"),
                                timeout=5)
    _assert_json_answer(wrong_basic, 400, "invalid_request")
    tab_basic = _basic(f"{chain.basic_id}:{BASIC_SECRET}".encode()).replace("Basic ", "Basic\t ")
    tab_separated = requests.post(f"{chain.base}/{path}", data=with_assertion, timeout=5,
                                  headers={"Authorization": tab_basic})  # authlib reads it as Basic
    _assert_json_answer(tab_separated, 400, "invalid_request")
    secret_twice = requests.post(f"{chain.base}/{path}", data=_ANY_ENDPOINT | {"client_secret": BASIC_SECRET},
                                 auth=(chain.basic_id, BASIC_SECRET), timeout=5)
    _assert_json_answer(secret_twice, 400, "invalid_request")
    # The assertion was not looked at: its jti is unused, and on its own it authenticates.
    alone = requests.post(f"{chain.base}/{path}", data=with_assertion, timeout=5)
    if path == "token":
        _assert_json_answer(alone, 400, "invalid_grant")  # past client authentication
    else:
        _assert_json_answer(alone, 200)


def test_client_id_beside_basic_credentials_is_no_second_method(chain: Chain) -> None:
    """RFC 6749 §2.2/§3.2.1: ``client_id`` identifies the client, it does not authenticate it."""
    reply = requests.post(f"{chain.base}/introspect", data={"token": "x", "client_id": chain.basic_id},
                          auth=(chain.basic_id, BASIC_SECRET), timeout=5)
    assert _assert_json_answer(reply, 200) == {"active": False}


@pytest.mark.parametrize("endpoint", ["token", "introspect", "revoke"])
def test_a_client_id_naming_another_client_than_the_credentials_is_invalid_client(
        chain: Chain, endpoint: str) -> None:
    """A refusal is audited under no client: the form's ``client_id`` may not name someone
    else. The trail names the client whose credentials were presented (claimed_client_id)
    and, where it differs, the one the form named (form_client_id)."""
    form = {"token": "x", "grant_type": "refresh_token", "refresh_token": "x", "client_id": ROLES_CLIENT}
    for n, (auth, presented) in enumerate((({"auth": (chain.basic_id, BASIC_SECRET)}, chain.basic_id),
                                           ({"data": _auth(chain, chain.rp_id)}, chain.rp_id),
                                           ({"auth": (ROLES_CLIENT, "not-its-secret")}, ROLES_CLIENT))):
        data = {**form, **auth.get("data", {}), "client_id": ROLES_CLIENT}
        request_id = f"req-claimed-client-{endpoint}-{n}"
        reply = requests.post(f"{chain.base}/{endpoint}", data=data, auth=auth.get("auth"), timeout=5,
                              headers={"X-Request-ID": request_id})
        _assert_json_answer(reply, 401, "invalid_client")
        # Recorded at every endpoint, but not under the client it names: it never authenticated as that.
        assert [(e.get("client"), e["detail"].get("claimed_client_id"), e["detail"].get("form_client_id"),
                 e["detail"].get("endpoint")) for e in _refusals_of(chain, request_id)] == [
            (None, presented, None if presented == ROLES_CLIENT else ROLES_CLIENT,
             {"introspect": "introspection", "revoke": "revocation"}.get(endpoint))]


@pytest.mark.parametrize("endpoint", ["token", "introspect", "revoke"])
@pytest.mark.parametrize("credentials", ["basic", "assertion"])
def test_a_refused_secret_or_key_names_the_client_it_was_tried_for(
        chain: Chain, endpoint: str, credentials: str) -> None:
    """Without a form client_id the refusal said nothing of whose secret (Basic user) or key
    (a forged assertion's sub) was being tried; kept as claimed_client_id, never as client."""
    form = {"token": "x", "grant_type": "refresh_token", "refresh_token": "x"}
    request_id = f"req-tried-client-{endpoint}-{credentials}"
    if credentials == "basic":
        reply = requests.post(f"{chain.base}/{endpoint}", data=form, auth=(ROLES_CLIENT, "a-guess"),
                              timeout=5, headers={"X-Request-ID": request_id})
    else:
        forged = jwt.encode({"alg": "ES256", "kid": chain.rp_key.kid},
                            {"iss": chain.rp_id, "sub": chain.rp_id, "aud": f"{chain.base}/token",
                             "jti": secrets.token_urlsafe(16), "exp": int(time.time()) + 60},
                            ECKey.generate_key("P-256", private=True))
        reply = requests.post(f"{chain.base}/{endpoint}", timeout=5, headers={"X-Request-ID": request_id},
                              data={**form, "client_assertion": forged, "client_assertion_type":
                                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    assert reply.json()["error"] == "invalid_client"
    named = ROLES_CLIENT if credentials == "basic" else chain.rp_id
    refused = _refusals_of(chain, request_id)
    assert [(e.get("client"), e["detail"].get("claimed_client_id")) for e in refused] == [(None, named)]


@pytest.mark.parametrize(("endpoint", "name"), [
    ("token", "client_assertion"), ("token", "grant_type"), ("token", "refresh_token"),
    ("introspect", "token"), ("revoke", "token"), ("introspect", "client_assertion")])
def test_a_repeated_parameter_is_invalid_request(chain: Chain, endpoint: str, name: str) -> None:
    """RFC 6749 §3.2: which of two assertions, tokens or grant types counts is not guessed."""
    token = _rp_login(chain)["refresh_token"]
    form = {"grant_type": "refresh_token", "refresh_token": token, "token": token,
            **_auth(chain, chain.rp_id)}
    pairs = [*form.items(), (name, form[name])]
    request_id = f"req-repeated-{endpoint}-{name}".replace("_", "-")
    reply = requests.post(f"{chain.base}/{endpoint}", data=pairs, headers={"X-Request-ID": request_id},
                          timeout=5)
    assert _assert_json_answer(reply, 400, "invalid_request")["error_description"] == (
        f"{name} is sent more than once")
    if endpoint == "token":
        assert [e["reason"] for e in _refusals_of(chain, request_id)] == ["invalid_request"]
    assert _refresh(chain, chain.rp_id, token).status_code == 200  # nothing was spent or revoked


def test_a_refusal_is_not_recorded_under_a_client_an_unproven_assertion_names(chain: Chain) -> None:
    """authlib takes the client an assertion names before checking it: not proof enough."""
    assertion = chain.assertion(iss=ROLES_CLIENT, sub=ROLES_CLIENT, aud="https://elsewhere.example/token")
    reply = requests.post(f"{chain.base}/token", timeout=5,
                          headers={"X-Request-ID": "req-unproven-assertion"}, data={
                              "grant_type": "refresh_token", "refresh_token": "x",
                              "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion})
    _assert_json_answer(reply, 400, "invalid_client")  # 401 only for a client that tried Basic (§5.2)
    assert [e.get("client") for e in _refusals_of(chain, "req-unproven-assertion")] == [None]


@pytest.mark.parametrize("header", ["\x0b ", "\x0c ", "\xa0 \xa0", "\x85 "])
def test_an_authorization_header_of_whitespace_is_invalid_client(chain: Chain, header: str) -> None:
    """Whitespace that HTTP servers pass on (only space and tab are stripped) and authlib's
    Basic parser cannot split: refused, never a 500. Through WSGI, as no HTTP client sends it."""
    client = create_app(chain.broker.settings, broker=chain.broker).test_client()
    for path in ("/token", "/introspect", "/revoke"):
        reply = client.post(path, data=_ANY_ENDPOINT, headers={"Authorization": header})
        assert reply.status_code == 401 and reply.get_json()["error"] == "invalid_client", (path, reply.data)


def _refusals_of(chain: Chain, request_id: str) -> list[dict[str, Any]]:
    return [r.event for r in records(chain.broker.audit) if r.event.get("correlation_id") == request_id]


@pytest.mark.parametrize("grant_type", [
    pytest.param("refresh_token\n", id="newline"), pytest.param("a" * 50, id="hex-like"),
    pytest.param("x\x00", id="nul"), pytest.param("client_credentials", id="not-served")])
def test_an_unsupported_grant_type_is_refused_and_audited_by_its_hash_only(chain: Chain,
                                                                          grant_type: str) -> None:
    """Whatever the caller put in ``grant_type`` is its own text: the trail gets its SHA-256."""
    digest = hashlib.sha256(grant_type.encode()).hexdigest()
    request_id = f"req-grant-type-{digest[:16]}"
    form = {"grant_type": grant_type, **_auth(chain, ROLES_CLIENT)}
    reply = requests.post(f"{chain.base}/token", data=form, headers={"X-Request-ID": request_id}, timeout=5)
    _assert_json_answer(reply, 400, "unsupported_grant_type")
    # Refused before client authentication: the client_id is only what the caller claims.
    events = _refusals_of(chain, request_id)
    assert [(e["type"], e["reason"], e.get("client"), e["detail"]) for e in events] == [
        ("refusal", "unsupported_grant_type", None,
         {"grant_type_sha256": digest, "claimed_client_id": ROLES_CLIENT})]


def test_a_served_grant_type_is_audited_as_sent(chain: Chain) -> None:
    reply = requests.post(f"{chain.base}/token", data={"grant_type": "refresh_token", "refresh_token": "x"},
                          headers={"X-Request-ID": "req-grant-type-served"}, timeout=5)
    _assert_json_answer(reply, 401, "invalid_client")
    assert [(e["reason"], e["detail"]) for e in _refusals_of(chain, "req-grant-type-served")] == [
        ("invalid_client", {"grant_type": "refresh_token"})]


@pytest.mark.parametrize("client_id", [pytest.param("roles\x01client", id="control-character"),
                                       pytest.param("c" * 5000, id="5000-characters")])
def test_a_client_id_the_policy_does_not_know_is_recorded_by_its_hash_only(chain: Chain,
                                                                          client_id: str) -> None:
    request_id = f"req-unsafe-client-{len(client_id)}"
    for grant_type in ("refresh_token", "a" * 50):
        reply = requests.post(f"{chain.base}/token", data={"grant_type": grant_type, "client_id": client_id},
                              headers={"X-Request-ID": request_id}, timeout=5)
        assert reply.status_code in (400, 401) and reply.json()["error"] in ("invalid_client",
                                                                            "unsupported_grant_type")
    events = _refusals_of(chain, request_id)
    assert [(e["reason"], "client" in e, e["source_ip"]) for e in events] == [
        ("invalid_client", False, "127.0.0.1"), ("unsupported_grant_type", False, "127.0.0.1")]
    claimed = hashlib.sha256(client_id.encode()).hexdigest()
    assert events[0]["detail"] == {"grant_type": "refresh_token", "claimed_client_id_sha256": claimed}
    assert events[1]["detail"] == {"grant_type_sha256": hashlib.sha256(b"a" * 50).hexdigest(),
                                   "claimed_client_id_sha256": claimed}


def test_a_refusal_whose_detail_may_not_be_recorded_is_recorded_without_it(chain: Chain) -> None:
    """Not reachable from a request either (details are the broker's own or hashed)."""
    app = create_app(chain.broker.settings, broker=chain.broker)
    before = chain.broker.audit.head().seq
    with app.test_request_context("/token", method="POST"):
        chain.broker.provider.record_refusal("invalid_grant", ROLES_CLIENT, detail={"grant_type": "x\x00"})
    events = [r.event for r in records(chain.broker.audit) if r.seq > before]
    assert [(e["reason"], e["client"], e["detail"]) for e in events] == [
        ("invalid_grant", ROLES_CLIENT, {"unsafe_value_dropped": True})]


def test_a_refusal_that_cannot_be_recorded_at_all_is_logged_without_its_values(
        chain: Chain, caplog: pytest.LogCaptureFixture) -> None:
    """Not reachable from a request (reasons are the broker's own codes): the last resort."""
    app = create_app(chain.broker.settings, broker=chain.broker)
    before = chain.broker.audit.head()
    with app.test_request_context("/token", method="POST"):
        chain.broker.provider.record_refusal("Not A Reason Code", "client\x01",
                                             detail={"grant_type": "x\x00"})
    assert chain.broker.audit.head() == before
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and "NOT recorded" in errors[-1]
    assert not any("\x00" in m or "\x01" in m for m in caplog.messages)


def test_token_endpoints_fail_closed_without_store_and_never_show_a_trace(
        chain: Chain, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from idbroker.store import StoreUnavailable

    body = _roles_login(chain, 62)
    provider = chain.broker.provider

    def store_down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the test pulled the plug")

    monkeypatch.setattr(provider.refresh, "redeemable", store_down)
    down = _refresh(chain, ROLES_CLIENT, body["refresh_token"])
    _assert_json_answer(down, 503, "temporarily_unavailable")
    assert down.headers["Retry-After"] == "30"

    def bug(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug, with a secret-looking detail")

    monkeypatch.setattr(provider.refresh, "redeemable", bug)
    broken = _refresh(chain, ROLES_CLIENT, body["refresh_token"])
    answer = _assert_json_answer(broken, 500, "server_error")
    assert "secret-looking" not in broken.text and set(answer) == {"error", "error_description"}
    assert "a bug, with a secret-looking detail" in caplog.text  # the trace is in the log only


def test_revoking_with_an_old_refresh_token_ends_the_family_and_is_audited(chain: Chain) -> None:
    body = _roles_login(chain, 66)
    current = _refresh(chain, ROLES_CLIENT, body["refresh_token"]).json()["refresh_token"]
    before = chain.broker.audit.head().seq
    assert _post(chain, "revoke", ROLES_CLIENT, token=body["refresh_token"]).status_code == 200
    refused = _refresh(chain, ROLES_CLIENT, current)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    revoked = [r.event for r in records(chain.broker.audit)
               if r.seq > before and r.event["type"] == "token.revoked"]
    assert [(e["client"], set(e["detail"])) for e in revoked] == [(ROLES_CLIENT, {"family_sha256"})]


@pytest.mark.parametrize("ending", ["revoked", "reused"])
def test_ending_a_refresh_family_ends_its_access_tokens_everywhere(chain: Chain, ending: str) -> None:
    """RFC 7009 §2.1: revoking a refresh token ends the access tokens of its grant, and reuse
    (theft) does the same: the code redemption's token, the refreshed ones and any exchanged
    from them, on every instance, and each one presented is audited as a revoked token still
    held. Another login's tokens live on."""
    body = _roles_login(chain, 67)
    refreshed = _refresh(chain, ROLES_CLIENT, body["refresh_token"]).json()
    exchanged = _exchange(chain, refreshed["access_token"], scope="api.lezen").json()["access_token"]
    family_tokens = {ROLES_CLIENT: [body["access_token"], refreshed["access_token"]], API_CLIENT: [exchanged]}
    bystander = _roles_login(chain, 67)["access_token"]
    if ending == "revoked":
        assert _post(chain, "revoke", ROLES_CLIENT, token=refreshed["refresh_token"]).status_code == 200
    else:
        assert _refresh(chain, ROLES_CLIENT, body["refresh_token"]).json()["error"] == "invalid_grant"
    other_instance = create_app(chain.broker.settings).test_client()
    before = chain.broker.audit.head().seq
    for audience, tokens in family_tokens.items():
        for token in tokens:
            assert _post(chain, "introspect", audience, token=token).json() == {"active": False}
            seen = other_instance.post("/introspect", data={"token": token, **_auth(chain, audience)})
            assert seen.get_json() == {"active": False}
    noted = [r.event["detail"]["jti"] for r in records(chain.broker.audit)
             if r.seq > before and r.event["type"] == "introspection.revoked"]
    presented = [_claims(token)["jti"] for tokens in family_tokens.values() for token in tokens]
    assert sorted(noted) == sorted(jti for jti in presented for _ in range(2))  # here and there
    assert _post(chain, "introspect", ROLES_CLIENT, token=bystander).json()["active"] is True


@pytest.mark.parametrize(("broken", "username", "status", "error"), [
    ("refresh token's store", "s61", 503, "temporarily_unavailable"),
    ("ID token's signing", "s62", 500, "server_error"),
])
def test_the_trail_names_no_token_that_could_not_be_made(chain: Chain, monkeypatch: pytest.MonkeyPatch,
                                                         broken: str, username: str, status: int,
                                                         error: str) -> None:
    """A code redemption whose refresh token cannot be stored, or whose ID token cannot be
    signed, answers with an error and records no issued token: what the trail names as
    issued exists and was handed out (the ID token is made before the record, not after)."""
    from idbroker.store import StoreUnavailable

    query, request, _ = chain.login(Browser(username=username, organisation=STEPUP_ORG),
                                    client_id=ROLES_CLIENT, scope="openid roles.agenda offline_access")

    def store_down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the test pulled the plug")

    def signing_fails(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("the test broke the signing")

    if broken == "ID token's signing":
        monkeypatch.setattr(chain.broker.provider, "id_token", signing_fails)
    else:
        monkeypatch.setattr(chain.broker.provider.refresh, "issue", store_down)
    before = chain.broker.audit.head().seq
    reply = chain.redeem(query["code"][0], request["verifier"], client_id=ROLES_CLIENT,
                         assertion=chain.assertion(iss=ROLES_CLIENT, sub=ROLES_CLIENT))
    _assert_json_answer(reply, status, error)
    assert [r.event for r in records(chain.broker.audit)
            if r.seq > before and r.event["type"] == "token.issued"] == []


@pytest.mark.parametrize("cookie_secure", ["always", "never"])
def test_pages_and_token_endpoints_carry_the_same_security_headers(tmp_path: Path, cookie_secure: str
                                                                   ) -> None:
    """HSTS goes with https (cookie_secure), on the Flask pages and the token endpoints alike."""
    from idbroker.config import load_settings

    repo = Path(__file__).resolve().parents[2]
    settings = load_settings(environ={}, overrides={
        "issuer": "http://127.0.0.1:9", "policies_dir": str(repo / "policies"),
        "keys_dir": str(tmp_path / "keys"), "store.url": f"sqlite:///{tmp_path / 'store.sqlite3'}",
        "session.cookie_secure": cookie_secure})
    client = create_app(settings).test_client()
    page = client.get("/jwks.json")
    token = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x"})
    assert (page.status_code, token.status_code) == (200, 401)
    names = ("X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options", "Strict-Transport-Security")
    assert [page.headers.get(name) for name in names] == [token.headers.get(name) for name in names]
    assert ("Strict-Transport-Security" in token.headers) == (cookie_secure == "always")


def test_guessing_client_secrets_from_one_address_is_slowed(tmp_path: Path) -> None:
    """Secrets at /token, /introspect and /revoke could be tried without end: after 100
    failures from one address in 15 minutes it waits (429 with Retry-After), whatever it
    sends, a right secret too; the lockout is audited once. Its own chain: the tests all
    come from 127.0.0.1."""
    from idbroker.oidc.token_endpoints import CLIENT_AUTH_LIMITS

    with running_chain(tmp_path) as chain:
        before = chain.broker.audit.head().seq
        for n in range(CLIENT_AUTH_LIMITS.per_ip):
            endpoint = ("token", "introspect", "revoke")[n % 3]
            reply = requests.post(f"{chain.base}/{endpoint}", auth=(chain.basic_id, f"guess-{n}"), timeout=5,
                                  data={"token": "x", "grant_type": "refresh_token", "refresh_token": "x"})
            assert reply.status_code == 401, (n, reply.status_code)
        right = requests.post(f"{chain.base}/introspect", data={"token": "x"},
                              auth=(chain.basic_id, BASIC_SECRET), timeout=5)
        answer = _assert_json_answer(right, 429, "invalid_client")
        assert "try again later" in answer["error_description"]
        assert 0 < int(right.headers["Retry-After"]) <= CLIENT_AUTH_LIMITS.lockout
        refused = [r.event for r in records(chain.broker.audit)
                   if r.seq > before and r.event["type"] == "refusal"]
        assert [e["detail"]["scope"] for e in refused if e["reason"] == "locked_out"] == ["ip"]  # once
        # ... and each request refused during it is recorded, naming whose credentials it sent
        assert [(e["reason"], e["detail"].get("claimed_client_id")) for e in refused][-1] == (
            "address_locked_out", chain.basic_id)
