"""A running chain for integration tests: the broker with the example policy, its demo
IdPs and demo apps, plus two scripted test clients, on a real threaded HTTP server."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import ECKey
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from idbroker.assurance.activation import ActivationCodes
from idbroker.demo.idp import DemoAccount, DemoClient, create_idp_app
from idbroker.demo.launcher import DEMO_ACCOUNTS, DemoChain, build_demo
from idbroker.demo.saml_idp import SAML_FAULTS, create_saml_idp_app
from idbroker.policy.model import ClientPolicy
from idbroker.ratelimit import RateLimiter
from idbroker.upstream.saml.keys import ensure_key_pair
from tests.support.browser import Browser, TotpApp
from tests.support.soft_authenticator import SoftAuthenticator
from tests.support.wsgi_server import DeferredApp, serve_wsgi

REPO = Path(__file__).resolve().parents[2]
BASIC_SECRET = "correct-horse-battery-staple-" + "x" * 16


@dataclass
class Chain:
    """The running chain and what a scripted client needs to talk to it."""

    base: str
    demo: DemoChain
    rp_key: ECKey
    policy_dir: Path
    state_dir: Path

    rp_id = "test-rp"
    basic_id = "test-basic"

    @property
    def rp_redirect(self) -> str:
        return f"{self.base}/test-rp/cb"

    def authorize_url(self, client_id: str | None = None, **params: str) -> tuple[str, dict[str, str]]:
        """An authorization request with fresh PKCE, state and nonce; returns URL and secrets."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        query = {
            "response_type": "code", "client_id": client_id or self.rp_id,
            "redirect_uri": self.rp_redirect, "scope": "openid profile email",
            "state": secrets.token_urlsafe(12), "nonce": secrets.token_urlsafe(12),
            "code_challenge": challenge, "code_challenge_method": "S256",
        }
        query.update(params)
        query = {k: v for k, v in query.items() if v is not None}
        return f"{self.base}/authorize?{urlencode(query)}", {"verifier": verifier, **query}

    def assertion(self, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.rp_id, "sub": self.rp_id, "aud": f"{self.base}/token",
                "jti": secrets.token_urlsafe(16), "iat": now, "exp": now + 60}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode({"alg": "ES256", "kid": self.rp_key.kid}, body, self.rp_key)

    def redeem(self, code: str, verifier: str | None, *, assertion: str | None = None,
               client_id: str | None = None, **extra: str) -> requests.Response:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.rp_redirect,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion or self.assertion()}
        if verifier is not None:
            form["code_verifier"] = verifier
        form.update(extra)
        return requests.post(f"{self.base}/token", data=form, timeout=10)

    @property
    def broker(self) -> Any:
        return self.demo.broker

    def person_of(self, browser: Browser) -> str:
        """The broker person of the browser's SSO session."""
        session = self.broker.sessions.get(browser.http.cookies.get("idb_session"))
        assert session is not None, "the browser has no SSO session"
        return session.person

    def issue_activation(self, browser: Browser, **kwargs: Any) -> str:
        """What an administrator does (``idbroker enrol issue``) for the browser's person."""
        return ActivationCodes(self.broker.store).issue(self.person_of(browser), **kwargs).code

    def enrolling_browser(self, *, webauthn: bool = False, **kwargs: Any) -> Browser:
        """A browser whose person gets an activation code when asked and enrols a factor."""
        means = {"authenticator": SoftAuthenticator()} if webauthn else {"totp": TotpApp()}
        return Browser(activation=self.issue_activation, **means, **kwargs)

    def login(self, browser: Browser | None = None,
              **params: str) -> tuple[dict[str, list[str]], dict[str, str], Browser]:
        """Walk a browser through a whole login; return the callback's query and the request."""
        browser = browser or Browser()
        url, request = self.authorize_url(**params)
        step = browser.go(url, stop_at=self.rp_redirect)
        assert step.url.startswith(self.rp_redirect), step.body[:500]
        return parse_qs(urlsplit(step.url).query), request, browser


#: Demo IdPs that misbehave on purpose, each behind its own organisation.
FAULTS = ("wrong_issuer", "rogue_signature", "wrong_audience", "wrong_nonce", "alg_none", "hs256",
          "error_access_denied", "no_iss_param", "wrong_iss_param")


