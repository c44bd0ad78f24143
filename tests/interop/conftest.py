"""idbroker against independent peers: a running broker (its own temporary ``policies/``)
whose organisations log in at ``oidc-provider``, at ``samlify`` and at the pysaml2 demo IdP,
each a process of its own, and whose chain applications are ``openid-client`` and authlib.

Every server listens on a free loopback port and is stopped by its fixture. The npm peers
are pinned in ``package.json`` / ``package-lock.json`` here and installed by ``make test``;
without Node or them the tests skip locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from idbroker.assurance.activation import ActivationCodes
from idbroker.upstream.saml.keys import ensure_key_pair
from tests.support.browser import Browser, TotpApp
from tests.support.wsgi_server import DeferredApp, serve_wsgi

REPO = Path(__file__).resolve().parents[2]
INTEROP = Path(__file__).resolve().parent
INSTALL = "run `make test` (installs Debian's nodejs/npm and `npm ci` in tests/interop)"
NPM_PACKAGES = ("oidc-provider", "openid-client", "samlify", "@authenio/samlify-xmllint-wasm", "axe-core")

SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"
LOA3 = "urn:etoegang:core:assurance-class:loa3"

#: Organisations of the interop chain, one per independent IdP (and trust setting).
OIDC_TRUSTED = "oidcp-vertrouwd"      # oidc-provider, trusted up to substantial
OIDC_UNTRUSTED = "oidcp-onvertrouwd"  # the same product (able to say substantial), trusted for nothing
OIDC_CONFORMING = "oidcp-conform"     # oidc-provider as shipped: profile claims at userinfo only
#: Each oidc-provider organisation: its e-mail domain (login_hint picks the organisation and,
#: at the IdP, the account), its staff, and whether ID tokens carry the profile claims.
OIDC_ORGS: dict[str, dict[str, Any]] = {
    OIDC_TRUSTED: {"domain": "vertrouwd.example", "trusted": True, "id_token_claims": True,
                   "staff": ("e.dekker", "f.mulder")},
    OIDC_UNTRUSTED: {"domain": "onvertrouwd.example", "trusted": False, "id_token_claims": True,
                     "staff": ("g.smits", "h.vos", "i.jacobs")},
    OIDC_CONFORMING: {"domain": "conform.example", "trusted": True, "id_token_claims": False,
                      "staff": ("k.peters",)},
}
SAMLIFY_GCM = "samlify-gcm"           # samlify: signed response, AES-256-GCM encrypted assertion
SAMLIFY_CBC = "samlify-cbc"           # samlify's default data encryption, AES-256-CBC
PYSAML2 = "pysaml2-vt"                # the pysaml2 demo IdP, separate process, eToegang loa3

#: Chain applications (clients) of the interop chain; every one needs eIDAS substantial.
RP = "interop-rp"                     # the tests' own scripted client (Python, plain HTTP)
OPENID_CLIENT = "openid-client-app"   # the npm openid-client relying party
AUTHLIB = "authlib-app"               # Python authlib's OAuth2Session
#: The application scope the organisations' crisis teams are granted in every client.
DOSSIER_SCOPE = "interop.dossier.lezen"


def missing(problem: str) -> None:
    """Skip locally, fail in CI: interop must never silently not run there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{problem}: the interop tests must run in CI; {INSTALL}", pytrace=False)
    pytest.skip(f"{problem}: {INSTALL}")


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary, once the pinned peers are installed in tests/interop/node_modules."""
    binary = shutil.which("node")
    if binary is None:
        missing("node is not installed")
    assert binary is not None
    version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        # oidc-provider 9 and openid-client 6 need the global Web Crypto API of Node 20+.
        missing(f"node {version} is too old (20 or newer is needed)")
    for package in NPM_PACKAGES:
        if not (INTEROP / "node_modules" / package / "package.json").exists():
            missing(f"the npm package {package} is not installed in tests/interop")
    return binary


# -- peer processes -----------------------------------------------------------------------

@dataclass
class Peer:
    """A peer process: its first stdout line (JSON) says where it listens."""

    name: str
    process: subprocess.Popen[str]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    def wait_ready(self, timeout: float = 20.0) -> Peer:
        line = _read_line(self.process, timeout)
        if not line:
            raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")
        self.info = json.loads(line)
        return self

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@contextmanager
def spawned(name: str, args: list[str], log_dir: Path) -> Iterator[Peer]:
    """Start ``args`` (cwd: the repository; stderr to a log file), stop it when the block ends.
    Peers start side by side; :meth:`Peer.wait_ready` waits for one to listen."""
    log = log_dir / f"{name}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(args, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True)
    try:
        yield Peer(name, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The process's next stdout line, or '' when it ends or says nothing in time."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True)
    reader.start()
    try:
        return lines.get(timeout=timeout).strip()
    except queue.Empty:
        return ""


# -- the broker and its chain -----------------------------------------------------------

@dataclass
class InteropChain:
    """The running broker and what a scripted chain application needs to talk to it."""

    base: str
    broker: Any
    policy_dir: Path
    keys: dict[str, ECKey]
    peers: dict[str, Peer] = field(default_factory=dict)

    def redirect_uri(self, client_id: str) -> str:
        return f"{self.base}/{client_id}/cb"

    def authorize_url(self, client_id: str = RP, **params: str | None) -> tuple[str, dict[str, str]]:
        """An authorization request with fresh PKCE, state and nonce; returns URL and secrets."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        query: dict[str, str | None] = {
            "response_type": "code", "client_id": client_id, "redirect_uri": self.redirect_uri(client_id),
            "scope": "openid profile email", "state": secrets.token_urlsafe(12),
            "nonce": secrets.token_urlsafe(12), "code_challenge": challenge, "code_challenge_method": "S256",
        }
        query.update(params)
        clean = {k: v for k, v in query.items() if v is not None}
        return f"{self.base}/authorize?{urlencode(clean)}", {"verifier": verifier, **clean}

    def redeem(self, code: str, verifier: str, client_id: str = RP) -> requests.Response:
        now = int(time.time())
        assertion = jwt.encode(
            {"alg": "ES256", "kid": self.keys[client_id].kid},
            {"iss": client_id, "sub": client_id, "aud": f"{self.base}/token",
             "jti": secrets.token_urlsafe(16), "iat": now, "exp": now + 60},
            self.keys[client_id])
        return requests.post(f"{self.base}/token", timeout=10, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri(client_id),
            "code_verifier": verifier, "client_id": client_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion})

    def verify(self, token: str) -> dict[str, Any]:
        keys = KeySet.import_key_set(requests.get(f"{self.base}/jwks.json", timeout=5).json())
        return dict(jwt.decode(token, keys, algorithms=["ES256", "RS256", "PS256"]).claims)

    def login(self, browser: Browser, client_id: str = RP,
              **params: str | None) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Walk ``browser`` through a whole login; return the callback's query and the request."""
        url, request = self.authorize_url(client_id, **params)
        step = browser.go(url, stop_at=self.redirect_uri(client_id))
        visited = [s.url for s in browser.history]
        assert step.url.startswith(self.redirect_uri(client_id)), (
            f"the login did not come back to the client: {visited}\n{step.body[:1500]}")
        return parse_qs(urlsplit(step.url).query), request

    def tokens(self, browser: Browser, client_id: str = RP, **params: str | None) -> dict[str, Any]:
        """A whole login and the code redeemed: the verified ID token's claims and the tokens."""
        query, request = self.login(browser, client_id, **params)
        assert "code" in query, query
        reply = self.redeem(query["code"][0], request["verifier"], client_id)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        id_token = self.verify(body["id_token"])
        assert id_token["nonce"] == request["nonce"]
        return {"id_token": id_token, "access_token": body["access_token"], "query": query}

    def issue_activation(self, browser: Browser) -> str:
        """What an administrator does (``idbroker enrol issue``) for the browser's person."""
        session = self.broker.sessions.get(browser.http.cookies.get("idb_session"))
        assert session is not None, "the browser has no SSO session"
        return ActivationCodes(self.broker.store).issue(session.person, issued_by="interop test").code

    def totp_browser(self, organisation: str, username: str) -> Browser:
        """A browser whose person gets an activation code when asked and enrols a TOTP app."""
        return Browser(username=username, organisation=organisation, activation=self.issue_activation,
                       totp=TotpApp())


