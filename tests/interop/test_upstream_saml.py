"""Organisations whose IdP speaks SAML 2.0: the pysaml2 demo IdP as a process of its own, and
``samlify`` (an independent implementation), each logging a person in through the broker's
ACS with signed, encrypted assertions carrying an eToegang loa3 class reference."""

from __future__ import annotations

import base64
import logging
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest
from lxml import etree

from tests.interop.conftest import LOA3, PYSAML2, RP, SAMLIFY_CBC, SAMLIFY_GCM, SUBSTANTIAL, InteropChain
from tests.support.browser import Browser

_SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
_DSIG = "http://www.w3.org/2000/09/xmldsig#"
_XENC = "http://www.w3.org/2001/04/xmlenc#"


def _posted_response(browser: Browser) -> etree._Element:
    """The Response the IdP had the browser post to the broker's ACS (as the IdP sent it)."""
    assert len(browser.saml_posts) == 1, browser.saml_posts
    _target, fields = browser.saml_posts[0]
    return etree.fromstring(base64.b64decode(fields["SAMLResponse"]))


def _authn_request(browser: Browser, sso_prefix: str) -> dict[str, list[str]]:
    sent = [step.url for step in browser.history if step.url.startswith(sso_prefix)]
    assert len(sent) == 1, [step.url for step in browser.history]
    return parse_qs(urlsplit(sent[0]).query)


def _requested_class_refs(request: dict[str, list[str]]) -> tuple[str | None, list[str]]:
    """(Comparison, class refs) of the AuthnRequest's RequestedAuthnContext."""
    xml = etree.fromstring(zlib.decompress(base64.b64decode(request["SAMLRequest"][0]), -15))
    context = xml.find(f"{{{_SAMLP}}}RequestedAuthnContext")
    if context is None:
        return None, []
    return context.get("Comparison"), [ref.text for ref in context.iter(f"{{{_SAML}}}AuthnContextClassRef")]


def test_samlify_signed_encrypted_loa3_login_reaches_substantial(interop: InteropChain) -> None:
    browser = Browser(organisation=SAMLIFY_GCM)
    result = interop.tokens(browser)

    claims = result["id_token"]
    assert claims["acr"] == SUBSTANTIAL  # loa3, from an IdP trusted up to substantial
    assert claims["organisation"] == SAMLIFY_GCM
    assert claims["name"] == "Sanne Floor" and claims["email"] == "s.floor@samlify.example"
    assert claims["team"] == f"{SAMLIFY_GCM}-crisis"  # isMemberOf -> the crisis team
    assert not any("/stepup/" in step.url for step in browser.history)
    # What samlify sent: a signed Response around one AES-256-GCM encrypted assertion.
    response = _posted_response(browser)
    assert response.find(f"{{{_DSIG}}}Signature") is not None
    encrypted = response.findall(f"{{{_SAML}}}EncryptedAssertion")
    assert len(encrypted) == 1 and response.find(f"{{{_SAML}}}Assertion") is None
    method = encrypted[0].find(f".//{{{_XENC}}}EncryptionMethod")
    assert method.get("Algorithm") == "http://www.w3.org/2009/xmlenc11#aes256-gcm"
    # The broker's AuthnRequest: signed (HTTP-Redirect, RSA-SHA256) and asking for loa3 or more.
    request = _authn_request(browser, interop.peers["samlify"].info["base"] + "/gcm/sso")
    assert request["SigAlg"] == ["http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"]
    assert request["Signature"]
    assert _requested_class_refs(request) == ("minimum", [LOA3])


def test_samlify_aes_cbc_encrypted_assertion_is_refused(interop: InteropChain,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """samlify's default data encryption is AES-256-CBC (open to padding oracles): the broker
    accepts AES-GCM only, so the login fails closed with an error page."""
    browser = Browser(organisation=SAMLIFY_CBC)
    url, _ = interop.authorize_url()
    with caplog.at_level(logging.INFO):
        step = browser.go(url, stop_at=interop.redirect_uri(RP))

    assert step.status == 400 and "/upstream/" in step.url and "/saml/acs" in step.url
    assert "geweigerd" in step.body
    method = _posted_response(browser).find(f".//{{{_XENC}}}EncryptionMethod")
    assert method.get("Algorithm") == "http://www.w3.org/2001/04/xmlenc#aes256-cbc"
    assert f"upstream {SAMLIFY_CBC} refused" in caplog.text
    assert "idb_session" not in browser.http.cookies


def test_pysaml2_process_signed_encrypted_loa3_login_reaches_substantial(interop: InteropChain) -> None:
    browser = Browser(username="j.smit", organisation=PYSAML2)
    result = interop.tokens(browser)

    claims = result["id_token"]
    assert claims["acr"] == SUBSTANTIAL
    assert claims["organisation"] == PYSAML2
    assert claims["name"] == "Jeroen Smit"
    assert claims["team"] == f"{PYSAML2}-crisis"
    assert not any("/stepup/" in step.url for step in browser.history)
    response = _posted_response(browser)
    assert len(response.findall(f"{{{_SAML}}}EncryptedAssertion")) == 1
    method = response.find(f".//{{{_XENC}}}EncryptionMethod")
    assert method.get("Algorithm") == "http://www.w3.org/2009/xmlenc11#aes256-gcm"
    # The broker asked the trusted IdP for loa3 (eToegang words), comparison minimum.
    request = _authn_request(browser, interop.peers[PYSAML2].info["base"] + "/sso")
    assert request["SigAlg"] == ["http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"]
    assert _requested_class_refs(request) == ("minimum", [LOA3])


def test_pysaml2_response_posted_twice_is_refused(interop: InteropChain) -> None:
    browser = Browser(username="j.smit", organisation=PYSAML2)
    interop.tokens(browser)
    target, fields = browser.saml_posts[0]
    replay = browser.http.post(target, data=fields, allow_redirects=False, timeout=10)
    assert replay.status_code == 400
    assert "location" not in {k.lower() for k in replay.headers}
