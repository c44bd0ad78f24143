"""SAML 2.0 upstream connector on pysaml2: the broker as a service provider.

SP-initiated SSO only: a signed AuthnRequest (HTTP-Redirect, RSA-SHA256) goes out, a
Response comes back by HTTP-POST to the organisation's own ACS URL. What pysaml2 checks
(signature by the IdP's metadata key, InResponseTo, Audience, Destination, validity
window) is complemented here where it falls short:

- the assertion must be signed (the Response too when the policy says so), and SHA-1
  signatures or digests are refused;
- the document must hold exactly one assertion (encrypted or not) — a second one beside or
  around the signed one is the signature-wrapping attack;
- pysaml2 accepts a response twice while its request is outstanding: every Response and
  Assertion ID is kept in the store until it expires, and the request id is bound to the
  one login transaction that sent it;
- attributes are read from the assertion by their ``Name`` (URIs such as ``urn:oid:…``),
  not through pysaml2's friendly-name maps, and mapped as the policy says.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hmac
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, time_util
from saml2 import saml as saml_ns
from saml2.config import SPConfig
from saml2.metadata import entity_descriptor
from saml2.response import StatusError
from saml2.samlp import RequestedAuthnContext
from saml2.sigver import RSACrypto, import_rsa_key_from_file
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

from idbroker.assurance.levels import Level
from idbroker.policy.idp import SamlIdp
from idbroker.policy.model import Organisation
from idbroker.store import Store
from idbroker.upstream.base import UpstreamError, UpstreamIdentity, UpstreamRedirect, mapped_attributes
from idbroker.upstream.saml.crypto import InProcessXmlSec, UnsafeXml, parse_xml
from idbroker.upstream.saml.keys import KeyPair
from idbroker.upstream.saml.metadata import IdpMetadata, MetadataSource
from idbroker.upstream.saml.schema import install as install_schema_validator
from idbroker.upstream.saml.security import SinglePassSaml2Client
from idbroker.upstream.saml.security import install as install_pysaml2_tuning

log = logging.getLogger("idbroker.upstream.saml")

_SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
_DSIG = "http://www.w3.org/2000/09/xmldsig#"
_NAMEID_FORMATS = {
    "persistent": saml_ns.NAMEID_FORMAT_PERSISTENT,
    "transient": saml_ns.NAMEID_FORMAT_TRANSIENT,
    "unspecified": saml_ns.NAMEID_FORMAT_UNSPECIFIED,
    "emailAddress": saml_ns.NAMEID_FORMAT_EMAILADDRESS,
}
_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
_MAX_RESPONSE_BYTES = 256 * 1024
_SEEN = "saml-seen"


@dataclass(frozen=True)
class ServiceProvider:
    """The broker's SP for one organisation: its own entity id and endpoints."""

    entity_id: str  # also the URL that publishes the SP metadata
    acs_url: str
    signing: KeyPair
    encryption: KeyPair


