"""IdP metadata: signature, validity and caching; the in-process XML security backend."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lxml import etree

from idbroker.policy.idp import SamlMetadataSource
from idbroker.store.sqlite import SqliteStore
from idbroker.upstream.base import UpstreamError
from idbroker.upstream.saml.crypto import InProcessXmlSec, UnsafeXml, parse_xml, sign_enveloped
from idbroker.upstream.saml.keys import ensure_key_pair
from idbroker.upstream.saml.metadata import MetadataError, MetadataSource, check_metadata, parse_duration
from tests.support.wsgi_server import serve_wsgi

ENTITY = "https://idp.example.org/metadata"
_MD = "urn:oasis:names:tc:SAML:2.0:metadata"
_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"


def _instant(offset: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


def metadata(keys: Path, *, valid_for: float | None = 86400, cache: str | None = "PT1H",
             entity: str = ENTITY, signer: str = "idp") -> bytes:
    root = etree.Element(f"{{{_MD}}}EntityDescriptor", nsmap={"md": _MD})
    root.set("entityID", entity)
    root.set("ID", "md-1")
    if valid_for is not None:
        root.set("validUntil", _instant(valid_for))
    if cache is not None:
        root.set("cacheDuration", cache)
    descriptor = etree.SubElement(root, f"{{{_MD}}}IDPSSODescriptor")
    descriptor.set("protocolSupportEnumeration", "urn:oasis:names:tc:SAML:2.0:protocol")
    pair = ensure_key_pair(keys, signer, common_name=signer)
    sign_enveloped(root, str(pair.key_file), str(pair.cert_file))
    return etree.tostring(root)


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    ensure_key_pair(tmp_path, "idp", common_name="idp")
    return tmp_path


def cert(keys: Path, name: str = "idp") -> str:
    return str(keys / f"{name}.crt")


def test_signed_current_metadata_is_accepted_until_its_earliest_limit(keys: Path) -> None:
    now = time.time()
    checked = check_metadata(metadata(keys), entity_id=ENTITY, certificate_file=cert(keys),
                             max_cache_seconds=86400, now=now)
    assert checked.refresh_at == pytest.approx(now + 3600, abs=1)  # cacheDuration PT1H wins
    assert checked.valid_until == pytest.approx(now + 86400, abs=2)
    capped = check_metadata(metadata(keys), entity_id=ENTITY, certificate_file=cert(keys),
                            max_cache_seconds=600, now=now)
    assert capped.refresh_at == pytest.approx(now + 600, abs=1)


@pytest.mark.parametrize("problem", ["expired", "other-signer", "tampered", "other-entity", "unsigned",
                                     "doctype"])
def test_bad_metadata_is_refused(keys: Path, problem: str) -> None:
    ensure_key_pair(keys, "rogue", common_name="rogue")
    document = {
        "expired": lambda: metadata(keys, valid_for=-60),
        "other-signer": lambda: metadata(keys, signer="rogue"),
        "tampered": lambda: metadata(keys).replace(b"PT1H", b"PT9H"),
        "other-entity": lambda: metadata(keys, entity="https://evil.example/metadata"),
        "unsigned": lambda: metadata(keys).split(b"<ds:Signature")[0] + b"</md:EntityDescriptor>",
        "doctype": lambda: b'<!DOCTYPE x [<!ENTITY a "b">]>' + metadata(keys),
    }[problem]()
    with pytest.raises(MetadataError):
        check_metadata(document, entity_id=ENTITY, certificate_file=cert(keys), max_cache_seconds=3600)


@pytest.mark.parametrize(("text", "seconds"), [("PT1H", 3600), ("P1D", 86400), ("PT90M", 5400),
                                               ("P1DT2H30M15S", 95415), ("PT0.5S", 0.5)])
def test_cache_duration_parses(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["P", "PT", "1H", "P1Y", "PT-1H", "soon"])
def test_nonsense_cache_duration_is_refused(text: str) -> None:
    with pytest.raises(MetadataError):
        parse_duration(text)


class MetadataServer:
    """A metadata URL whose document, and whether it answers at all, the test controls."""

    def __init__(self) -> None:
        self.document = b""
        self.up = True
        self.fetches = 0

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        if not self.up:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"down"]
        self.fetches += 1
        start_response("200 OK", [("Content-Type", "application/samlmetadata+xml")])
        return [self.document]


def test_url_metadata_is_cached_refreshed_and_survives_an_outage_only_while_valid(
        keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = MetadataServer()
    store = SqliteStore(str(tmp_path / "store.sqlite3"))
    clock = [time.time()]
    monkeypatch.setattr("idbroker.upstream.saml.metadata.time.time", lambda: clock[0])
    with serve_wsgi(server) as (base, _):
        source = SamlMetadataSource(url=f"{base}/metadata", certificate=cert(keys))
        first = MetadataSource(source, entity_id=ENTITY, policy_dir=tmp_path, store=store)
        server.document = metadata(keys, valid_for=7200, cache="PT10M")
        assert first.current().xml.encode() == server.document
        assert server.fetches == 1
        # Another broker instance finds it in the shared store: no second fetch.
        second = MetadataSource(source, entity_id=ENTITY, policy_dir=tmp_path, store=store)
        assert second.current().xml.encode() == server.document
        assert server.fetches == 1
        # After cacheDuration it is fetched again, and a new document replaces the old one.
        clock[0] += 11 * 60
        server.document = metadata(keys, valid_for=7200, cache="PT30M")
        assert first.current().refresh_at == pytest.approx(clock[0] + 1800, abs=2)
        assert server.fetches == 2
        # The IdP's metadata URL goes down: the copy in hand serves on while still valid ...
        server.up = False
        clock[0] += 31 * 60
        assert first.current().xml.encode() == server.document
        # ... but never past validUntil: then logins at this IdP stop (fail closed).
        clock[0] += 7200
        with pytest.raises(UpstreamError) as refused:
            first.current()
        assert refused.value.reason in {"unreachable", "invalid"}


def test_url_metadata_signed_by_another_key_is_never_used(keys: Path, tmp_path: Path) -> None:
    ensure_key_pair(keys, "rogue", common_name="rogue")
    server = MetadataServer()
    server.document = metadata(keys, signer="rogue")
    with serve_wsgi(server) as (base, _):
        source = MetadataSource(SamlMetadataSource(url=f"{base}/metadata", certificate=cert(keys)),
                                entity_id=ENTITY, policy_dir=tmp_path,
                                store=SqliteStore(str(tmp_path / "s.sqlite3")))
        with pytest.raises(UpstreamError) as refused:
            source.current()
        assert "signature" in refused.value.detail


# -- the in-process backend --------------------------------------------------------------

def _assertion_document(keys: Path, *, sha1: bool = False) -> tuple[str, str]:
    root = etree.Element(f"{{{_SAML}}}Assertion", nsmap={"saml": _SAML})
    root.set("ID", "a-1")
    etree.SubElement(root, f"{{{_SAML}}}Issuer").text = ENTITY
    pair = ensure_key_pair(keys, "idp", common_name="idp")
    sign_enveloped(root, str(pair.key_file), str(pair.cert_file), sha1=sha1)
    return etree.tostring(root, encoding="unicode"), str(pair.cert_file)


def test_backend_verifies_a_good_signature_and_refuses_a_changed_document(keys: Path) -> None:
    document, certificate = _assertion_document(keys)
    backend = InProcessXmlSec()
    assert backend.validate_signature(document, certificate, "pem", f"{_SAML}:Assertion", "a-1") is True
    changed = document.replace(ENTITY, "https://evil.example/metadata")
    assert backend.validate_signature(changed, certificate, "pem", f"{_SAML}:Assertion", "a-1") is False


def test_backend_refuses_sha1_and_duplicate_ids(keys: Path) -> None:
    document, certificate = _assertion_document(keys, sha1=True)
    with pytest.raises(UnsafeXml, match="weak"):
        InProcessXmlSec().validate_signature(document, certificate, "pem", f"{_SAML}:Assertion", "a-1")
    good, _ = _assertion_document(keys)
    doubled = f'<w xmlns:saml="{_SAML}">{good}{good}</w>'
    with pytest.raises(UnsafeXml):
        InProcessXmlSec().validate_signature(doubled, certificate, "pem", f"{_SAML}:Assertion", "a-1")


def test_backend_encrypts_with_aes_gcm_and_decrypts(keys: Path) -> None:
    encryption = ensure_key_pair(keys, "sp-enc", common_name="sp")
    response = (f'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="{_SAML}" '
                'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
                'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ID="r"><saml:EncryptedAssertion>'
                '<saml:Assertion ID="a"><saml:AttributeStatement><saml:Attribute Name="n">'
                '<saml:AttributeValue xsi:type="xs:string">geheim</saml:AttributeValue></saml:Attribute>'
                '</saml:AttributeStatement></saml:Assertion></saml:EncryptedAssertion></samlp:Response>')
    encrypted = InProcessXmlSec().encrypt_assertion(response, str(encryption.cert_file), None)
    assert "geheim" not in encrypted
    assert "http://www.w3.org/2009/xmlenc11#aes256-gcm" in encrypted
    # Decrypted on its own (as pysaml2 does), the assertion still knows its xs/xsi prefixes.
    data = parse_xml(encrypted).find(".//{http://www.w3.org/2001/04/xmlenc#}EncryptedData")
    decrypted = InProcessXmlSec().decrypt(etree.tostring(data), str(encryption.key_file))
    assert "geheim" in decrypted
    assert parse_xml(decrypted).find(f".//{{{_SAML}}}AttributeValue").text == "geheim"


def test_backend_refuses_cbc_encrypted_data(keys: Path) -> None:
    encryption = ensure_key_pair(keys, "sp-enc", common_name="sp")
    encrypted = InProcessXmlSec().encrypt_assertion(
        f'<r xmlns:saml="{_SAML}"><saml:EncryptedAssertion><saml:Assertion ID="a"/>'
        '</saml:EncryptedAssertion></r>', str(encryption.cert_file), None)
    downgraded = encrypted.replace("http://www.w3.org/2009/xmlenc11#aes256-gcm",
                                   "http://www.w3.org/2001/04/xmlenc#aes256-cbc")
    from saml2.sigver import DecryptError

    with pytest.raises(DecryptError, match="not accepted"):
        InProcessXmlSec().decrypt(downgraded, str(encryption.key_file))


def test_backend_refuses_rsa_pkcs1_v15_key_transport(keys: Path) -> None:
    """A really rsa-1_5-wrapped key (libxmlsec1 would unwrap it): refused before decryption."""
    import xmlsec
    from saml2.sigver import DecryptError

    from idbroker.upstream.saml.crypto import _keys_manager

    encryption = ensure_key_pair(keys, "sp-enc", common_name="sp")
    root = parse_xml(f'<r xmlns:saml="{_SAML}"><saml:EncryptedAssertion><saml:Assertion ID="a">'
                     '<saml:Issuer>geheim</saml:Issuer></saml:Assertion></saml:EncryptedAssertion></r>')
    holder = root[0]
    assertion = holder[0]
    data = xmlsec.template.encrypted_data_create(holder, xmlsec.constants.TransformAes256Gcm,
                                                 type=xmlsec.constants.TypeEncElement, ns="xenc")
    xmlsec.template.encrypted_data_ensure_cipher_value(data)
    key_info = xmlsec.template.encrypted_data_ensure_key_info(data, ns="ds")
    wrapped = xmlsec.template.add_encrypted_key(key_info, xmlsec.constants.TransformRsaPkcs1)
    xmlsec.template.encrypted_data_ensure_cipher_value(wrapped)
    context = xmlsec.EncryptionContext(_keys_manager(str(encryption.cert_file),
                                                     xmlsec.constants.KeyDataFormatCertPem))
    context.key = xmlsec.Key.generate(xmlsec.constants.KeyDataAes, 256, xmlsec.constants.KeyDataTypeSession)
    context.encrypt_binary(data, etree.tostring(assertion))
    holder.replace(assertion, data)
    encrypted = etree.tostring(root, encoding="unicode")
    assert "http://www.w3.org/2001/04/xmlenc#rsa-1_5" in encrypted and "geheim" not in encrypted
    with pytest.raises(DecryptError, match="key transport algorithm not accepted"):
        InProcessXmlSec().decrypt(encrypted, str(encryption.key_file))