def fault_org(fault: str) -> str:
    return "fault-" + fault.replace("_", "-")


def saml_fault_org(fault: str) -> str:
    return "saml-fault-" + fault.replace("_", "-")


#: An OIDC organisation the policy trusts up to substantial (eIDAS vocabulary); its staff
#: log in with the IdP's own second factor when asked (the demo account carries that acr).
TRUSTED_OIDC_ORG = "ggd-vertrouwd"
TRUSTED_OIDC_ACCOUNTS = (DemoAccount("t.devos", "demo", "ggd-77", "Tess de Vos", "t.devos@ggd.demo", "77",
                                     ("ggd-crisis",), acr="http://eidas.europa.eu/LoA/substantial",
                                     amr=("pwd", "otp")),
                         DemoAccount("t.bos", "demo", "ggd-78", "Tom Bos", "t.bos@ggd.demo", "78",
                                     ("ggd-crisis",), acr="http://eidas.europa.eu/LoA/substantial",
                                     amr=("pwd", "otp")))

#: An organisation whose IdP gives a password login only (untrusted: low), with many staff,
#: so every step-up test has a person of its own (factors and lockouts are per person).
STEPUP_ORG = "gemeente-stap"
STEPUP_ACCOUNTS = tuple(DemoAccount(f"s{n:02d}", "demo", f"stap-{n:02d}", f"Stap Tester {n:02d}",
                                    f"s{n:02d}@stap.demo", str(n), ("stap",)) for n in range(1, 71))

#: A test client that only roles open (application scopes), see ``write_test_policy``.
ROLES_CLIENT = "test-roles"
#: A resource server the roles client exchanges tokens towards.
API_CLIENT = "test-api"

#: The one authenticator model the trusted organisation's policy allows.
ALLOWED_AAGUID = "8b1f5b5e-7d3c-4f7e-9a51-2f0c6d1e4a77"

#: A SAML organisation whose metadata is a file in the policy directory (written once its
#: IdP has made its keys), trusted for nothing: the broker must never ask it for a level.
SAML_FILE_ORG = "saml-bestand"


def _saml_idp(base: str, path: str, state_dir: Path) -> dict[str, Any]:
    return {"protocol": "saml", "entity_id": f"{base}{path}/metadata",
            "metadata": {"url": f"{base}{path}/metadata",
                         "certificate": str(state_dir / "keys" / f"{path.strip('/').replace('/', '-')}"
                                                                 "-signing.crt")},
            "require_encrypted_assertions": True,
            "assurance": {"trusted_up_to": "substantial", "vocabulary": "etoegang"}}


