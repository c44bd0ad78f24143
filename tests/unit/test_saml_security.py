"""The security context that parses each SAML Response once: it must answer exactly as
pysaml2 does, check every signature it would, and keep no person in memory or in the log."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import saml2.time_util
from lxml import etree
from saml2 import samlp
from saml2.server import Server
from saml2.sigver import RSACrypto, SignatureError, import_rsa_key_from_file, pem_format

from idbroker.demo.idp import DemoAccount
from idbroker.demo.saml_idp import DemoSamlIdp
from idbroker.policy.model import Organisation
from idbroker.store.sqlite import SqliteStore
from idbroker.upstream.base import UpstreamError
from idbroker.upstream.saml.connector import SamlConnector, ServiceProvider
from idbroker.upstream.saml.crypto import InProcessXmlSec, parse_xml, sign_enveloped
from idbroker.upstream.saml.keys import ensure_key_pair
from idbroker.upstream.saml.metadata import MetadataSource
from idbroker.upstream.saml.security import SinglePassSecurityContext, any_response_from_string, install

_SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
_MD = "urn:oasis:names:tc:SAML:2.0:metadata"
SP_ENTITY = "https://broker.example/saml/org/metadata"
ACS = "https://broker.example/upstream/org/saml/acs"
NAME_ID = "nameid-5f0c2a9e"
ACCOUNT = DemoAccount("p.de.vries", "pw", NAME_ID, "Pieter de Vries", "p.devries@example.org", "77",
                      ("team-a",), acr="urn:etoegang:core:assurance-class:loa3")


@dataclass
class Rig:
    idp: DemoSamlIdp
    connector: SamlConnector
    keys: Path

    def response(self, request_id: str) -> str:
        """A fresh base64 Response (signed, not encrypted) to the request ``request_id``."""

        class _Request:
            id = request_id
            issuer = type("Issuer", (), {"text": SP_ENTITY})()

        return self.idp.response_for(ACCOUNT, _Request())[1]

    @property
    def sec(self) -> SinglePassSecurityContext:
        sec = self.connector._saml_client().sec
        assert isinstance(sec, SinglePassSecurityContext)
        return sec


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    keys = tmp_path_factory.mktemp("saml-security")
    idp = DemoSamlIdp("https://idp.example/saml", display_name="Voorbeeld IdP", accounts=[ACCOUNT],
                      sp_metadata_url="unused", keys_dir=keys,
                      class_ref="urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport")
    (keys / "idp.xml").write_bytes(idp.metadata_xml())
    organisation = Organisation.model_validate({"id": "org", "name": "Organisatie", "idp": {
        "protocol": "saml", "entity_id": idp.entity_id, "metadata": {"file": "idp.xml"}}})
    sp = ServiceProvider(SP_ENTITY, ACS, ensure_key_pair(keys, "sp-signing", common_name="sp"),
                         ensure_key_pair(keys, "sp-encryption", common_name="sp"))
    store = SqliteStore(str(keys / "store.sqlite3"))
    connector = SamlConnector(organisation, sp=sp, store=store, metadata=MetadataSource(
        organisation.idp.metadata, entity_id=idp.entity_id, policy_dir=keys, store=store))
    # The IdP holds the SP metadata without the encryption key: signed, plain assertions.
    metadata = parse_xml(connector.sp_metadata())
    for descriptor in list(metadata.iter(f"{{{_MD}}}KeyDescriptor")):
        if descriptor.get("use") == "encryption":
            descriptor.getparent().remove(descriptor)
    server = Server(config=idp.config(etree.tostring(metadata, encoding="unicode")))
    server.sec.crypto = InProcessXmlSec()
    server.sec.sec_backend = RSACrypto(import_rsa_key_from_file(str(idp.signing.key_file)))
    idp._server = server
    yield Rig(idp, connector, keys)


def _text(encoded: str) -> str:
    return base64.b64decode(encoded).decode("utf-8")


def test_one_parse_reads_every_response_kind_as_pysaml2_does(rig: Rig) -> None:
    response = _text(rig.response("id-kinds"))
    logout = (f'<samlp:LogoutResponse xmlns:samlp="{_SAMLP}" ID="l-1" Version="2.0" '
              'IssueInstant="2026-01-01T00:00:00Z"><samlp:Status><samlp:StatusCode '
              'Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>'
              '</samlp:LogoutResponse>')
    for text in (response, logout):
        ours, theirs = any_response_from_string(text), samlp.any_response_from_string(text)
        assert type(ours) is type(theirs)
        assert str(ours) == str(theirs)
    for text in ('<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"/>', "<x/>"):
        with pytest.raises(Exception, match="Unknown response type"):
            samlp.any_response_from_string(text)
        with pytest.raises(Exception, match="Unknown response type"):
            any_response_from_string(text)


def test_unsigned_response_refused_when_a_signature_is_required(rig: Rig) -> None:
    text = _text(rig.response("id-required"))
    assert parse_xml(text).find("{http://www.w3.org/2000/09/xmldsig#}Signature") is None
    with pytest.raises(SignatureError, match="Signature missing for response"):
        rig.sec.correctly_signed_response(text, require_response_signature=True)
    rig.sec.forget()


def test_the_kept_parse_serves_only_the_identical_text_and_only_once(rig: Rig) -> None:
    sec = rig.sec
    first, second = _text(rig.response("id-first")), _text(rig.response("id-second"))
    with pytest.raises(SignatureError):
        sec.correctly_signed_response(first, require_response_signature=True)
    kept = sec._parsed.response
    assert kept is not None and kept.in_response_to == "id-first"
    # Another text gets its own parse, and the kept one is gone.
    other = sec.correctly_signed_response(second)
    assert other is not kept and other.in_response_to == "id-second"
    assert sec.correctly_signed_response(first) is not kept
    # The identical text gets the kept parse, once.
    with pytest.raises(SignatureError):
        sec.correctly_signed_response(first, require_response_signature=True)
    kept = sec._parsed.response
    assert sec.correctly_signed_response(first) is kept
    assert sec.correctly_signed_response(first) is not kept


def test_a_signed_response_is_still_verified(rig: Rig) -> None:
    root = parse_xml(_text(rig.response("id-signed")))
    sign_enveloped(root, str(rig.idp.signing.key_file), str(rig.idp.signing.cert_file))
    signed = etree.tostring(root, encoding="unicode")
    assert rig.sec.correctly_signed_response(signed, require_response_signature=True).id == root.get("ID")
    tampered = signed.replace('InResponseTo="id-signed"', 'InResponseTo="id-other"', 1)
    assert tampered != signed
    with pytest.raises(SignatureError):
        rig.sec.correctly_signed_response(tampered, require_response_signature=True)
    # Signed by a key that is not in the metadata: refused as well.
    rogue = ensure_key_pair(rig.keys, "rogue", common_name="rogue")
    root = parse_xml(_text(rig.response("id-rogue")))
    sign_enveloped(root, str(rogue.key_file), str(rogue.cert_file))
    with pytest.raises(SignatureError):
        rig.sec.correctly_signed_response(etree.tostring(root, encoding="unicode"))


def test_metadata_certificates_are_files_only_for_the_signature_check(rig: Rig) -> None:
    metadata = rig.sec.metadata
    plain = metadata.certs(rig.idp.entity_id, "any", "signing")
    assert plain and all(isinstance(certificate, str) for _, certificate in plain)
    with metadata.as_files():
        files = metadata.certs(rig.idp.entity_id, "any", "signing")
        again = metadata.certs(rig.idp.entity_id, "any", "signing")
    assert [handle.name for _, handle in files] == [handle.name for _, handle in again]
    assert [Path(handle.name).read_bytes() for _, handle in files] == [pem_format(c) for _, c in plain]
    assert isinstance(metadata.certs(rig.idp.entity_id, "any", "signing")[0][1], str)


def _login(rig: Rig, request_id: str) -> str:
    identity = rig.connector.complete(redirect_uri=ACS, response={
        "SAMLResponse": rig.response(request_id), "RelayState": "rs"},
        kept={"request_id": request_id, "relay_state": "rs"})
    return identity.subject


def test_login_keeps_no_person_in_pysaml2s_memory(rig: Rig) -> None:
    assert _login(rig, "id-memory") == NAME_ID
    assert rig.connector._saml_client().users.subjects() == []


def test_login_puts_no_name_id_in_the_log(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert _login(rig, "id-log") == NAME_ID
    assert NAME_ID not in caplog.text
    assert not [record for record in caplog.records if record.name.startswith("saml2")]


def test_a_replayed_response_is_still_refused_after_a_single_parse(rig: Rig) -> None:
    encoded = rig.response("id-replay")
    kept = {"request_id": "id-replay", "relay_state": "rs"}
    posted = {"SAMLResponse": encoded, "RelayState": "rs"}
    assert rig.connector.complete(redirect_uri=ACS, response=posted, kept=kept).subject == NAME_ID
    with pytest.raises(UpstreamError, match="already used"):
        rig.connector.complete(redirect_uri=ACS, response=posted, kept=kept)


def test_remembered_time_parsing_answers_as_pysaml2(rig: Rig) -> None:
    install()
    original = saml2.time_util.str_to_time.__wrapped__
    for text in ("2026-11-23T13:45:00Z", "2026-11-23T13:45:00.123456Z", "2026-11-23T13:45:00.5", "", None):
        assert saml2.time_util.str_to_time(text) == original(text)
        assert saml2.time_util.str_to_time(text) == original(text)
    for _ in range(2):  # a bad timestamp raises every time: errors are never remembered
        with pytest.raises((ValueError, AttributeError)):
            saml2.time_util.str_to_time("yesterday")
    # pysaml2's time checks go through it.
    assert saml2.time_util.before(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60)))


def _resigned(rig: Rig, request_id: str, *, text_edit: Callable[[str], str] = lambda text: text,
              tree_edit: Callable[[etree._Element], None] = lambda assertion: None) -> str:
    """A Response to ``request_id`` changed as the test says, its assertion signed anew by the IdP."""
    root = parse_xml(text_edit(_text(rig.response(request_id))))
    assertion = root.find(f"{{{_SAML}}}Assertion")
    for signature in assertion.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
        assertion.remove(signature)
    tree_edit(assertion)
    sign_enveloped(assertion, str(rig.idp.signing.key_file), str(rig.idp.signing.cert_file))
    return base64.b64encode(etree.tostring(root)).decode("ascii")


def _complete(rig: Rig, request_id: str, encoded: str) -> str:
    return rig.connector.complete(redirect_uri=ACS, response={"SAMLResponse": encoded, "RelayState": "rs"},
                                  kept={"request_id": request_id, "relay_state": "rs"}).subject


def test_schema_check_reads_the_assertion_as_signed_not_as_pysaml2_would_rewrite_it(rig: Rig) -> None:
    """Children out of schema order, validly signed: pysaml2's re-serialisation would have put
    them back in order and passed the schema check; the assertion as received is refused."""

    def swap_subject_and_conditions(assertion: etree._Element) -> None:
        subject, conditions = assertion.find(f"{{{_SAML}}}Subject"), assertion.find(f"{{{_SAML}}}Conditions")
        conditions.addnext(subject)

    encoded = _resigned(rig, "id-order", tree_edit=swap_subject_and_conditions)
    with pytest.raises(UpstreamError, match="Invalid document format"):
        _complete(rig, "id-order", encoded)
    # The same change without it is accepted: the refusal is the schema's, not the signature's.
    assert _complete(rig, "id-order-ok", _resigned(rig, "id-order-ok")) == NAME_ID


def test_namespaces_declared_outside_the_assertion_still_serve_its_schema_check(rig: Rig) -> None:
    """``xsi:type="xs:string"`` whose ``xs`` prefix is declared on the Response only."""
    local = ' xmlns:xs="http://www.w3.org/2001/XMLSchema"'

    def declare_xs_on_the_response(text: str) -> str:
        assert local in text
        return text.replace(local, "").replace("<ns0:Response ", f"<ns0:Response{local} ", 1)

    assert _complete(rig, "id-xs", _resigned(rig, "id-xs", text_edit=declare_xs_on_the_response)) == NAME_ID


def test_every_value_of_a_multi_valued_policy_attribute_is_kept() -> None:
    """A person in two departments matches a rule on either (as through OIDC); the SAML
    connector kept only the first value, so the roles depended on the IdP's order."""
    from types import SimpleNamespace as Namespace

    from saml2 import saml as saml_ns

    from idbroker.policy.idp import SAML_ATTRIBUTES
    from idbroker.upstream.saml.connector import SamlConnector

    connector = object.__new__(SamlConnector)
    connector.organisation = Namespace(id="org")
    mapping = SAML_ATTRIBUTES.model_copy(update={"extra": {"department": "urn:oid:2.5.4.11"}})
    connector.idp = Namespace(entity_id="https://idp.example", name_id_format="persistent",
                              attributes=mapping)
    values = [Namespace(text=text) for text in ("finance", "zorg")]
    assertion = Namespace(
        subject=Namespace(name_id=Namespace(format=saml_ns.NAMEID_FORMAT_PERSISTENT, text="p-1")),
        attribute_statement=[Namespace(attribute=[
            Namespace(name="urn:oid:2.5.4.11", friendly_name=None, attribute_value=values),
            Namespace(name="urn:oid:0.9.2342.19200300.100.1.3", friendly_name="mail",
                      attribute_value=[Namespace(text="a@x.example"), Namespace(text="b@x.example")])])],
        authn_statement=[])
    identity = connector._identity(Namespace(assertion=assertion))
    assert identity.attributes["department"] == ["finance", "zorg"]
    assert identity.attributes.get("email", "a@x.example") == "a@x.example"  # a profile claim: one text
