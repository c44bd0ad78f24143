"""The demo IdP is a real OpenID Provider, and the demo application a real relying party.

The IdP runs in a threaded werkzeug server on a loopback port and is driven over HTTP by
authlib's own OAuth 2.0 client (``private_key_jwt``, its JWKS served from another port)
plus a ``requests`` session as the browser. Each ``faults`` value must produce exactly
its own misbehaviour, because the broker's negative tests rely on that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from flask import Flask, jsonify
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, KeySet
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from idbroker.demo.client_app import create_client_app, generate_demo_client_key
from idbroker.demo.idp import FAULTS, OTHER_ISSUER, DemoAccount, DemoClient, create_idp_app
from tests.support.wsgi_server import DeferredApp, serve_wsgi

LOA_SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"
CLIENT_ID = "idbroker"
SECRET_CLIENT_ID = "basic-client"
SECRET = "demo-client-secret-0123456789"
MOUNT = "/demo-idp/gemeente-utrecht"
SCOPE = "openid profile email groups"

JAN = DemoAccount(username="jan", password="Welkom-jan-1", sub="u-jan-0001", name="Jan Jansen",
                  email="jan@utrecht.example", employee_number="E1001", groups=("wvggz",),
                  acr=LOA_SUBSTANTIAL)
PIET = DemoAccount(username="piet", password="Welkom-piet-1", sub="u-piet-0002",
                   name="Piet Pieters", email="piet@utrecht.example")


@dataclass(frozen=True)
class RelyingParty:
    """The test RP: its key, and a site on its own port serving the public JWKS."""

    key: ECKey
    base: str

    @property
    def redirect_uri(self) -> str:
        return self.base + "/cb"

    def clients(self) -> list[DemoClient]:
        return [
            DemoClient(CLIENT_ID, (self.redirect_uri,), jwks_uri=self.base + "/jwks.json"),
            DemoClient(SECRET_CLIENT_ID, (self.redirect_uri,), auth_method="client_secret_basic",
                       client_secret=SECRET),
        ]


@dataclass(frozen=True)
class Idp:
    issuer: str
    metadata: dict[str, Any]
    jwks: dict[str, Any]


@dataclass
class Flow:
    """One authorization code flow in progress: the RP session and the browser."""

    idp: Idp
    rp: OAuth2Session
    browser: requests.Session
    state: str
    nonce: str
    verifier: str
    params: dict[str, str] | None = None
    token: dict[str, Any] | None = None


@pytest.fixture(scope="module")
def relying_party() -> Iterator[RelyingParty]:
    key = ECKey.generate_key("P-256", parameters={"alg": "ES256"}, auto_kid=True)
    site = Flask("test-rp")
    site.add_url_rule("/jwks.json", "jwks",
                      lambda: jsonify({"keys": [key.as_dict(private=False)]}))
    with serve_wsgi(site) as (base, _):
        yield RelyingParty(key, base)


@contextmanager
def running_idp(relying_party: RelyingParty, *, faults: tuple[str, ...] = (),
                mount: str | None = None) -> Iterator[Idp]:
    deferred = DeferredApp()
    with serve_wsgi(deferred) as (base, _):
        issuer = base + (mount or "")
        app = create_idp_app(issuer, display_name="Gemeente Utrecht", accounts=[JAN, PIET],
                             clients=relying_party.clients(), faults=faults)
        deferred.target = DispatcherMiddleware(NotFound(), {mount: app}) if mount else app
        assert app.extensions["demo_idp"].issuer == issuer
        metadata = requests.get(issuer + "/.well-known/openid-configuration", timeout=5).json()
        jwks = requests.get(metadata["jwks_uri"], timeout=5).json()
        assert jwks == app.extensions["demo_idp"].jwks
        yield Idp(issuer, metadata, jwks)


@pytest.fixture(scope="module", params=[None, MOUNT], ids=["root", "mounted"])
def idp(request: pytest.FixtureRequest, relying_party: RelyingParty) -> Iterator[Idp]:
    with running_idp(relying_party, mount=request.param) as running:
        yield running


# -- the relying party's side ---------------------------------------------------------------


def new_rp(relying_party: RelyingParty, *, client_id: str = CLIENT_ID,
           pkce: bool = True) -> OAuth2Session:
    if client_id == SECRET_CLIENT_ID:
        rp = OAuth2Session(client_id, SECRET, token_endpoint_auth_method="client_secret_basic")
    else:
        rp = OAuth2Session(client_id, relying_party.key,
                           token_endpoint_auth_method="private_key_jwt")
        rp.register_client_auth_method(PrivateKeyJWT(alg="ES256",
                                                     headers={"kid": relying_party.key.kid}))
    rp.scope = SCOPE
    rp.redirect_uri = relying_party.redirect_uri
    rp.code_challenge_method = "S256" if pkce else None
    return rp


def start(idp: Idp, relying_party: RelyingParty, *, browser: requests.Session | None = None,
          client_id: str = CLIENT_ID, pkce: bool = True,
          **params: str) -> tuple[Flow, requests.Response]:
    """Send the browser to the authorization endpoint; return the flow and the answer."""
    rp = new_rp(relying_party, client_id=client_id, pkce=pkce)
    verifier, nonce = generate_token(48), generate_token(20)
    url, state = rp.create_authorization_url(idp.metadata["authorization_endpoint"],
                                             code_verifier=verifier, nonce=nonce, **params)
    browser = browser or requests.Session()
    answer = browser.get(url, allow_redirects=False, timeout=5)
    return Flow(idp, rp, browser, state, nonce, verifier), answer


def submit_login(flow: Flow, form_page: requests.Response, username: str,
                 password: str) -> requests.Response:
    """Fill in the login form like a browser (CSRF field included)."""
    assert form_page.status_code in (200, 401), form_page.text
    action = re.search(r'<form method="post" action="([^"]+)"', form_page.text)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form_page.text)
    assert action and csrf
    return flow.browser.post(urljoin(form_page.url, html.unescape(action.group(1))),
                             data={"csrf_token": csrf.group(1), "username": username,
                                   "password": password},
                             allow_redirects=False, timeout=5)


def authorization_response(flow: Flow, answer: requests.Response,
                           relying_party: RelyingParty) -> dict[str, str]:
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.split("?")[0] == relying_party.redirect_uri
    flow.params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    return flow.params


def exchange(flow: Flow) -> dict[str, Any]:
    assert flow.params is not None
    flow.token = dict(flow.rp.fetch_token(flow.idp.metadata["token_endpoint"],
                                          code=flow.params["code"],
                                          code_verifier=flow.verifier, timeout=5))
    return flow.token


def sign_in(idp: Idp, relying_party: RelyingParty, *, username: str = "jan",
            password: str = "Welkom-jan-1", **kwargs: Any) -> Flow:
    """The whole code flow up to the token response (none if the IdP sent an error)."""
    flow, form_page = start(idp, relying_party, **kwargs)
    params = authorization_response(flow, submit_login(flow, form_page, username, password),
                                    relying_party)
    assert params["state"] == flow.state
    if "code" in params:
        exchange(flow)
    return flow


def verified_claims(id_token: str, jwks: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    token = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    return dict(token.header), dict(token.claims)


def unverified(id_token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = id_token.split(".")
    compact = jws.extract_compact(f"{header}.{payload}.".encode())
    return dict(compact.headers()), json.loads(compact.payload), signature


# -- the protocol ----------------------------------------------------------------------------


def test_discovery_advertises_absolute_urls_under_the_issuer(idp: Idp) -> None:
    metadata = idp.metadata
    assert metadata["issuer"] == idp.issuer
    for name, route in [("authorization_endpoint", "/authorize"), ("token_endpoint", "/token"),
                        ("userinfo_endpoint", "/userinfo"), ("jwks_uri", "/jwks.json")]:
        assert metadata[name] == idp.issuer + route
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["id_token_signing_alg_values_supported"] == ["ES256"]
    assert set(metadata["token_endpoint_auth_methods_supported"]) == {
        "private_key_jwt", "client_secret_basic"}
    assert metadata["acr_values_supported"] == [LOA_SUBSTANTIAL]
    [key] = idp.jwks["keys"]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["kid"] and "d" not in key


def test_login_page_is_a_dutch_accessible_form(idp: Idp, relying_party: RelyingParty) -> None:
    _, page = start(idp, relying_party)
    assert page.status_code == 200
    text = page.text
    assert '<html lang="nl">' in text
    assert 'name="viewport"' in text
    assert "<title>Inloggen bij Gemeente Utrecht</title>" in text
    assert "<h1>Inloggen bij Gemeente Utrecht</h1>" in text
    assert '<label for="username">Gebruikersnaam</label>' in text and 'id="username"' in text
    assert '<label for="password">Wachtwoord</label>' in text and 'id="password"' in text
    assert ">Inloggen</button>" in text
    assert "unsafe-inline" not in page.headers["Content-Security-Policy"]
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("demoidp_gemeente_utrecht=")
    assert f"Path={urlsplit(idp.issuer).path or '/'}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_code_flow_with_private_key_jwt(idp: Idp, relying_party: RelyingParty) -> None:
    flow = sign_in(idp, relying_party, acr_values=LOA_SUBSTANTIAL)
    assert flow.params is not None and flow.token is not None
    assert flow.params["iss"] == idp.issuer
    assert flow.token["token_type"].lower() == "bearer"
    header, claims = verified_claims(flow.token["id_token"], idp.jwks)
    assert header["alg"] == "ES256" and header["kid"] == idp.jwks["keys"][0]["kid"]
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == CLIENT_ID
    assert claims["sub"] == JAN.sub
    assert claims["nonce"] == flow.nonce
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["auth_time"] - time.time()) < 30
    assert claims["acr"] == LOA_SUBSTANTIAL
    assert claims["amr"] == ["pwd"]
    assert (claims["name"], claims["email"], claims["employee_number"], claims["groups"]) == (
        JAN.name, JAN.email, JAN.employee_number, list(JAN.groups))

    userinfo = flow.rp.get(idp.metadata["userinfo_endpoint"], timeout=5)
    assert userinfo.status_code == 200
    assert userinfo.json() == {"sub": JAN.sub, "name": JAN.name, "email": JAN.email,
                               "employee_number": JAN.employee_number, "groups": ["wvggz"]}
    anonymous = requests.get(idp.metadata["userinfo_endpoint"], timeout=5)
    assert anonymous.status_code == 401


def test_account_without_acr_gets_no_acr_and_scope_limits_claims(
        idp: Idp, relying_party: RelyingParty) -> None:
    flow = sign_in(idp, relying_party, username="piet", password="Welkom-piet-1",
                   scope="openid email")
    assert flow.token is not None
    _, claims = verified_claims(flow.token["id_token"], idp.jwks)
    assert claims["sub"] == PIET.sub and claims["email"] == PIET.email
    assert "acr" not in claims and "name" not in claims and "groups" not in claims


def test_client_secret_basic_client(idp: Idp, relying_party: RelyingParty) -> None:
    flow = sign_in(idp, relying_party, client_id=SECRET_CLIENT_ID)
    assert flow.token is not None
    _, claims = verified_claims(flow.token["id_token"], idp.jwks)
    assert claims["aud"] == SECRET_CLIENT_ID


def test_session_gives_sso_and_prompt_login_forces_the_form(
        idp: Idp, relying_party: RelyingParty) -> None:
    first = sign_in(idp, relying_party)
    second, answer = start(idp, relying_party, browser=first.browser)
    assert authorization_response(second, answer, relying_party)["state"] == second.state
    assert "code" in second.params  # type: ignore[operator]
    _, again = start(idp, relying_party, browser=first.browser, prompt="login")
    assert again.status_code == 200 and "Wachtwoord" in again.text
    _, silent = start(idp, relying_party, prompt="none")  # fresh browser: no session
    assert "error=login_required" in silent.headers["Location"]


def test_pkce_is_required(idp: Idp, relying_party: RelyingParty) -> None:
    flow, answer = start(idp, relying_party, pkce=False)
    params = authorization_response(flow, answer, relying_party)
    assert params["error"] == "invalid_request"
    assert params["state"] == flow.state and params["iss"] == idp.issuer
    assert "code" not in params


def test_wrong_password_shows_the_form_again_with_401(
        idp: Idp, relying_party: RelyingParty) -> None:
    flow, form_page = start(idp, relying_party)
    answer = submit_login(flow, form_page, "jan", "wrong")
    assert answer.status_code == 401
    assert "Onbekende gebruikersnaam of wachtwoord." in answer.text
    assert "Location" not in answer.headers
    answer = submit_login(flow, answer, "nobody", "Welkom-jan-1")
    assert answer.status_code == 401
    assert authorization_response(flow, submit_login(flow, answer, "jan", "Welkom-jan-1"),
                                  relying_party)["code"]


def test_login_post_without_csrf_token_is_refused(idp: Idp, relying_party: RelyingParty) -> None:
    flow, form_page = start(idp, relying_party)
    action = re.search(r'action="([^"]+)"', form_page.text)
    assert action
    answer = flow.browser.post(urljoin(form_page.url, html.unescape(action.group(1))),
                               data={"username": "jan", "password": "Welkom-jan-1"},
                               allow_redirects=False, timeout=5)
    assert answer.status_code == 400 and "Location" not in answer.headers


def test_unregistered_redirect_uri_is_never_redirected_to(
        idp: Idp, relying_party: RelyingParty) -> None:
    _, answer = start(idp, relying_party, redirect_uri=relying_party.base + "/cb/../evil")
    assert answer.status_code == 400 and "Location" not in answer.headers


def test_codes_are_single_use(idp: Idp, relying_party: RelyingParty) -> None:
    flow = sign_in(idp, relying_party)
    with pytest.raises(OAuthError) as replay:
        exchange(flow)
    assert replay.value.error == "invalid_grant"


def test_wrong_code_verifier_and_replayed_client_assertion_are_refused(
        idp: Idp, relying_party: RelyingParty) -> None:
    flow, form_page = start(idp, relying_party)
    authorization_response(flow, submit_login(flow, form_page, "jan", "Welkom-jan-1"),
                           relying_party)
    flow.verifier = generate_token(48)
    with pytest.raises(OAuthError) as wrong:
        exchange(flow)
    assert wrong.value.error == "invalid_grant"

    token_endpoint = idp.metadata["token_endpoint"]
    assertion = private_key_jwt_sign(relying_party.key, CLIENT_ID, token_endpoint, alg="ES256",
                                     header={"kid": relying_party.key.kid})
    answers = []
    for _ in range(2):
        again, form_page = start(idp, relying_party)
        code = authorization_response(
            again, submit_login(again, form_page, "jan", "Welkom-jan-1"), relying_party)["code"]
        answers.append(requests.post(token_endpoint, timeout=5, data={
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": relying_party.redirect_uri, "code_verifier": again.verifier,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}))
    assert answers[0].status_code == 200
    assert answers[1].status_code == 400 and answers[1].json()["error"] == "invalid_client"


# -- faults ------------------------------------------------------------------------------------


def misbehaviour(flow: Flow) -> set[str]:
    """Every way in which this flow's answers differ from a correct OP's, named as faults."""
    assert flow.params is not None
    found = set()
    params = flow.params
    if "iss" not in params:
        found.add("no_iss_param")
    elif params["iss"] != flow.idp.issuer:
        found.add("wrong_iss_param")
    if "error" in params:
        found.add(f"error_{params['error']}")
        return found
    assert flow.token is not None
    header, claims, _ = unverified(flow.token["id_token"])
    if header["alg"] == "none":
        found.add("alg_none")
    elif header["alg"] == "HS256":
        found.add("hs256")
    else:
        try:
            verified_claims(flow.token["id_token"], flow.idp.jwks)
        except BadSignatureError:
            found.add("rogue_signature")
    if claims["iss"] != flow.idp.issuer:
        found.add("wrong_issuer")
    if claims["aud"] != CLIENT_ID:
        found.add("wrong_audience")
    if claims["nonce"] != flow.nonce:
        found.add("wrong_nonce")
    return found


def test_a_correct_idp_shows_no_misbehaviour(idp: Idp, relying_party: RelyingParty) -> None:
    assert misbehaviour(sign_in(idp, relying_party)) == set()


SIGNATURE_FAULTS = {"rogue_signature", "alg_none", "hs256"}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_produces_exactly_its_misbehaviour(fault: str,
                                                      relying_party: RelyingParty) -> None:
    with running_idp(relying_party, faults=(fault,)) as idp:
        flow = sign_in(idp, relying_party)
        assert misbehaviour(flow) == {fault}
        assert idp.metadata["issuer"] == idp.issuer  # discovery itself stays honest
        assert flow.params is not None
        if fault == "wrong_iss_param":
            assert flow.params["iss"] == OTHER_ISSUER
        if fault == "error_access_denied":
            assert flow.params["error_description"] and "code" not in flow.params
            return
        assert flow.token is not None
        id_token = flow.token["id_token"]
        header, claims, signature = unverified(id_token)
        assert claims["sub"] == JAN.sub
        if fault in SIGNATURE_FAULTS:
            with pytest.raises(JoseError):
                verified_claims(id_token, idp.jwks)
        else:
            verified_claims(id_token, idp.jwks)
        kid = idp.jwks["keys"][0]["kid"]
        if fault in ("rogue_signature", "hs256"):
            assert header["kid"] == kid  # only the signature gives it away
        if fault == "alg_none":
            assert header["alg"] == "none" and signature == ""
        if fault == "hs256":  # keyed with the public key: the algorithm-confusion attack
            public_pem = KeySet.import_key_set(idp.jwks).keys[0].as_pem(private=False)
            signing_input = id_token.rsplit(".", 1)[0].encode()
            mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
            assert signature == base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        if fault == "wrong_issuer":
            assert claims["iss"] == OTHER_ISSUER
        if fault == "wrong_audience":
            assert claims["aud"] == "someone-else"


def test_unknown_fault_is_refused(relying_party: RelyingParty) -> None:
    with pytest.raises(ValueError, match="unknown demo IdP faults"):
        create_idp_app("http://127.0.0.1:1", display_name="X", accounts=[],
                       clients=relying_party.clients(), faults=["typo"])


# -- the demo application against it ----------------------------------------------------------


@contextmanager
def demo_site(faults: tuple[str, ...] = ()) -> Iterator[tuple[str, Flask]]:
    """The demo topology: IdP and application mounted on one host:port, like ``idbroker demo``."""
    deferred = DeferredApp()
    with serve_wsgi(deferred) as (base, _):
        issuer, app_base = base + MOUNT, base + "/demo-app/wvggz"
        app = create_client_app(
            title="Demo WVGGZ-toepassing", client_id="demo-wvggz", issuer=issuer,
            base_url=app_base, private_key_pem=generate_demo_client_key(),
            scope="openid profile email", extra_authorize_params={"acr_values": LOA_SUBSTANTIAL})
        idp_app = create_idp_app(
            issuer, display_name="Gemeente Utrecht", accounts=[JAN], faults=faults,
            clients=[DemoClient("demo-wvggz", (app_base + "/callback",),
                                jwks_uri=app_base + "/jwks.json")])
        deferred.target = DispatcherMiddleware(
            NotFound(), {MOUNT: idp_app, "/demo-app/wvggz": app})
        yield app_base, app


def browse_to_login(app_base: str) -> tuple[requests.Session, requests.Response]:
    browser = requests.Session()
    home = browser.get(app_base + "/", timeout=5)
    assert home.status_code == 200 and "Inloggen via idbroker" in home.text
    form_page = browser.get(app_base + "/login", timeout=5)
    assert form_page.status_code == 200 and "Inloggen bij Gemeente Utrecht" in form_page.text
    action = re.search(r'<form method="post" action="([^"]+)"', form_page.text)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form_page.text)
    assert action and csrf
    answer = browser.post(urljoin(form_page.url, html.unescape(action.group(1))), timeout=5,
                          data={"csrf_token": csrf.group(1), "username": "jan",
                                "password": "Welkom-jan-1"})
    return browser, answer


def logout_form_token(page: requests.Response) -> str:
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf
    return csrf.group(1)


def test_demo_application_logs_in_at_a_standard_op() -> None:
    with demo_site() as (app_base, _):
        browser, home = browse_to_login(app_base)
        assert home.status_code == 200 and home.url == app_base + "/"
        text = html.unescape(home.text)
        assert "<title>Demo WVGGZ-toepassing</title>" in text
        assert f'"sub": "{JAN.sub}"' in text
        assert '"alg": "ES256"' in text
        assert f'"acr": "{LOA_SUBSTANTIAL}"' in text
        assert "ondoorzichtig token" in text  # the demo IdP's access tokens are opaque
        assert f'"email": "{JAN.email}"' in text  # the userinfo answer
        assert home.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert "<style" not in home.text and "<script" not in home.text
        assert browser.get(app_base + "/style.css", timeout=5).headers[
            "Content-Type"].startswith("text/css")
        names = {cookie.name: cookie.path for cookie in browser.cookies}
        assert names == {"demoapp_demo-wvggz": "/demo-app/wvggz",
                         "demoidp_gemeente_utrecht": MOUNT}

        logged_out = browser.post(app_base + "/logout", timeout=5,
                                  data={"csrf_token": logout_form_token(home)})
        # this OP has no end_session_endpoint: the app only forgets the login
        assert logged_out.status_code == 200 and "Inloggen via idbroker" in logged_out.text


def test_demo_application_rp_initiated_logout() -> None:
    with demo_site() as (app_base, app):
        browser, home = browse_to_login(app_base)
        # pretend the OP advertises RP-initiated logout, as the broker does
        broker = app.extensions["authlib.integrations.flask_client"].broker
        end_session = broker.server_metadata["issuer"] + "/logout"
        broker.server_metadata["end_session_endpoint"] = end_session
        assert "Ingelogd als" in home.text
        refused = browser.post(app_base + "/logout", data={"csrf_token": "forged"},
                               allow_redirects=False, timeout=5)
        assert refused.status_code == 400
        answer = browser.post(app_base + "/logout", data={"csrf_token": logout_form_token(home)},
                              allow_redirects=False, timeout=5)
        assert answer.status_code == 302
        location = answer.headers["Location"]
        assert location.split("?")[0] == end_session
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert params["post_logout_redirect_uri"] == app_base + "/"
        assert params["client_id"] == "demo-wvggz" and params["state"]
        assert jwt.decode(params["id_token_hint"], KeySet.import_key_set(
            requests.get(broker.server_metadata["jwks_uri"], timeout=5).json())).claims[
                "sub"] == JAN.sub
        back = browser.get(app_base + "/", params={"state": params["state"]}, timeout=5)
        assert "U bent uitgelogd." in back.text and "Inloggen via idbroker" in back.text
        replayed = browser.get(app_base + "/", params={"state": params["state"]}, timeout=5)
        assert "U bent uitgelogd." not in replayed.text


#: What the demo application tells the user for each kind of bad answer from its OP.
APP_REFUSALS = {
    "wrong_iss_param": "(mix-up)",
    "no_iss_param": "mist de parameter 'iss'",
    "wrong_issuer": "Invalid claim: 'iss'",
    "wrong_audience": "Invalid claim: 'aud'",  # authlib skips aud unless told: the app tells it
    "wrong_nonce": "Invalid claim: 'nonce'",
    "rogue_signature": "bad_signature",
    "alg_none": "Algorithm of 'none' is not allowed",
    "hs256": "Algorithm of 'HS256' is not allowed",
    "error_access_denied": "access_denied",
}


def test_every_fault_is_tried_on_the_demo_application() -> None:
    assert set(APP_REFUSALS) == FAULTS


@pytest.mark.parametrize(("fault", "shown"), sorted(APP_REFUSALS.items()))
def test_demo_application_refuses_bad_answers_on_a_friendly_page(fault: str, shown: str) -> None:
    with demo_site(faults=(fault,)) as (app_base, _):
        _, page = browse_to_login(app_base)
        assert page.status_code == 400
        assert shown in html.unescape(page.text)
        assert "Ingelogd als" not in page.text


def test_demo_application_with_the_broker_down_shows_a_friendly_page() -> None:
    with serve_wsgi(NotFound()) as (gone, shutdown):
        shutdown()
        app = create_client_app(title="Demo", client_id="demo", issuer=gone, base_url="http://app",
                                private_key_pem=generate_demo_client_key())
        page = app.test_client().get("/login")
        assert page.status_code == 502 and "niet bereikbaar" in page.text