def write_test_policy(policy_dir: Path, base: str, rp_key: ECKey, closed_port: int,
                      state_dir: Path) -> None:
    shutil.copytree(REPO / "policies", policy_dir)
    organisations = [
        {"id": fault_org(fault), "name": f"Storing {fault}",
         "idp": {"protocol": "oidc", "issuer": f"{base}/fault-idp/{fault}", "client_id": "idbroker",
                 "algorithms": ["ES256"]}}
        for fault in FAULTS
    ]
    organisations += [
        {"id": saml_fault_org(fault), "name": f"SAML-storing {fault}",
         "idp": _saml_idp(base, f"/saml-fault-idp/{fault}", state_dir)}
        for fault in sorted(SAML_FAULTS)
    ]
    organisations.append({"id": TRUSTED_OIDC_ORG, "name": "GGD Vertrouwd", "idp": {
        "protocol": "oidc", "issuer": f"{base}/trusted-idp", "client_id": "idbroker", "algorithms": ["ES256"],
        "assurance": {"trusted_up_to": "substantial", "vocabulary": "eidas"}},
        # Only one (made-up) authenticator model, proven by its vendor's root: keys without
        # such an attestation (the test's software authenticator) are refused.
        "authenticators": {"attestation": "allow-list", "allowed": {ALLOWED_AAGUID: ["vendor-root.crt"]}}})
    ensure_key_pair(policy_dir, "vendor-root", common_name="Demo Authenticator Vendor Root")
    organisations.append({"id": STEPUP_ORG, "name": "Gemeente Stap", "idp": {
        "protocol": "oidc", "issuer": f"{base}/stepup-idp", "client_id": "idbroker",
        "algorithms": ["ES256"]}})
    organisations.append({"id": SAML_FILE_ORG, "name": "Zorgaanbieder Bestand", "idp": {
        "protocol": "saml", "entity_id": f"{base}/saml-file-idp/metadata",
        "metadata": {"file": "saml-file-idp.xml"}}})
    organisations.append({"id": "offline", "name": "Gemeente Onbereikbaar", "idp": {
        "protocol": "oidc", "issuer": f"http://127.0.0.1:{closed_port}/idp", "client_id": "idbroker"}})
    (policy_dir / "test-organisations.yaml").write_text(
        json.dumps({"organisations": organisations}), encoding="utf-8")
    clients = {"clients": [
        {"id": "test-rp", "name": "Test RP", "redirect_uris": [f"{base}/test-rp/cb"],
         "post_logout_redirect_uris": [f"{base}/test-rp/bye"],
         "auth_method": "private_key_jwt",
         "jwks": {"keys": [rp_key.as_dict(private=False) | {"alg": "ES256", "use": "sig"}]},
         # public: its sub is the broker's person id (the other test clients are pairwise)
         "scopes": ["openid", "profile", "email", "offline_access"], "subject_type": "public"},
        {"id": "test-basic", "name": "Test basic", "redirect_uris": [f"{base}/test-rp/cb"],
         "auth_method": "client_secret_basic",
         "client_secret_sha256": hashlib.sha256(BASIC_SECRET.encode()).hexdigest(),
         "scopes": ["openid", "profile"], "id_token_signed_response_alg": "RS256"},
        # Opens only through roles (application scopes), for the role-policy tests.
        {"id": ROLES_CLIENT, "name": "Test roles", "redirect_uris": [f"{base}/test-rp/cb"],
         "auth_method": "private_key_jwt",
         "jwks": {"keys": [rp_key.as_dict(private=False) | {"alg": "ES256", "use": "sig"}]},
         "scopes": ["openid", "profile", "email", "offline_access"],
         "claims": ["name", "organisation", "team", "roles", "acr"],
         "application_scopes": [{"name": "roles.agenda", "personal_data": False}, "roles.casus",
                                "roles.dossier"],
         "resource_uris": [f"{base}/test-roles/api"],
         "token_exchange": [{"audience": API_CLIENT, "scopes": ["api.lezen"]}]},
        # A resource server that the roles client may call on the person's behalf (RFC 8693);
        # it authenticates at introspection with the same key.
        {"id": API_CLIENT, "name": "Test API", "redirect_uris": [f"{base}/test-rp/cb"],
         "auth_method": "private_key_jwt",
         "jwks": {"keys": [rp_key.as_dict(private=False) | {"alg": "ES256", "use": "sig"}]},
         "sector": "test-api-sector",
         "application_scopes": [{"name": "api.lezen", "personal_data": False}, "api.schrijven"]},
    ]}
    if "min_level" in ClientPolicy.model_fields:
        # The test clients need no more than the request asks for (the policy's default is
        # substantial): the step-up tests ask with acr_values and the claims parameter.
        for client in clients["clients"]:
            client["min_level"] = "low"
    (policy_dir / "test-clients.yaml").write_text(json.dumps(clients), encoding="utf-8")
    # Every step-up tester is in one team whose roles need low, substantial and high.
    teams = {"teams": [{"id": "stap-team", "organisation": STEPUP_ORG, "name": "Stapteam", "roles": [
        {"id": "planner", "min_level": "low",
         "grants": {ROLES_CLIENT: ["roles.agenda"], API_CLIENT: ["api.lezen"]}},
        {"id": "medewerker", "min_level": "substantial",
         "grants": {ROLES_CLIENT: ["roles.agenda", "roles.casus"]}},
        {"id": "specialist", "min_level": "high", "grants": {ROLES_CLIENT: ["roles.dossier"]}},
    ], "members": [{"group": "stap"}]}]}
    (policy_dir / "test-teams.yaml").write_text(json.dumps(teams), encoding="utf-8")


