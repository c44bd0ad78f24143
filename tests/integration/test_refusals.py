"""Every bad request the foundation issue lists gets the right answer, never a token."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import ECKey

from idbroker.audit.log import records
from tests.integration.conftest import (
    BACKENDS,
    BASIC_SECRET,
    FAULTS,
    TRUSTED_OIDC_ORG,
    Chain,
    fault_org,
    running_chain,
    store_overrides,
)
from tests.support.browser import Browser


def _callback_query(chain: Chain, url: str, browser: Browser | None = None) -> dict[str, list[str]]:
    step = (browser or Browser()).go(url, stop_at=chain.rp_redirect)
    assert step.url.startswith(chain.rp_redirect), step.body[:300]
    return parse_qs(urlsplit(step.url).query)


# -- /authorize: never redirect to an unverified URI ------------------------------------

@pytest.mark.parametrize("params", [
    {"client_id": "no-such-client"},
    {"redirect_uri": "https://attacker.example/cb"},
    {"redirect_uri": None},
    {"redirect_uri": "{base}/test-rp/cb/extra"},
])
def test_unknown_client_or_unregistered_redirect_uri_shows_a_page(chain: Chain, params: dict) -> None:
    params = {k: (v.format(base=chain.base) if isinstance(v, str) else v) for k, v in params.items()}
    url, _ = chain.authorize_url(**params)
    reply = requests.get(url, allow_redirects=False, timeout=5)
    assert reply.status_code == 400
    assert "Location" not in reply.headers
    assert "text/html" in reply.headers["Content-Type"]
    assert "Inloggen is niet gelukt" in reply.text


@pytest.mark.parametrize("params", [
    {"code_challenge": None, "code_challenge_method": None},
    {"code_challenge_method": "plain"},
    {"code_challenge_method": None},
    {"response_type": "token"},
    {"scope": "profile"},
])
def test_bad_request_with_a_verified_redirect_uri_goes_back_with_an_error(chain: Chain, params: dict) -> None:
    url, req = chain.authorize_url(**params)
    reply = requests.get(url, allow_redirects=False, timeout=5)
    assert reply.status_code == 302
    location = reply.headers["Location"]
    assert location.startswith(chain.rp_redirect)
    query = parse_qs(urlsplit(location).query)
    assert query["error"][0] in {"invalid_request", "unsupported_response_type", "invalid_scope",
                                 "unauthorized_client"}
    assert query["state"] == [req["state"]]
    assert query["iss"] == [chain.base]
    assert "code" not in query


def test_prompt_none_without_a_session_is_login_required(chain: Chain) -> None:
    url, _ = chain.authorize_url(prompt="none")
    reply = requests.get(url, allow_redirects=False, timeout=5)
    assert parse_qs(urlsplit(reply.headers["Location"]).query)["error"] == ["login_required"]


# -- /token: codes and client authentication --------------------------------------------

def test_code_is_single_use(chain: Chain) -> None:
    query, req, _ = chain.login()
    assert chain.redeem(query["code"][0], req["verifier"]).status_code == 200
    replay = chain.redeem(query["code"][0], req["verifier"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"


def test_wrong_code_verifier_is_refused(chain: Chain) -> None:
    query, _, _ = chain.login()
    reply = chain.redeem(query["code"][0], "x" * 50)
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_grant"


def test_missing_code_verifier_is_refused(chain: Chain) -> None:
    query, _, _ = chain.login()
    reply = chain.redeem(query["code"][0], None)
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_request"


def test_code_of_another_client_is_refused_and_burnt(chain: Chain) -> None:
    query, req, _ = chain.login()
    stolen = requests.post(f"{chain.base}/token", auth=(chain.basic_id, BASIC_SECRET), timeout=5, data={
        "grant_type": "authorization_code", "code": query["code"][0],
        "redirect_uri": chain.rp_redirect, "code_verifier": req["verifier"]})
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    # The rightful client cannot use it after the theft attempt either: it is gone.
    assert chain.redeem(query["code"][0], req["verifier"]).json()["error"] == "invalid_grant"


def test_a_code_used_twice_ends_what_its_first_use_gave(chain: Chain) -> None:
    """RFC 6749 §4.1.2: a second use is refused, and what the first gave SHOULD be revoked:
    the code leaked, and who redeemed it first is unknown. The access token and refresh
    family of the first use stayed live; now the login's session ends, recorded."""
    from tests.integration.test_tokens import _post, _refresh

    query, req, _ = chain.login(scope="openid profile offline_access")
    first = chain.redeem(query["code"][0], req["verifier"])
    assert first.status_code == 200
    before = chain.broker.audit.head().seq
    replay = chain.redeem(query["code"][0], req["verifier"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    introspected = _post(chain, "introspect", chain.rp_id, token=first.json()["access_token"])
    assert introspected.json() == {"active": False}
    assert _refresh(chain, chain.rp_id, first.json()["refresh_token"]).json()["error"] == "invalid_grant"
    reused = [r.event for r in records(chain.broker.audit) if r.seq > before and r.event["type"] == "refusal"]
    assert (reused[0]["reason"], reused[0].get("client")) == ("authorization_code_reuse", chain.rp_id)


def test_redirect_uri_must_match_at_the_token_endpoint(chain: Chain) -> None:
    query, req, _ = chain.login()
    reply = chain.redeem(query["code"][0], req["verifier"], redirect_uri=chain.rp_redirect + "x")
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_grant"


def test_replayed_client_assertion_is_refused(chain: Chain) -> None:
    first, req1, _ = chain.login()
    second, req2, _ = chain.login()
    assertion = chain.assertion()
    assert chain.redeem(first["code"][0], req1["verifier"], assertion=assertion).status_code == 200
    replay = chain.redeem(second["code"][0], req2["verifier"], assertion=assertion)
    assert replay.json()["error"] == "invalid_client", replay.text
    assert replay.status_code in (400, 401)


@pytest.mark.parametrize("problem", ["foreign_key", "wrong_audience", "expired", "alg_none",
                                     "hs256_with_public_key", "lives_too_long", "no_jti",
                                     "unknown_kid", "made_to_live_an_hour", "exp_not_a_float",
                                     "exp_far_away", "exp_nan", "iat_nan", "exp_text",
                                     "audience_list_with_another", "payload_nested_too_deep"])
def test_bad_client_assertion_is_refused(chain: Chain, problem: str) -> None:
    query, req, _ = chain.login()
    now = int(time.time())
    if problem == "foreign_key":
        other = ECKey.generate_key("P-256", private=True)
        assertion = jwt.encode({"alg": "ES256", "kid": chain.rp_key.kid},
                               {"iss": chain.rp_id, "sub": chain.rp_id, "aud": f"{chain.base}/token",
                                "jti": "x1", "exp": now + 60}, other)
    elif problem == "wrong_audience":
        assertion = chain.assertion(aud="https://other.example/token")
    elif problem == "expired":
        assertion = chain.assertion(iat=now - 600, exp=now - 300)
    elif problem == "lives_too_long":
        assertion = chain.assertion(exp=now + 3600)
    elif problem == "made_to_live_an_hour":  # leaked, then used in its last minute
        assertion = chain.assertion(iat=now - 3540, exp=now + 60)
    elif problem in ("exp_not_a_float", "exp_far_away", "exp_nan", "iat_nan", "exp_text"):
        odd = {"exp_not_a_float": {"exp": 10 ** 400}, "exp_far_away": {"exp": 10 ** 20},
               "exp_nan": {"exp": float("nan")}, "iat_nan": {"iat": float("nan")},
               "exp_text": {"exp": str(now + 60)}}[problem]
        assertion = chain.assertion(**odd)
    elif problem == "audience_list_with_another":
        assertion = chain.assertion(aud=["https://other.example/token", f"{chain.base}/token"])
    elif problem == "no_jti":
        assertion = chain.assertion(jti=None)
    elif problem == "payload_nested_too_deep":  # json.loads raises RecursionError, no ValueError
        header = base64.urlsafe_b64encode(json.dumps({"alg": "ES256", "kid": chain.rp_key.kid}).encode())
        payload = base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000)
        assertion = f"{header.decode().rstrip('=')}.{payload.decode().rstrip('=')}.c2ln"
    elif problem == "unknown_kid":
        assertion = jwt.encode({"alg": "ES256", "kid": "not-registered"},
                               {"iss": chain.rp_id, "sub": chain.rp_id, "aud": f"{chain.base}/token",
                                "jti": "x3", "exp": now + 60}, chain.rp_key)
    else:
        header = {"alg": "none" if problem == "alg_none" else "HS256", "kid": chain.rp_key.kid}
        assertion = _unsigned(header, {"iss": chain.rp_id, "sub": chain.rp_id, "jti": "x2",
                                       "aud": f"{chain.base}/token", "exp": now + 60})
    reply = chain.redeem(query["code"][0], req["verifier"], assertion=assertion)
    assert reply.json()["error"] == "invalid_client", reply.text
    assert reply.status_code in (400, 401)  # RFC 6749 §5.2: 401 only with an Authorization header
    assert "id_token" not in reply.text


def _unsigned(header: dict, claims: dict) -> str:
    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{b64(header)}.{b64(claims)}.{'c2ln' if header['alg'] != 'none' else ''}"


def test_wrong_client_secret_is_refused(chain: Chain) -> None:
    reply = requests.post(f"{chain.base}/token", auth=(chain.basic_id, "wrong"), timeout=5,
                          data={"grant_type": "authorization_code", "code": "x",
                                "redirect_uri": chain.rp_redirect, "code_verifier": "x" * 43})
    assert reply.status_code == 401 and reply.json()["error"] == "invalid_client"


def test_client_may_not_use_another_authentication_method(chain: Chain) -> None:
    # test-rp is registered for private_key_jwt; a secret gets it nowhere.
    reply = requests.post(f"{chain.base}/token", auth=(chain.rp_id, "anything"), timeout=5,
                          data={"grant_type": "authorization_code", "code": "x",
                                "redirect_uri": chain.rp_redirect, "code_verifier": "x" * 43})
    assert reply.status_code == 401 and reply.json()["error"] == "invalid_client"


def test_userinfo_needs_a_valid_token(chain: Chain) -> None:
    assert requests.get(f"{chain.base}/userinfo", timeout=5).status_code == 401
    bad = requests.get(f"{chain.base}/userinfo", headers={"Authorization": "Bearer abc.def.ghi"},
                       timeout=5)
    assert bad.status_code == 401


# -- the organisation's IdP misbehaves ----------------------------------------------------

def test_unreachable_idp_gets_a_page_naming_the_organisation(chain: Chain) -> None:
    step = Browser(organisation="offline").go(chain.authorize_url()[0], stop_at=chain.rp_redirect)
    assert step.status == 502
    assert "Gemeente Onbereikbaar" in step.body and "niet bereikbaar" in step.body


@pytest.mark.parametrize("fault", FAULTS)
def test_misbehaving_idp_gets_no_one_in(chain: Chain, fault: str) -> None:
    browser = Browser(organisation=fault_org(fault))
    step = browser.go(chain.authorize_url()[0], stop_at=chain.rp_redirect)
    assert not step.url.startswith(chain.rp_redirect)
    assert step.status in (400, 403)
    assert f"Storing {fault}" in step.body
    assert "idb_session" not in browser.http.cookies


HEADER_NOT_AN_OBJECT = {"header": ["alg"]}
ODD_UPSTREAM_CLAIMS = [{"aud": 5}, {"aud": ["idbroker", 5]}, {"amr": 5}, {"amr": [5, None]},
                       {"amr": ["x" * 600]}, {"acr": {"a": 1}}, {"acr": ["http://eidas.europa.eu/LoA/substantial"]},
                       {"exp": float("nan")}, {"auth_time": True}, {"auth_time": "yesterday"},
                       {"groups": [["ggd-crisis"]]}, {"groups": [1.5]}, {"groups": {"a": 1}},
                       {"functie": 3.5}, {"functie": ["a", ["b"]]}, HEADER_NOT_AN_OBJECT,
                       # text UTF-8 cannot hold (JSON's "\ud800"): it could be neither stored nor recorded
                       {"sub": "s-\ud800"}, {"acr": "x\ud800"}, {"amr": ["x\ud800"]},
                       {"functie": "\ud800"}]


@pytest.mark.parametrize("odd", ODD_UPSTREAM_CLAIMS, ids=[repr(odd)[:30] for odd in ODD_UPSTREAM_CLAIMS])
def test_an_upstream_id_token_with_odd_claim_types_is_refused_not_a_500(
        chain: Chain, monkeypatch: pytest.MonkeyPatch, odd: dict[str, Any]) -> None:
    """A signed ID token whose ``aud``, ``amr``, ``acr`` or ``auth_time`` is not what OIDC Core
    says, whose mapped attributes are not text (a group that is a number or a list), or whose
    header is no JSON object, gets the page for a refused answer, and the refusal is recorded."""
    from idbroker.demo import idp as demo_idp

    if odd == HEADER_NOT_AN_OBJECT:  # joserfc takes any JSON holding "alg" for a header
        encode = demo_idp._OpenIDCode.encode_id_token

        def odd_header(self: Any, token: dict[str, Any], request: Any) -> str:
            _, payload, signature = encode(self, token, request).split(".")
            return ".".join((base64.urlsafe_b64encode(b'["alg"]').decode().rstrip("="), payload, signature))

        monkeypatch.setattr(demo_idp._OpenIDCode, "encode_id_token", odd_header)
    else:
        claims_of = demo_idp._OpenIDCode.generate_user_info
        monkeypatch.setattr(demo_idp._OpenIDCode, "generate_user_info",
                            lambda self, user, scope: {**claims_of(self, user, scope), **odd})
    if "\\ud800" in repr(odd):  # sent as most JSON writers send it: the six characters \ud800
        monkeypatch.setattr("joserfc.jwt.convert_claims", lambda claims, encoder_cls=None: json.dumps(
            claims, separators=(",", ":"), cls=encoder_cls).encode("ascii"))
    before = chain.broker.audit.head().seq
    # Groups are mapped from the trusted GGD's IdP; the municipality's maps functie.
    browser = Browser(username="t.devos", organisation=TRUSTED_OIDC_ORG) if "groups" in odd else Browser()
    step = browser.go(chain.authorize_url()[0], stop_at=chain.rp_redirect)
    assert step.status == 400 and "Traceback" not in step.body, step.body[:300]
    assert "idb_session" not in browser.http.cookies
    assert [r.event.get("reason") for r in records(chain.broker.audit)
            if r.seq > before and r.event["type"] == "upstream.result"] == ["upstream_invalid"]


def _refusals_with(chain: Chain, request_id: str) -> list[tuple[str, str | None, str | None]]:
    return [(r.event["reason"], r.event.get("organisation"), r.event.get("client"))
            for r in records(chain.broker.audit)
            if r.event.get("correlation_id") == request_id and r.event["type"] == "refusal"]


def _login_sent_to(chain: Chain, organisation: str) -> tuple[requests.Session, str]:
    """A browser whose login went to ``organisation``'s IdP, and the state it carries there."""
    browser = requests.Session()
    to_idp = browser.get(chain.authorize_url(idp_hint=organisation)[0], allow_redirects=False,
                         timeout=10).headers["Location"]
    query = parse_qs(urlsplit(to_idp).query)
    return browser, (query.get("state") or query.get("RelayState"))[0]


def test_state_mismatch_at_the_upstream_callback_is_refused_and_recorded(chain: Chain) -> None:
    reply = requests.get(f"{chain.base}/upstream/gemeente-utrecht/callback", timeout=5,
                         params={"code": "abc", "state": "forged"},
                         headers={"X-Request-ID": "req-forged-state"})
    assert reply.status_code == 400
    assert "verlopen" in reply.text
    assert _refusals_with(chain, "req-forged-state") == [("upstream_unknown_login", "gemeente-utrecht", None)]


def test_an_answer_at_another_organisations_callback_is_a_recorded_mix_up(chain: Chain) -> None:
    browser, state = _login_sent_to(chain, "gemeente-utrecht")
    reply = browser.get(f"{chain.base}/upstream/ggz-centraal/callback", params={"state": state, "code": "x"},
                        headers={"X-Request-ID": "req-mix-up"}, allow_redirects=False, timeout=10)
    assert reply.status_code == 400
    assert _refusals_with(chain, "req-mix-up") == [("upstream_mix_up", "ggz-centraal", chain.rp_id)]
    again = browser.get(f"{chain.base}/upstream/gemeente-utrecht/callback",
                        params={"state": state, "code": "x"}, allow_redirects=False, timeout=10)
    assert again.status_code == 400  # the mix-up ended the login


def test_an_idp_initiated_saml_response_is_refused_and_recorded(chain: Chain) -> None:
    reply = requests.post(f"{chain.base}/upstream/veilig-thuis-utrecht/saml/acs", timeout=10,
                          data={"SAMLResponse": "PHNhbWxwOlJlc3BvbnNlLz4=", "RelayState": "made-up"},
                          headers={"X-Request-ID": "req-unsolicited"}, allow_redirects=False)
    assert reply.status_code == 400
    assert _refusals_with(chain, "req-unsolicited") == [
        ("upstream_unknown_login", "veilig-thuis-utrecht", None)]


def test_login_transaction_is_bound_to_the_browser(chain: Chain) -> None:
    url, _ = chain.authorize_url()
    first = requests.get(url, allow_redirects=False, timeout=5)
    chooser = first.headers["Location"]
    other_browser = requests.get(chain.base + chooser if chooser.startswith("/") else chooser, timeout=5)
    assert other_browser.status_code == 400


def test_repeated_parameter_is_refused(chain: Chain) -> None:
    url, _ = chain.authorize_url()
    reply = requests.get(url + "&scope=openid+email", allow_redirects=False, timeout=5)
    assert reply.status_code == 302
    assert parse_qs(urlsplit(reply.headers["Location"]).query)["error"] == ["invalid_request"]


@pytest.mark.parametrize(("extra", "error"), [
    ({"request": "eyJhbGciOiJub25lIn0.eyJzY29wZSI6Im9wZW5pZCJ9."}, "request_not_supported"),
    ({"request_uri": "https://rp.example/request.jwt"}, "request_uri_not_supported"),
    ({"response_mode": "form_post"}, "invalid_request"),
    ({"response_mode": "fragment"}, "invalid_request")])
def test_what_discovery_says_is_unsupported_is_refused_not_ignored(chain: Chain, extra: dict[str, str],
                                                                   error: str) -> None:
    """A request object may carry claims the client means to count (OpenID Connect Core §6):
    ignoring it would serve a different request than the one made."""
    url, _ = chain.authorize_url(**extra)
    reply = requests.get(url, allow_redirects=False, timeout=5)
    assert reply.status_code == 302
    query = parse_qs(urlsplit(reply.headers["Location"]).query)
    assert query["error"] == [error] and query["state"], query


@pytest.mark.parametrize("empty", ["request", "request_uri", "response_mode", "resource"])
def test_a_parameter_sent_without_a_value_is_as_if_omitted(chain: Chain, empty: str) -> None:
    """RFC 6749 §3.1: clients that fill a URL template with empty values are served."""
    url, _ = chain.authorize_url(**{empty: ""})
    for sent in (url, f"{url}&{empty}="):  # twice without a value is not a repeated parameter
        reply = requests.get(sent, allow_redirects=False, timeout=5)
        assert reply.status_code == 302 and not reply.headers["Location"].startswith(chain.rp_redirect)


@pytest.mark.parametrize("client_id", [None, "made-up\u202eclient"])
def test_an_authorization_refusal_names_only_a_client_of_the_policy(chain: Chain,
                                                                    client_id: str | None) -> None:
    """A client of the policy is the refusal's client; any other client_id is the caller's
    text, kept only as its SHA-256."""
    url, _ = chain.authorize_url(**({"client_id": client_id} if client_id else {}),
                                 redirect_uri="https://attacker.example/cb")
    request_id = f"req-authorize-{'known' if client_id is None else 'unknown'}-client"
    reply = requests.get(url, allow_redirects=False, timeout=5, headers={"X-Request-ID": request_id})
    assert reply.status_code == 400 and "Location" not in reply.headers
    events = [r.event for r in records(chain.broker.audit) if r.event.get("correlation_id") == request_id]
    assert len(events) == 1 and events[0]["type"] == "refusal"
    if client_id is None:
        assert events[0]["client"] == chain.rp_id and "detail" not in events[0]
    else:
        assert "client" not in events[0]
        assert events[0]["detail"] == {
            "claimed_client_id_sha256": hashlib.sha256(client_id.encode()).hexdigest()}


def test_repeated_redirect_uri_is_refused_on_a_page(chain: Chain) -> None:
    url, _ = chain.authorize_url()
    reply = requests.get(url + "&redirect_uri=https%3A%2F%2Fattacker.example%2Fcb",
                         allow_redirects=False, timeout=5)
    assert reply.status_code == 400 and "Location" not in reply.headers


@pytest.fixture(scope="module", params=BACKENDS)
def quick_code_chain(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """A chain whose codes live one second."""
    overrides = store_overrides(request) | {"tokens.code_lifetime": 1}
    with running_chain(tmp_path_factory.mktemp("quick"), overrides) as running:
        yield running


def test_expired_code_is_refused(quick_code_chain: Chain) -> None:
    query, req, _ = quick_code_chain.login()
    time.sleep(1.5)
    reply = quick_code_chain.redeem(query["code"][0], req["verifier"])
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("path", ["//authorize", "/login//x", "//jwks.json", "/saml//x//metadata",
                                  "/.well-known//openid-configuration", "/static//style.css",
                                  "/account//factors"])
def test_no_redirect_is_built_from_the_host_header(chain: Chain, path: str) -> None:
    """Werkzeug's merging of double slashes answered 308 to http://<Host header>/...: absolute
    URLs come from the issuer, never from what the client says its host is."""
    reply = requests.get(chain.base + path, headers={"Host": "evil.example"}, allow_redirects=False,
                         timeout=5)
    assert "evil.example" not in reply.headers.get("Location", ""), reply.headers.get("Location")
    assert reply.status_code != 308 and reply.status_code < 500


def test_max_age_is_asked_of_the_idp_and_an_older_login_refused(chain: Chain,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's max_age goes to the IdP (OIDC Core §3.1.2.1: it MUST then authenticate
    actively); an IdP that answers with an older login gives no code, where it used to give
    one carrying that old auth_time."""
    from idbroker.demo import idp as demo_idp

    browser = Browser()
    step = browser.go(chain.authorize_url(max_age="60")[0], stop_at=chain.rp_redirect)
    assert step.url.startswith(chain.rp_redirect)  # a fresh login at the IdP
    to_idp = next(s.url for s in browser.history if "%2Fupstream%2F" in s.url and "/authorize?" in s.url)
    assert parse_qs(urlsplit(to_idp).query)["max_age"] == ["60"]
    claims_of = demo_idp._OpenIDCode.generate_user_info
    monkeypatch.setattr(demo_idp._OpenIDCode, "generate_user_info", lambda self, user, scope: {
        **claims_of(self, user, scope), "auth_time": int(time.time()) - 86400})
    before = chain.broker.audit.head().seq
    step = Browser().go(chain.authorize_url(max_age="60")[0], stop_at=chain.rp_redirect)
    assert step.status == 400 and not step.url.startswith(chain.rp_redirect)
    assert [r.event.get("reason") for r in records(chain.broker.audit)
            if r.seq > before and r.event["type"] == "upstream.result"] == ["upstream_invalid"]


@pytest.mark.parametrize(("params", "offset"), [
    ({"prompt": "login"}, -86400),  # prompt=login answered with yesterday's login
    ({"max_age": "60"}, 86400),  # a login dated tomorrow passed every max_age
    ({}, 86400),  # ... and proves nothing without one either (like a future iat)
    ({}, -int(time.time())),  # 0: no login time at all, copied into the ID token
    ({}, -10**20),  # 300 digits below zero would overflow the clients' parsers
], ids=["prompt_login_old", "max_age_future", "future", "zero", "far_before_1970"])
def test_an_upstream_login_time_the_request_cannot_take_is_refused(
        chain: Chain, monkeypatch: pytest.MonkeyPatch, params: dict[str, str], offset: int) -> None:
    from idbroker.demo import idp as demo_idp

    claims_of = demo_idp._OpenIDCode.generate_user_info
    monkeypatch.setattr(demo_idp._OpenIDCode, "generate_user_info", lambda self, user, scope: {
        **claims_of(self, user, scope), "auth_time": int(time.time()) + offset})
    before = chain.broker.audit.head().seq
    step = Browser().go(chain.authorize_url(**params)[0], stop_at=chain.rp_redirect)
    assert step.status == 400 and not step.url.startswith(chain.rp_redirect)
    assert [r.event.get("reason") for r in records(chain.broker.audit)
            if r.seq > before and r.event["type"] == "upstream.result"] == ["upstream_invalid"]


def test_max_age_zero_takes_a_login_made_for_this_request(tmp_path: Path) -> None:
    """max_age=0 is 'log in again' (OIDC Core §3.1.2.1); with clock_skew 0 a login made a
    second ago used to count as too old, so none could ever pass."""
    with running_chain(tmp_path, {"tokens.clock_skew": 0}) as chain:
        step = Browser().go(chain.authorize_url(max_age="0")[0], stop_at=chain.rp_redirect)
        assert step.url.startswith(chain.rp_redirect) and "code=" in step.url
