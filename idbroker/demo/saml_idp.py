"""A demo organisation IdP that speaks SAML 2.0: a real pysaml2 identity provider.

Like the OIDC demo IdP, the broker reaches it over real HTTP: it publishes signed metadata,
receives signed AuthnRequests by HTTP-Redirect (checked against the broker's SP metadata,
fetched from the broker's metadata URL), shows a login form, and posts a Response with a
signed — and, when the SP publishes an encryption key, AES-256-GCM-encrypted — assertion
back to the ACS URL named in the SP metadata.

``faults`` makes it misbehave on purpose (see :data:`SAML_FAULTS`), so that tests can show
the broker refuses each kind of bad SAML answer.
"""

from __future__ import annotations

import base64
import hmac
import html
import secrets
import tempfile
import threading
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Flask, Response, request, session
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.metadata import entity_descriptor
from saml2.s_utils import UnknownPrincipal, UnsupportedBinding
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_PERSISTENT, NameID
from saml2.server import Server
from saml2.sigver import RSACrypto, import_rsa_key_from_file
from saml2.time_util import instant

from idbroker.demo.idp import DemoAccount
from idbroker.upstream.saml.crypto import InProcessXmlSec, parse_xml, sign_enveloped
from idbroker.upstream.saml.keys import KeyPair, ensure_key_pair

__all__ = ["SAML_FAULTS", "DemoSamlIdp", "create_saml_idp_app"]

_SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
_MD = "urn:oasis:names:tc:SAML:2.0:metadata"

#: The deliberate misbehaviours, each touching only what its name says.
SAML_FAULTS = frozenset({
    "unsigned",              # neither Response nor assertion signed
    "foreign_key",           # assertion signed by a key that is not in the metadata
    "wrap_beside",           # a second, unsigned assertion beside the signed one
    "wrap_inside",           # the signed assertion hidden inside an unsigned one
    "sha1",                  # RSA-SHA1 signature and SHA-1 digest
    "wrong_audience",        # Audience is another SP
    "wrong_destination",     # Response Destination is another URL
    "expired",               # NotOnOrAfter ten minutes ago
    "not_yet_valid",         # NotBefore ten minutes ahead
    "status_denied",         # Status Responder / RequestDenied, no assertion
    "unknown_in_response_to",  # InResponseTo names a request nobody sent
    "plaintext",             # assertion not encrypted even though the SP has an encryption key
    "no_class_ref",          # AuthnStatement without AuthnContextClassRef
    "empty_class_ref",       # an AuthnContextClassRef element without text
    "authn_instant_offset",  # AuthnInstant with a time zone offset (XML Schema's, not SAML's)
    "recipient_elsewhere",   # SubjectConfirmationData Recipient is another SP's ACS
    "confirmation_unbound",  # SubjectConfirmationData without InResponseTo (the Response has it)
    "transient_name_id",     # a transient NameID where the SP asked for a persistent one
})

ATTRIBUTE_NAMES = {
    "name": "urn:oid:2.16.840.1.113730.3.1.241",
    "given_name": "urn:oid:2.5.4.42",
    "email": "urn:oid:0.9.2342.19200300.100.1.3",
    "employee_number": "urn:oid:2.16.840.1.113730.3.1.3",
    "groups": "urn:oid:1.3.6.1.4.1.5923.1.5.1.1",
}
ASSERTION_LIFETIME = 300