class SamlConnector:
    """Talks to one organisation's SAML IdP."""

    def __init__(self, organisation: Organisation, *, sp: ServiceProvider, metadata: MetadataSource,
                 store: Store, clock_skew: int = 60) -> None:
        if not isinstance(organisation.idp, SamlIdp):
            raise TypeError("SamlConnector needs a SAML IdP")
        self.organisation = organisation
        self.idp: SamlIdp = organisation.idp
        self.sp = sp
        self.metadata = metadata
        self.store = store
        self.clock_skew = clock_skew
        self._lock = threading.Lock()
        self._client: tuple[str, SinglePassSaml2Client] | None = None
        install_schema_validator()
        install_pysaml2_tuning()

    # -- the protocol ------------------------------------------------------------

    def begin(self, *, redirect_uri: str, state: str, login_hint: str | None = None,
              force_login: bool = False, wanted: Level | None = None,
              max_age: int | None = None) -> UpstreamRedirect:
        client = self._saml_client()
        extra: dict[str, Any] = {}
        values = self.idp.assurance.values_to_request(wanted)
        if values:
            extra["requested_authn_context"] = RequestedAuthnContext(
                authn_context_class_ref=[saml_ns.AuthnContextClassRef(text=values[0])],
                comparison="minimum")
        if force_login or max_age is not None:  # SAML has no max_age: a fresh login then
            extra["force_authn"] = "true"
        try:
            request_id, _binding, info = client.prepare_for_negotiated_authenticate(
                entityid=self.idp.entity_id, relay_state=state, binding=BINDING_HTTP_REDIRECT,
                sign=True, sigalg=SIG_RSA_SHA256, digest_alg=DIGEST_SHA256,
                nameid_format=_NAMEID_FORMATS[self.idp.name_id_format], **extra)
        except Exception as exc:  # pysaml2 raises plain exceptions for metadata gaps
            raise UpstreamError("invalid", f"cannot make an AuthnRequest: {exc}") from exc
        location = dict(info["headers"])["Location"]
        return UpstreamRedirect(location, {"request_id": request_id, "relay_state": state,
                                           "requested": list(values[:1])})

    def complete(self, *, redirect_uri: str, response: Mapping[str, str],
                 kept: Mapping[str, Any]) -> UpstreamIdentity:
        request_id = kept.get("request_id")
        if not request_id or not hmac.compare_digest(str(response.get("RelayState", "")),
                                                     str(kept.get("relay_state", ""))):
            raise UpstreamError("invalid", "no AuthnRequest of this login is outstanding")
        encoded = str(response.get("SAMLResponse", ""))
        if not encoded:
            raise UpstreamError("invalid", "no SAMLResponse")
        if len(encoded) > _MAX_RESPONSE_BYTES:
            raise UpstreamError("invalid", "SAMLResponse too large")
        try:
            document = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UpstreamError("invalid", "SAMLResponse is not base64") from exc
        encrypted = self._check_shape(document)
        if self.idp.require_encrypted_assertions and not encrypted:
            raise UpstreamError("invalid", "assertion was not encrypted, and the policy requires it")
        client = self._saml_client()
        try:
            answer = client.parse_authn_request_response(
                encoded, BINDING_HTTP_POST, outstanding={request_id: self.organisation.id})
        except StatusError as exc:
            raise UpstreamError("denied", f"IdP status: {type(exc).__name__}: {str(exc)[:200]}") from exc
        except UnsafeXml as exc:
            raise UpstreamError("invalid", f"response refused: {exc}") from exc
        except Exception as exc:  # pysaml2 signals each failed check with its own exception class
            raise UpstreamError("invalid", f"response refused: {type(exc).__name__}: "
                                           f"{str(exc)[:200]}") from exc
        finally:
            client.forget()
        if answer is None or answer.assertion is None:
            raise UpstreamError("invalid", "response refused: no usable assertion")
        if answer.in_response_to != request_id:
            raise UpstreamError("invalid", "InResponseTo is not this login's request")
        self._check_bearer(answer.assertion, request_id)
        self._remember_once(answer)
        return self._identity(answer)

    # -- checks --------------------------------------------------------------------

    def _check_shape(self, document: bytes) -> bool:
        """Refuse before pysaml2 sees it: DOCTYPEs, more than one assertion, a Status that is
        not Success. (Weak signature algorithms are refused where signatures are checked:
        ``InProcessXmlSec``, which also sees inside encrypted assertions.)
        True when the one assertion is encrypted."""
        try:
            root = parse_xml(document)
        except ValueError as exc:
            raise UpstreamError("invalid", f"SAMLResponse: {exc}") from exc
        if root.tag != f"{{{_SAMLP}}}Response":
            raise UpstreamError("invalid", "SAMLResponse is not a samlp:Response")
        status = root.find(f"{{{_SAMLP}}}Status/{{{_SAMLP}}}StatusCode")
        if status is not None and status.get("Value") != _SUCCESS:
            # Only a refusal, signed or not: it can deny a login, never grant one.
            nested = status.find(f"{{{_SAMLP}}}StatusCode")
            detail = nested.get("Value") if nested is not None else ""
            raise UpstreamError("denied", f"IdP status {status.get('Value')} {detail}".strip())
        assertions = list(root.iter(f"{{{_SAML}}}Assertion", f"{{{_SAML}}}EncryptedAssertion"))
        plain = [element for element in assertions if etree.QName(element).localname == "Assertion"]
        encrypted = len(assertions) - len(plain)
        if len(assertions) != 1 or (encrypted and plain):
            raise UpstreamError("invalid", f"response holds {len(assertions)} assertions; exactly one "
                                           "is allowed (signature wrapping?)")
        if plain and plain[0].getparent() is not root:
            raise UpstreamError("invalid", "the assertion is not a direct child of the Response")
        if self.idp.require_signed_response and root.find(f"{{{_DSIG}}}Signature") is None:
            raise UpstreamError("invalid", "the Response is not signed, and the policy requires it")
        return bool(encrypted)

    def _check_bearer(self, assertion: Any, request_id: str) -> None:
        """SAML Web SSO profile §4.1.4.3: the assertion is confirmed by bearer, for this ACS
        (``Recipient``) and this login's AuthnRequest (``InResponseTo``), which binds a signed
        assertion to the login even when the Response around it is not signed. pysaml2 checks
        a Recipient only when told the ACS (and then also takes the SP's entity id), and an
        InResponseTo only when one is there; both are required here, in every bearer one."""
        subject = assertion.subject
        bearers = [confirmation for confirmation in (subject.subject_confirmation if subject else None) or ()
                   if confirmation.method == saml_ns.SCM_BEARER]
        if not bearers:
            raise UpstreamError("invalid", "the assertion has no bearer subject confirmation")
        for confirmation in bearers:
            data = confirmation.subject_confirmation_data
            if data is None or data.recipient != self.sp.acs_url:
                raise UpstreamError("invalid", "the subject confirmation's Recipient is not this broker's "
                                               "ACS")
            if data.in_response_to != request_id:
                raise UpstreamError("invalid", "the subject confirmation's InResponseTo is not this login's "
                                               "request")

    def _remember_once(self, answer: Any) -> None:
        """Each Response and Assertion ID is good for one login, across all instances."""
        now = time.time()
        expiry = now + 300
        conditions = answer.assertion.conditions
        if conditions is not None and conditions.not_on_or_after:
            expiry = calendar.timegm(time_util.str_to_time(conditions.not_on_or_after))
        ttl = max(expiry - now, 0) + self.clock_skew + 60
        for kind, identifier in (("response", answer.response.id), ("assertion", answer.assertion.id)):
            if not self.store.add(_SEEN, f"{self.idp.entity_id} {kind} {identifier}", {"at": now}, ttl):
                raise UpstreamError("invalid", f"{kind} {identifier} was already used (replay)")

    # -- identity ------------------------------------------------------------------

    def _identity(self, answer: Any) -> UpstreamIdentity:
        assertion = answer.assertion
        attributes: dict[str, list[str]] = {}
        for statement in assertion.attribute_statement or ():
            for attribute in statement.attribute or ():
                values = [value.text.strip() for value in attribute.attribute_value or ()
                          if value.text and value.text.strip()]
                attributes.setdefault(attribute.name, []).extend(values)
                if attribute.friendly_name:
                    attributes.setdefault(attribute.friendly_name, []).extend(values)
        mapping = self.idp.attributes
        if mapping.subject == "name_id":
            name_id = assertion.subject.name_id
            # No Format is 'unspecified' (SAML Core 2.2.2), which leaves the kind to the IdP the
            # policy describes. A transient NameID changes every login; another named format
            # is another namespace of names.
            unspecified = saml_ns.NAMEID_FORMAT_UNSPECIFIED
            sent = (name_id.format if name_id is not None else None) or unspecified
            wanted = _NAMEID_FORMATS[self.idp.name_id_format]
            taken = sent in (wanted, unspecified) or (wanted == unspecified
                                                       and sent != saml_ns.NAMEID_FORMAT_TRANSIENT)
            if not taken:
                raise UpstreamError("invalid", f"NameID format {sent} is not the policy's {wanted}")
            subject = name_id.text.strip() if name_id is not None and name_id.text else ""
        else:
            subject = (attributes.get(mapping.subject) or [""])[0]
        if not subject:
            raise UpstreamError("invalid", f"no subject ({mapping.subject}) in the assertion")
        normalised: dict[str, Any] = {}
        for field, source in mapping.fields().items():
            values = attributes.get(source)
            if values:
                # Groups and the policy's own attributes keep every value (a rule matches any);
                # mapped_attributes keeps the first of a profile claim.
                normalised[field] = list(values) if field == "groups" or len(values) > 1 else values[0]
        class_ref, auth_time = None, None
        for statement in assertion.authn_statement or ():
            context = statement.authn_context
            if context is not None and context.authn_context_class_ref is not None:
                class_ref = (context.authn_context_class_ref.text or "").strip() or None  # empty: none
            if statement.authn_instant:
                auth_time = _authn_instant(statement.authn_instant)
        return UpstreamIdentity(
            organisation=self.organisation.id,
            issuer=self.idp.entity_id,
            subject=subject,
            attributes=mapped_attributes(normalised),
            upstream_acr=class_ref,
            amr=(),
            auth_time=auth_time,
        )

    # -- pysaml2 -------------------------------------------------------------------

    def _saml_client(self) -> SinglePassSaml2Client:
        metadata = self._metadata()
        with self._lock:
            if self._client is not None and self._client[0] == metadata.digest:
                return self._client[1]
        # The in-process backend replaces the xmlsec1 subprocess (same library, no fork), in a
        # client that does each piece of work on a Response once.
        client = SinglePassSaml2Client(self.config(metadata), crypto=InProcessXmlSec(),
                                       signing_key=RSACrypto(import_rsa_key_from_file(str(self.sp.signing.key_file))))
        with self._lock:
            self._client = (metadata.digest, client)
        return client

    def _metadata(self) -> IdpMetadata:
        return self.metadata.current()

    def config(self, metadata: IdpMetadata | None) -> SPConfig:
        settings: dict[str, Any] = {
            "entityid": self.sp.entity_id,
            "key_file": str(self.sp.signing.key_file),
            "cert_file": str(self.sp.signing.cert_file),
            "encryption_keypairs": [{"key_file": str(self.sp.encryption.key_file),
                                     "cert_file": str(self.sp.encryption.cert_file)}],
            "crypto_backend": "XMLSecurity",  # replaced by InProcessXmlSec; never runs xmlsec1
            "allow_unknown_attributes": True,
            "accepted_time_diff": self.clock_skew,
            "service": {"sp": {
                "name": f"idbroker ({self.organisation.name})",
                "endpoints": {"assertion_consumer_service": [(self.sp.acs_url, BINDING_HTTP_POST)]},
                "authn_requests_signed": True,
                "want_assertions_signed": True,
                "want_response_signed": self.idp.require_signed_response,
                "allow_unsolicited": False,
                # Inside service.sp, or pysaml2 silently signs with SHA-1.
                "signing_algorithm": SIG_RSA_SHA256,
                "digest_algorithm": DIGEST_SHA256,
                "name_id_format": [_NAMEID_FORMATS[self.idp.name_id_format]],
            }},
        }
        if metadata is not None:
            settings["metadata"] = {"inline": [metadata.xml]}
        config = SPConfig()
        config.load(settings)
        return config

    def sp_metadata(self) -> str:
        """The SP metadata this organisation's IdP needs: entity id, ACS URL, both keys."""
        descriptor = entity_descriptor(self.config(None))
        return str(descriptor)


def _authn_instant(text: str) -> int:
    """``AuthnInstant`` as epoch seconds. SAML Core 1.3.3 wants UTC with no time zone part;
    pysaml2 reads only that, and checks no ``AuthnInstant`` itself, so anything else (an
    offset, which XML Schema allows) is refused here as the IdP's fault, not a 500."""
    try:
        return calendar.timegm(time_util.str_to_time(text))
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise UpstreamError("invalid", "AuthnInstant is not a SAML time (UTC, no offset)") from exc