@contextmanager
def running_chain(tmp_path: Path, overrides: dict[str, Any] | None = None) -> Iterator[Chain]:
    """The broker with the example policy, its demo IdPs and apps, the fault IdPs and the
    test clients, served on a free loopback port until the block ends."""
    deferred = DeferredApp()
    with serve_wsgi(deferred) as (base, _shutdown):
        rp_key = ECKey.generate_key("P-256", private=True, auto_kid=True)
        state_dir = tmp_path / "state"
        write_test_policy(tmp_path / "policies", base, rp_key, _closed_port(), state_dir)
        demo = build_demo(base, policies=tmp_path / "policies", state_dir=state_dir,
                          overrides=overrides)
        fault_idps = {
            f"/fault-idp/{fault}": create_idp_app(
                f"{base}/fault-idp/{fault}", display_name=f"Storing {fault}",
                accounts=DEMO_ACCOUNTS["gemeente-utrecht"], faults={fault},
                clients=[DemoClient("idbroker", (f"{base}/upstream/{fault_org(fault)}/callback",),
                                    jwks_uri=f"{base}/jwks.json")])
            for fault in FAULTS
        }
        saml_accounts = DEMO_ACCOUNTS["veilig-thuis-utrecht"]
        for fault in SAML_FAULTS:
            fault_idps[f"/saml-fault-idp/{fault}"] = create_saml_idp_app(
                f"{base}/saml-fault-idp/{fault}", display_name=f"SAML-storing {fault}",
                accounts=saml_accounts, sp_metadata_url=f"{base}/saml/{saml_fault_org(fault)}/metadata",
                keys_dir=state_dir / "keys", faults={fault})
        file_idp = create_saml_idp_app(
            f"{base}/saml-file-idp", display_name="Zorgaanbieder Bestand", accounts=saml_accounts,
            sp_metadata_url=f"{base}/saml/{SAML_FILE_ORG}/metadata", keys_dir=state_dir / "keys")
        (tmp_path / "policies" / "saml-file-idp.xml").write_bytes(
            file_idp.extensions["demo_saml_idp"].metadata_xml())
        fault_idps["/saml-file-idp"] = file_idp
        fault_idps["/trusted-idp"] = create_idp_app(
            f"{base}/trusted-idp", display_name="GGD Vertrouwd", accounts=TRUSTED_OIDC_ACCOUNTS,
            clients=[DemoClient("idbroker", (f"{base}/upstream/{TRUSTED_OIDC_ORG}/callback",),
                                jwks_uri=f"{base}/jwks.json")])
        fault_idps["/stepup-idp"] = create_idp_app(
            f"{base}/stepup-idp", display_name="Gemeente Stap", accounts=STEPUP_ACCOUNTS,
            clients=[DemoClient("idbroker", (f"{base}/upstream/{STEPUP_ORG}/callback",),
                                jwks_uri=f"{base}/jwks.json")])
        deferred.target = DispatcherMiddleware(demo.app, fault_idps)
        yield Chain(base, demo, rp_key, tmp_path / "policies", tmp_path / "state")


#: Redis databases handed to chains in turn: each chain starts on an empty one.
_REDIS_DATABASES = itertools.cycle(range(1, 16))


def store_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings that put the chain on the backend named by the fixture parameter. A Redis
    chain gets an empty database of its own: chains share the one redis-server, and one
    chain's audit trail (checkpoints signed by its own keys) must not land in another's."""
    if request.param == "redis":
        from redis import Redis

        url = f"{request.getfixturevalue('redis_url').rsplit('/', 1)[0]}/{next(_REDIS_DATABASES)}"
        with Redis.from_url(url) as client:
            client.flushdb()
        return {"store.url": url}
    return {}


BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(scope="module", params=BACKENDS)
def chain(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """One running chain per test module and store backend; tests keep apart by browser."""
    with running_chain(tmp_path_factory.mktemp("chain"), store_overrides(request)) as running:
        yield running


@contextmanager
def audit_locked(chain: Chain) -> Iterator[None]:
    """Another process holds the SQLite audit file's write lock: every write fails (after the
    log's busy timeout), as with a full or broken disk."""
    path = chain.broker.settings.audit_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None, timeout=1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _closed_port() -> int:
    """A loopback port nothing listens on: an IdP that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(autouse=True)
def _lift_ip_lockout(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test runs from 127.0.0.1: after each one on the shared chain, the administrator
    lifts the IP's count, so one test's refusals do not lock the next one out (lockouts stay
    per test)."""
    yield
    if "chain" in request.fixturenames:
        chain = request.getfixturevalue("chain")
        RateLimiter(chain.broker.store, purpose="factor").unlock(ip="127.0.0.1")