class DemoSamlIdp:
    """State and keys of one demo SAML IdP; ``entity_id`` is also its metadata URL."""

    def __init__(self, base_url: str, *, display_name: str, accounts: Iterable[DemoAccount],
                 sp_metadata_url: str, keys_dir: Path, class_ref: str,
                 faults: Collection[str] = ()) -> None:
        unknown = set(faults) - SAML_FAULTS
        if unknown:
            raise ValueError(f"unknown SAML faults: {sorted(unknown)}")
        self.base_url = base_url.rstrip("/")
        self.entity_id = self.base_url + "/metadata"
        self.display_name = display_name
        self.accounts = {account.username: account for account in accounts}
        self.sp_metadata_url = sp_metadata_url
        self.class_ref = class_ref
        self.faults = frozenset(faults)
        slug = urlsplit(self.base_url).path.strip("/").replace("/", "-") or "saml-idp"
        self.signing: KeyPair = ensure_key_pair(keys_dir, f"{slug}-signing", common_name=display_name)
        self.rogue: KeyPair | None = (ensure_key_pair(keys_dir, f"{slug}-rogue", common_name="rogue")
                                      if "foreign_key" in self.faults else None)
        self._lock = threading.Lock()
        self._server: Server | None = None

    # -- metadata ---------------------------------------------------------------------

    def config(self, sp_metadata: str | None) -> IdPConfig:
        settings: dict[str, Any] = {
            "entityid": self.entity_id,
            "key_file": str(self.signing.key_file),
            "cert_file": str(self.signing.cert_file),
            "crypto_backend": "XMLSecurity",
            "allow_unknown_attributes": True,
            "service": {"idp": {
                "name": self.display_name,
                "endpoints": {"single_sign_on_service": [(self.base_url + "/sso", BINDING_HTTP_REDIRECT)]},
                "name_id_format": [NAMEID_FORMAT_PERSISTENT],
                "want_authn_requests_signed": True,
                "signing_algorithm": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                "digest_algorithm": "http://www.w3.org/2001/04/xmlenc#sha256",
                "policy": {"default": {"lifetime": {"minutes": 5}, "name_form": NAME_FORMAT_URI}},
            }},
        }
        if sp_metadata is not None:
            settings["metadata"] = {"inline": [sp_metadata]}
        config = IdPConfig()
        config.load(settings)
        return config

    def metadata_xml(self) -> bytes:
        """The IdP's metadata, signed with its own key (an ID on the root makes it referable)."""
        root = parse_xml(str(entity_descriptor(self.config(None))))
        root.set("ID", "md-" + secrets.token_hex(8))
        root.set("validUntil", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400)))
        root.set("cacheDuration", "PT1H")
        sign_enveloped(root, str(self.signing.key_file), str(self.signing.cert_file))
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    def server(self) -> Server:
        """pysaml2's IdP, made once the broker's SP metadata can be fetched."""
        with self._lock:
            if self._server is not None:
                return self._server
        reply = requests.get(self.sp_metadata_url, timeout=5)
        reply.raise_for_status()
        server = Server(config=self.config(reply.text))
        server.sec.crypto = InProcessXmlSec()
        server.sec.sec_backend = RSACrypto(import_rsa_key_from_file(str(self.signing.key_file)))
        with self._lock:
            self._server = server
        return server

    # -- responses ----------------------------------------------------------------------

    def response_for(self, account: DemoAccount | None, authn_request: Any) -> tuple[str, str]:
        """(ACS URL, base64 Response) for the SP that sent ``authn_request``."""
        server = self.server()
        sp_entity_id = authn_request.issuer.text
        acs_url = server.metadata.assertion_consumer_service(sp_entity_id, BINDING_HTTP_POST)[0]["location"]
        if account is None or "status_denied" in self.faults:
            xml = str(server.create_error_response(authn_request.id, acs_url,
                                                   UnknownPrincipal("request denied"), sign=False))
            root = parse_xml(xml)
            for code in root.iter(f"{{{_SAMLP}}}StatusCode"):
                if code.getparent().tag == f"{{{_SAMLP}}}Status":
                    code.set("Value", "urn:oasis:names:tc:SAML:2.0:status:Responder")
            return acs_url, _encode(root)
        identity = {ATTRIBUTE_NAMES["name"]: [account.name],
                    ATTRIBUTE_NAMES["email"]: [account.email],
                    ATTRIBUTE_NAMES["groups"]: list(account.groups)}
        if account.employee_number:
            identity[ATTRIBUTE_NAMES["employee_number"]] = [account.employee_number]
        authn = {"class_ref": account.acr or self.class_ref, "authn_instant": int(time.time())}
        xml = server.create_authn_response(
            identity, authn_request.id, acs_url, sp_entity_id,
            name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text=account.sub),
            authn=authn, sign_assertion=False, sign_response=False, encrypt_assertion=False)
        root = parse_xml(str(xml))
        self._apply_faults(root)
        assertion = root.find(f"{{{_SAML}}}Assertion")
        if "unsigned" not in self.faults:
            signer = self.rogue or self.signing
            sign_enveloped(assertion, str(signer.key_file), str(signer.cert_file), sha1="sha1" in self.faults)
        if "wrap_beside" in self.faults or "wrap_inside" in self.faults:
            self._wrap(root, assertion)
        encryption_certs = server.metadata.certs(sp_entity_id, "spsso", "encryption")
        if encryption_certs and "plaintext" not in self.faults:
            root = self._encrypt(root, encryption_certs[0][1])
        return acs_url, _encode(root)

    def _apply_faults(self, root: etree._Element) -> None:
        now = time.time()
        assertion = root.find(f"{{{_SAML}}}Assertion")
        if "wrong_destination" in self.faults:
            root.set("Destination", "https://elsewhere.example/acs")
        if "unknown_in_response_to" in self.faults:
            root.set("InResponseTo", "id-nobody-sent-this")
            for data in assertion.iter(f"{{{_SAML}}}SubjectConfirmationData"):
                data.set("InResponseTo", "id-nobody-sent-this")
        if "wrong_audience" in self.faults:
            for audience in assertion.iter(f"{{{_SAML}}}Audience"):
                audience.text = "https://another-sp.example/metadata"
        if "expired" in self.faults or "not_yet_valid" in self.faults:
            shift = -600 - ASSERTION_LIFETIME if "expired" in self.faults else 600
            for element in assertion.iter(f"{{{_SAML}}}Conditions", f"{{{_SAML}}}SubjectConfirmationData"):
                if element.get("NotBefore"):
                    element.set("NotBefore", instant(time_stamp=int(now + shift)))
                if element.get("NotOnOrAfter"):
                    element.set("NotOnOrAfter", instant(time_stamp=int(now + shift + ASSERTION_LIFETIME)))
            conditions = assertion.find(f"{{{_SAML}}}Conditions")
            if "not_yet_valid" in self.faults and conditions is not None:
                conditions.set("NotBefore", instant(time_stamp=int(now + shift)))
        if "no_class_ref" in self.faults:
            for context in assertion.iter(f"{{{_SAML}}}AuthnContext"):
                for ref in list(context):
                    context.remove(ref)
                etree.SubElement(context, f"{{{_SAML}}}AuthnContextDeclRef").text = "urn:demo:none"
        if "empty_class_ref" in self.faults:
            for ref in assertion.iter(f"{{{_SAML}}}AuthnContextClassRef"):
                ref.text = None
        for data in assertion.iter(f"{{{_SAML}}}SubjectConfirmationData"):
            if "recipient_elsewhere" in self.faults:
                data.set("Recipient", "https://another-sp.example/acs")
            if "confirmation_unbound" in self.faults:
                data.attrib.pop("InResponseTo", None)
        if "transient_name_id" in self.faults:
            for name_id in assertion.iter(f"{{{_SAML}}}NameID"):
                name_id.set("Format", "urn:oasis:names:tc:SAML:2.0:nameid-format:transient")
        if "authn_instant_offset" in self.faults:
            for statement in assertion.iter(f"{{{_SAML}}}AuthnStatement"):
                statement.set("AuthnInstant", time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now)))

    def _wrap(self, root: etree._Element, signed: etree._Element) -> None:
        """The classic XML signature wrapping: an evil assertion the signature does not cover."""
        evil = etree.fromstring(etree.tostring(signed))
        for signature in evil.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
            evil.remove(signature)
        evil.set("ID", "_evil" + secrets.token_hex(8))
        for name_id in evil.iter(f"{{{_SAML}}}NameID"):
            name_id.text = "someone-else"
        if "wrap_beside" in self.faults:
            signed.addprevious(evil)
        else:
            root.replace(signed, evil)
            evil.append(signed)

    def _encrypt(self, root: etree._Element, certificate_body: str) -> etree._Element:
        pem = "-----BEGIN CERTIFICATE-----\n" + certificate_body.strip() + "\n-----END CERTIFICATE-----\n"
        with tempfile.NamedTemporaryFile("w", suffix=".pem", encoding="ascii") as cert_file:
            cert_file.write(pem)
            cert_file.flush()
            for assertion in root.findall(f"{{{_SAML}}}Assertion"):
                holder = etree.Element(f"{{{_SAML}}}EncryptedAssertion")
                assertion.addprevious(holder)
                holder.append(assertion)
            return parse_xml(InProcessXmlSec().encrypt_assertion(etree.tostring(root, encoding="unicode"),
                                                                 cert_file.name, None))