#: RFC 8693: which client may exchange a person's access token towards which other one.
TOKEN_EXCHANGE_RULES = {OPENID_CLIENT: AUTHLIB, AUTHLIB: OPENID_CLIENT}


def _client(client_id: str, key: ECKey, redirect_uri: str) -> dict[str, Any]:
    exchange = ([{"audience": TOKEN_EXCHANGE_RULES[client_id], "scopes": [DOSSIER_SCOPE]}]
                if client_id in TOKEN_EXCHANGE_RULES else [])
    return {"id": client_id, "name": client_id, "redirect_uris": [redirect_uri],
            "auth_method": "private_key_jwt", "min_level": "substantial", "subject_type": "public",
            "jwks": {"keys": [key.as_dict(private=False) | {"alg": "ES256", "use": "sig"}]},
            "scopes": ["openid", "profile", "email", "offline_access"], "token_exchange": exchange,
            "claims": ["name", "email", "organisation", "team", "roles", "person", "acr", "amr", "auth_time"],
            "application_scopes": [{"name": DOSSIER_SCOPE, "description": "dossiers inzien"}]}


def _oidc_org(org_id: str, issuer: str) -> dict[str, Any]:
    idp: dict[str, Any] = {"protocol": "oidc", "issuer": issuer, "client_id": "idbroker",
                           "client_auth": "private_key_jwt", "algorithms": ["ES256"],
                           "scopes": ["openid", "profile", "email", "groups"]}
    if OIDC_ORGS[org_id]["trusted"]:
        idp["assurance"] = {"trusted_up_to": "substantial", "vocabulary": "eidas"}
    return {"id": org_id, "name": f"Organisatie {org_id}", "kind": "private",
            "domains": [OIDC_ORGS[org_id]["domain"]], "idp": idp}