def _encode(root: etree._Element) -> str:
    return base64.b64encode(etree.tostring(root, xml_declaration=True, encoding="UTF-8")).decode("ascii")


_PAGE = """<!doctype html>
<html lang="nl"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body><main><h1>{title}</h1>{body}</main></body></html>
"""


def create_saml_idp_app(base_url: str, *, display_name: str, accounts: Iterable[DemoAccount],
                        sp_metadata_url: str, keys_dir: Path,
                        class_ref: str = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
                        faults: Collection[str] = ()) -> Flask:
    """A Flask app that is the demo SAML IdP at ``base_url`` (mount it at that path)."""
    idp = DemoSamlIdp(base_url, display_name=display_name, accounts=accounts,
                      sp_metadata_url=sp_metadata_url, keys_dir=keys_dir, class_ref=class_ref,
                      faults=faults)
    app = Flask(__name__, static_folder=None)
    app.config.update(SECRET_KEY=secrets.token_bytes(32),
                      SESSION_COOKIE_NAME="demosamlidp_" + secrets.token_hex(4),
                      SESSION_COOKIE_PATH=urlsplit(idp.base_url).path or "/",
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    app.extensions["demo_saml_idp"] = idp

    def page(title: str, body: str, status: int = 200) -> Response:
        response = Response(_PAGE.format(title=html.escape(title), body=body), status=status,
                            mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        return response

    def login_form(error: str = "") -> Response:
        csrf = session.setdefault("csrf", secrets.token_urlsafe(24))
        return page(f"Inloggen bij {display_name}", (
            (f'<p role="alert">{html.escape(error)}</p>' if error else "")
            + '<form method="post" action="login">'
            f'<input type="hidden" name="csrf_token" value="{csrf}">'
            '<label for="username">Gebruikersnaam</label> <input id="username" name="username" required>'
            '<label for="password">Wachtwoord</label> '
            '<input id="password" name="password" type="password" required>'
            '<button type="submit">Inloggen</button></form>'), 401 if error else 200)

    def post_back(account: DemoAccount | None) -> Response:
        server = idp.server()
        pending = session.get("request")
        if not pending:
            return page("Geen inlogverzoek", "<p>Start het inloggen bij de applicatie.</p>", 400)
        authn_request = server.parse_authn_request(
            pending["saml_request"], BINDING_HTTP_REDIRECT, relay_state=pending["relay_state"],
            sigalg=pending["sigalg"], signature=pending["signature"]).message
        acs_url, encoded = idp.response_for(account, authn_request)
        session.pop("request", None)
        return page("Doorsturen", (
            f'<form method="post" action="{html.escape(acs_url)}" id="saml">'
            f'<input type="hidden" name="SAMLResponse" value="{encoded}">'
            f'<input type="hidden" name="RelayState" value="{html.escape(pending["relay_state"])}">'
            '<button type="submit">Doorgaan</button></form>'))

    @app.get("/metadata")
    def metadata() -> Response:
        return Response(idp.metadata_xml(), mimetype="application/samlmetadata+xml")

    @app.get("/sso")
    def sso() -> Response:
        saml_request = request.args.get("SAMLRequest", "")
        try:
            parsed = idp.server().parse_authn_request(
                saml_request, BINDING_HTTP_REDIRECT, relay_state=request.args.get("RelayState"),
                sigalg=request.args.get("SigAlg"), signature=request.args.get("Signature"))
        except (UnsupportedBinding, Exception) as exc:  # a demo: any bad request is a 400 page
            return page("Ongeldig inlogverzoek", f"<p>{html.escape(type(exc).__name__)}</p>", 400)
        if parsed is None or not parsed.message.id:
            return page("Ongeldig inlogverzoek", "<p>Het verzoek is niet geldig ondertekend.</p>", 400)
        session["request"] = {"saml_request": saml_request,
                              "relay_state": request.args.get("RelayState", ""),
                              "sigalg": request.args.get("SigAlg"),
                              "signature": request.args.get("Signature")}
        user = idp.accounts.get(session.get("user", ""))
        if user is not None and parsed.message.force_authn != "true":
            return post_back(user)
        return login_form()

    @app.post("/login")
    def login() -> Response:
        if not hmac.compare_digest(session.get("csrf", ""), request.form.get("csrf_token", "")):
            return page("Sessie verlopen", "<p>Start het inloggen opnieuw.</p>", 400)
        account = idp.accounts.get(request.form.get("username", ""))
        if account is None or not hmac.compare_digest(account.password, request.form.get("password", "")):
            return login_form("Onbekende gebruikersnaam of wachtwoord.")
        session["user"] = account.username
        return post_back(account)

    @app.post("/deny")
    def deny() -> Response:
        return post_back(None)

    return app