def oidc_person(org_id: str, username: str) -> str:
    """The login_hint (and the IdP's account id) of one of an oidc-provider organisation's staff."""
    return f"{username}@{OIDC_ORGS[org_id]['domain']}"


def display_name(username: str) -> str:
    first, last = username.split(".")
    return f"{first.upper()}. {last.capitalize()}"


def _oidc_idp_config(base: str, org_id: str) -> str:
    accounts = {oidc_person(org_id, user): {
        "name": display_name(user), "family_name": user.split(".")[1].capitalize(),
        "email": oidc_person(org_id, user), "groups": ["crisisdienst"]}
        for user in OIDC_ORGS[org_id]["staff"]}
    return json.dumps({
        "client": {"client_id": "idbroker", "redirect_uris": [f"{base}/upstream/{org_id}/callback"],
                   "jwks_uri": f"{base}/jwks.json"},
        "accounts": accounts,
        # The IdP's own second factor: it says substantial; only a trusting policy believes it.
        "acr": SUBSTANTIAL, "amr": ["pwd", "otp"],
        "conform_id_token_claims": not OIDC_ORGS[org_id]["id_token_claims"],
    })


def _teams(organisations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One crisis team per organisation, its members named by the IdP's group claim."""
    group = {org["id"]: ("vt-crisis" if org["idp"]["protocol"] == "saml" else "crisisdienst")
             for org in organisations}
    return [{"id": f"{org_id}-crisis"[:60], "organisation": org_id, "name": f"Crisisteam {org_id}",
             "roles": [{"id": "medewerker", "min_level": "substantial",
                        "grants": {client: [DOSSIER_SCOPE] for client in (RP, OPENID_CLIENT, AUTHLIB)}}],
             "members": [{"group": name}]} for org_id, name in group.items()]


SAMLIFY_ACCOUNT = {"name_id": "sf-7001", "name": "Sanne Floor", "email": "s.floor@samlify.example",
                   "employee_number": "7001", "groups": ["vt-crisis"]}


@contextmanager
def running_interop_chain(tmp_path: Path, node: str) -> Iterator[InteropChain]:
    """The broker with the interop policy, its peers started first (they need its URL, it
    needs their issuers and metadata), served on a free loopback port until the block ends."""
    from idbroker.app import create_app
    from idbroker.config import load_settings

    deferred = DeferredApp()
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        base, _shutdown = stack.enter_context(serve_wsgi(deferred))
        # Peers start side by side (each needs the broker's URL only); then all must listen.
        peers = {org: stack.enter_context(spawned(
            org, [node, str(INTEROP / "oidc_idp.mjs"), _oidc_idp_config(base, org)], logs))
            for org in OIDC_ORGS}
        saml_keys = tmp_path / "saml-idp-keys"
        peers[PYSAML2] = stack.enter_context(spawned(
            PYSAML2, [sys.executable, "-m", "tests.interop.pysaml2_idp", f"{base}/saml/{PYSAML2}/metadata",
                      str(saml_keys), LOA3], logs))
        samlify_pair = ensure_key_pair(saml_keys, "samlify-signing", common_name="samlify interop IdP")
        samlify_idps = {name: {"sp_metadata_url": f"{base}/saml/{org}/metadata", "encryption": encryption,
                               "sign_response": True, "class_ref": LOA3, "account": SAMLIFY_ACCOUNT}
                        for name, org, encryption in (("gcm", SAMLIFY_GCM, "aes256-gcm"),
                                                      ("cbc", SAMLIFY_CBC, "aes256-cbc"))}
        samlify_config = {"key_file": str(samlify_pair.key_file), "cert_file": str(samlify_pair.cert_file),
                          "idps": samlify_idps}
        peers["samlify"] = stack.enter_context(spawned(
            "samlify", [node, str(INTEROP / "samlify_idp.mjs"), json.dumps(samlify_config)], logs))
        for peer in peers.values():
            peer.wait_ready()

        policy_dir = tmp_path / "policies"
        policy_dir.mkdir()
        organisations = [_oidc_org(org, peers[org].info["issuer"]) for org in OIDC_ORGS]
        samlify_base = peers["samlify"].info["base"]
        for name, org in (("gcm", SAMLIFY_GCM), ("cbc", SAMLIFY_CBC)):
            metadata = requests.get(f"{samlify_base}/{name}/metadata", timeout=5)
            metadata.raise_for_status()
            (policy_dir / f"{org}.xml").write_text(metadata.text, encoding="utf-8")
            organisations.append({"id": org, "name": f"Organisatie {org}", "kind": "private", "idp": {
                "protocol": "saml", "entity_id": f"{samlify_base}/{name}/metadata",
                "metadata": {"file": f"{org}.xml"}, "require_encrypted_assertions": True,
                "require_signed_response": True,
                "assurance": {"trusted_up_to": "substantial", "vocabulary": "etoegang"}}})
        pysaml2 = peers[PYSAML2].info
        organisations.append({"id": PYSAML2, "name": "Veilig Thuis (pysaml2)", "kind": "private", "idp": {
            "protocol": "saml", "entity_id": pysaml2["entity_id"],
            "metadata": {"url": pysaml2["entity_id"], "certificate": pysaml2["certificate"]},
            "require_encrypted_assertions": True,
            "assurance": {"trusted_up_to": "substantial", "vocabulary": "etoegang"}}})
        (policy_dir / "organisations.yaml").write_text(json.dumps({"organisations": organisations}),
                                                       encoding="utf-8")
        (policy_dir / "teams.yaml").write_text(json.dumps({"teams": _teams(organisations)}), encoding="utf-8")
        keys = {client_id: ECKey.generate_key("P-256", private=True, auto_kid=True)
                for client_id in (RP, OPENID_CLIENT, AUTHLIB)}
        clients = [_client(client_id, key, f"{base}/{client_id}/cb") for client_id, key in keys.items()]
        (policy_dir / "clients.yaml").write_text(json.dumps({"clients": clients}), encoding="utf-8")

        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        settings = load_settings(environ={}, overrides={
            "issuer": base, "policies_dir": str(policy_dir), "keys_dir": str(state / "keys"),
            "store.url": f"sqlite:///{state / 'idbroker.sqlite3'}"})
        app = create_app(settings)
        deferred.target = app
        yield InteropChain(base, app.extensions["idbroker"], policy_dir, keys, peers)


@pytest.fixture(scope="package")
def interop(node: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteropChain]:
    """One broker and one set of peers for the whole interop package; tests keep apart by
    browser (and by person, where factors are enrolled)."""
    with running_interop_chain(tmp_path_factory.mktemp("interop"), node) as chain:
        yield chain
