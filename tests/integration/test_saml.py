"""SAML organisations end to end: a staff member of a SAML IdP logs in like one of an OIDC
IdP, the broker stands behind the level the policy trusts, and every bad answer is refused
with a page naming the organisation and a reason in the log."""

from __future__ import annotations

import base64
import json
import logging
import time
import zlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from idbroker.audit.log import records
from idbroker.demo.saml_idp import SAML_FAULTS
from tests.integration.conftest import SAML_FILE_ORG, TRUSTED_OIDC_ORG, Chain, saml_fault_org
from tests.support.browser import Browser

VT = "veilig-thuis-utrecht"
SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"
LOW = "http://eidas.europa.eu/LoA/low"


def _claims(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def _id_token(chain: Chain, username: str, organisation: str = VT, **params: str) -> dict:
    query, request, _ = chain.login(Browser(username=username, organisation=organisation), **params)
    reply = chain.redeem(query["code"][0], request["verifier"])
    assert reply.status_code == 200, reply.text
    return _claims(reply.json()["id_token"])


def _authn_request(browser: Browser) -> str:
    """The AuthnRequest XML the browser carried to the IdP (HTTP-Redirect: deflated, base64)."""
    sso = next(step.url for step in browser.history if "SAMLRequest=" in step.url)
    encoded = parse_qs(urlsplit(sso).query)["SAMLRequest"][0]
    return zlib.decompress(base64.b64decode(encoded), -15).decode("utf-8")


def test_saml_staff_member_logs_in_with_mapped_attributes_and_trusted_level(chain: Chain) -> None:
    claims = _id_token(chain, "j.smit")
    assert claims["name"] == "Jeroen Smit"
    assert claims["email"] == "j.smit@veiligthuis.demo"
    assert claims["employee_number"] == "418"
    # The IdP said eHerkenning loa3 and the policy trusts it up to substantial.
    assert claims["acr"] == SUBSTANTIAL


def test_password_only_saml_login_is_low(chain: Chain) -> None:
    assert _id_token(chain, "m.visser")["acr"] == LOW


def test_oidc_login_without_trust_is_low(chain: Chain) -> None:
    assert _id_token(chain, "a.jansen", organisation="gemeente-utrecht")["acr"] == LOW


def test_saml_subject_is_stable_and_distinct_per_person(chain: Chain) -> None:
    first, again, other = (_id_token(chain, name)["sub"] for name in ("j.smit", "j.smit", "m.visser"))
    assert first == again != other


def test_broker_asks_trusted_idp_for_the_level_the_client_needs(chain: Chain) -> None:
    browser = Browser(username="j.smit", organisation=VT)
    query, _, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    assert "code" in query
    request = _authn_request(browser)
    assert 'Comparison="minimum"' in request
    assert "urn:etoegang:core:assurance-class:loa3</" in request
    assert 'ForceAuthn' not in request


def test_broker_asks_nothing_of_an_idp_it_does_not_trust(chain: Chain) -> None:
    browser = Browser(username="j.smit", organisation=SAML_FILE_ORG)
    query, _, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    assert "RequestedAuthnContext" not in _authn_request(browser)
    # ... and its loa3 counts as low, so the client asking for substantial gets no code.
    assert query["error"] == ["unmet_authentication_requirements"]
    assert query["iss"] == [chain.base]


def test_password_only_login_cannot_meet_substantial(chain: Chain) -> None:
    query, _, _ = chain.login(Browser(username="m.visser", organisation=VT), acr_values=SUBSTANTIAL)
    assert query["error"] == ["unmet_authentication_requirements"]
    assert "code" not in query


def test_authn_request_is_signed_with_rsa_sha256(chain: Chain) -> None:
    browser = Browser(username="j.smit", organisation=VT)
    chain.login(browser, prompt="login")
    sso = next(step.url for step in browser.history if "SAMLRequest=" in step.url)
    query = parse_qs(urlsplit(sso).query)
    assert query["SigAlg"] == ["http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"]
    assert query["Signature"][0]
    assert 'ForceAuthn="true"' in _authn_request(browser)


def test_metadata_from_a_file_works(chain: Chain) -> None:
    assert _id_token(chain, "m.visser", organisation=SAML_FILE_ORG)["name"] == "Marieke Visser"


def test_sp_metadata_is_published_per_organisation(chain: Chain) -> None:
    reply = requests.get(f"{chain.base}/saml/{VT}/metadata", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("application/samlmetadata+xml")
    xml = reply.text
    assert f'entityID="{chain.base}/saml/{VT}/metadata"' in xml
    assert f'Location="{chain.base}/upstream/{VT}/saml/acs"' in xml
    assert 'AuthnRequestsSigned="true"' in xml and 'WantAssertionsSigned="true"' in xml
    assert 'use="signing"' in xml and 'use="encryption"' in xml
    assert requests.get(f"{chain.base}/saml/gemeente-utrecht/metadata", timeout=10).status_code == 404


EXPECTED_REASONS = {
    "unsigned": "response refused",
    "foreign_key": "response refused",
    "wrap_beside": "signature wrapping",
    "wrap_inside": "signature wrapping",
    "sha1": "weak signature algorithm",
    "wrong_audience": "response refused",
    "wrong_destination": "response refused",
    "expired": "response refused",
    "not_yet_valid": "response refused",
    "status_denied": "IdP status",
    "unknown_in_response_to": "response refused",
    "plaintext": "not encrypted",
    "no_class_ref": None,  # not a refusal: counted as low
    "empty_class_ref": None,  # the same
    "authn_instant_offset": "AuthnInstant is not a SAML time",
    "recipient_elsewhere": "Recipient is not this broker's ACS",
    "confirmation_unbound": "InResponseTo is not this login's request",
    "transient_name_id": "NameID format urn:oasis:names:tc:SAML:2.0:nameid-format:transient is not",
}


def test_every_saml_fault_is_covered() -> None:
    assert set(EXPECTED_REASONS) == SAML_FAULTS


@pytest.mark.parametrize("fault", sorted(f for f, reason in EXPECTED_REASONS.items() if reason))
def test_bad_saml_answer_is_refused_with_a_page_naming_the_organisation(
        chain: Chain, fault: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="idbroker")
    browser = Browser(username="j.smit", organisation=saml_fault_org(fault))
    url, _ = chain.authorize_url()
    step = browser.go(url, stop_at=chain.rp_redirect)
    assert step.url.endswith(f"/upstream/{saml_fault_org(fault)}/saml/acs"), step.url
    expected_status = 403 if fault == "status_denied" else 400
    assert step.status == expected_status
    assert f"SAML-storing {fault}" in step.body
    assert "Traceback" not in step.body
    assert f"upstream {saml_fault_org(fault)} refused" in caplog.text
    assert EXPECTED_REASONS[fault] in caplog.text


@pytest.mark.parametrize("fault", ["no_class_ref", "empty_class_ref"])
def test_assertion_without_class_ref_counts_as_low(chain: Chain, fault: str) -> None:
    assert _id_token(chain, "j.smit", organisation=saml_fault_org(fault))["acr"] == LOW


def _until_acs(chain: Chain, browser: Browser, **params: str) -> tuple[str, dict[str, str]]:
    """Log in at the IdP and stop before the Response is posted: (ACS URL, form fields)."""
    url, _ = chain.authorize_url(**params)
    browser.go(url, stop_at=f"{chain.base}/upstream/")
    return browser.saml_posts[-1]


def test_replayed_response_is_refused(chain: Chain, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="idbroker")
    browser = Browser(username="j.smit", organisation=VT)
    url, _ = chain.authorize_url()
    browser.go(url, stop_at=chain.rp_redirect)
    acs, fields = browser.saml_posts[-1]
    # The same response posted again, even within the same login: refused.
    again = browser.http.post(acs, data=fields, allow_redirects=False, timeout=10)
    assert again.status_code == 400
    # A second login in the same browser cannot use the old response either.
    acs, fields_new = _until_acs(chain, Browser(username="j.smit", organisation=VT, http=browser.http),
                                 prompt="login")
    replay = browser.http.post(acs, data={"SAMLResponse": fields["SAMLResponse"],
                                          "RelayState": fields_new["RelayState"]},
                               allow_redirects=False, timeout=10)
    assert replay.status_code == 400
    assert "refused" in caplog.text


def test_response_posted_twice_before_the_login_finishes_is_refused(
        chain: Chain, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="idbroker")
    browser = Browser(username="j.smit", organisation=VT)
    acs, fields = _until_acs(chain, browser)
    first = browser.http.post(acs, data=fields, allow_redirects=False, timeout=10)
    assert first.status_code == 303
    second = browser.http.post(acs, data=fields, allow_redirects=False, timeout=10)
    assert second.status_code == 400
    assert "already used (replay)" in caplog.text


def _refusal_reasons(chain: Chain, request_id: str) -> list[tuple[str, str | None]]:
    return [(r.event["reason"], r.event.get("client")) for r in records(chain.broker.audit)
            if r.event.get("correlation_id") == request_id and r.event["type"] == "refusal"]


def test_a_response_posted_again_once_the_login_went_on_is_recorded(chain: Chain) -> None:
    """The login has gone on to the step-up with this response (a low login, as without a class
    ref): posting it again is refused before it is even read, and recorded under its client."""
    browser = Browser(username="j.smit", organisation=saml_fault_org("no_class_ref"))
    acs, fields = _until_acs(chain, browser, acr_values=SUBSTANTIAL)
    first = browser.http.post(acs, data=fields, allow_redirects=False, timeout=10)
    assert first.status_code == 303
    done = browser.http.get(chain.base + first.headers["Location"], allow_redirects=False, timeout=10)
    assert "/stepup/" in done.headers["Location"]
    again = browser.http.post(acs, data=fields, allow_redirects=False, timeout=10,
                              headers={"X-Request-ID": "req-saml-again"})
    assert again.status_code == 400
    assert _refusal_reasons(chain, "req-saml-again") == [("upstream_login_already_done", chain.rp_id)]


def test_finishing_a_saml_login_without_its_response_is_refused_and_recorded(chain: Chain) -> None:
    browser = Browser(username="j.smit", organisation=VT)
    acs, fields = _until_acs(chain, browser)
    done = browser.http.get(f"{chain.base}/upstream/{VT}/saml/done", params={"state": fields["RelayState"]},
                            headers={"X-Request-ID": "req-saml-unverified"}, allow_redirects=False,
                            timeout=10)
    assert done.status_code == 400
    assert _refusal_reasons(chain, "req-saml-unverified") == [("upstream_unverified", chain.rp_id)]
    assert browser.http.post(acs, data=fields, allow_redirects=False, timeout=10).status_code == 400  # ended


def test_idp_initiated_response_is_refused(chain: Chain) -> None:
    browser = Browser(username="j.smit", organisation=VT)
    acs, fields = _until_acs(chain, browser)
    for relay_state in ("", "made-up"):
        reply = requests.post(acs, data={"SAMLResponse": fields["SAMLResponse"], "RelayState": relay_state},
                              allow_redirects=False, timeout=10)
        assert reply.status_code == 400
        assert "Inloggen is niet gelukt" in reply.text


def test_response_finished_in_another_browser_is_refused(chain: Chain) -> None:
    victim = Browser(username="j.smit", organisation=VT)
    acs, fields = _until_acs(chain, victim)
    attacker = requests.Session()
    posted = attacker.post(acs, data=fields, allow_redirects=False, timeout=10)
    assert posted.status_code == 303
    finished = attacker.get(requests.compat.urljoin(acs, posted.headers["Location"]),
                            allow_redirects=False, timeout=10)
    assert finished.status_code == 400


BOMB = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 '
        b'"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><samlp:Response '
        b'xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&lol2;</samlp:Response>')


@pytest.mark.parametrize("saml_response", [
    base64.b64encode(BOMB).decode(),
    base64.b64encode(b"<samlp:Response xmlns:samlp='urn:oasis:names:tc:SAML:2.0:protocol'>").decode(),
    base64.b64encode(b"<not-saml/>").decode(),
    "%%% not base64 %%%",
    "",
    base64.b64encode(b"A" * 300_000).decode(),
], ids=["xml-bomb", "truncated", "not-a-response", "not-base64", "empty", "too-large"])
def test_malformed_response_gets_a_clear_page_not_a_500(chain: Chain, saml_response: str) -> None:
    browser = Browser(username="j.smit", organisation=VT)
    acs, fields = _until_acs(chain, browser)
    reply = browser.http.post(acs, data={"SAMLResponse": saml_response, "RelayState": fields["RelayState"]},
                              allow_redirects=False, timeout=10)
    assert "Traceback" not in reply.text
    if len(saml_response) > 256 * 1024:
        # Refused before it is read: the request body limit of the whole broker.
        assert reply.status_code == 413
        assert "<main" in reply.text
    else:
        assert reply.status_code == 400
        assert "Veilig Thuis Utrecht" in reply.text


def test_trusted_oidc_idp_is_asked_with_acr_values_and_its_answer_counts(chain: Chain) -> None:
    browser = Browser(username="t.devos", organisation=TRUSTED_OIDC_ORG)
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    upstream = next(step.url for step in browser.history if step.url.startswith(f"{chain.base}/trusted-idp/"))
    assert parse_qs(urlsplit(upstream).query)["acr_values"] == [
        "http://eidas.europa.eu/LoA/substantial http://eidas.europa.eu/LoA/high"]
    claims = _claims(chain.redeem(query["code"][0], request["verifier"]).json()["id_token"])
    assert claims["acr"] == SUBSTANTIAL


def test_untrusted_oidc_idp_is_not_asked_for_a_level(chain: Chain) -> None:
    browser = Browser(username="a.jansen", organisation="gemeente-utrecht")
    query, _, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    upstream = next(step.url for step in browser.history if "/demo-idp/gemeente-utrecht/" in step.url)
    assert "acr_values" not in parse_qs(urlsplit(upstream).query)
    assert query["error"] == ["unmet_authentication_requirements"]


def test_max_age_asks_the_idp_for_a_fresh_login_and_refuses_an_older_one(
        chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """SAML has no max_age: with one the AuthnRequest says ForceAuthn, and an assertion whose
    AuthnInstant is older than max_age (an IdP that ignored it) gives no code, where it used
    to give one dated a day back (OIDC Core §3.1.2.1: the OP MUST re-authenticate)."""
    from saml2.time_util import instant

    from idbroker.demo.saml_idp import DemoSamlIdp

    _, _, browser = chain.login(Browser(username="j.smit", organisation=VT), max_age="3600")
    assert 'ForceAuthn="true"' in _authn_request(browser)
    apply = DemoSamlIdp._apply_faults

    def day_old(self: DemoSamlIdp, root: Any) -> None:
        apply(self, root)
        for statement in root.iter("{urn:oasis:names:tc:SAML:2.0:assertion}AuthnStatement"):
            statement.set("AuthnInstant", instant(time_stamp=int(time.time()) - 86400))

    monkeypatch.setattr(DemoSamlIdp, "_apply_faults", day_old)
    before = chain.broker.audit.head().seq
    url, _ = chain.authorize_url(max_age="60")
    step = Browser(username="j.smit", organisation=VT).go(url, stop_at=chain.rp_redirect)
    assert step.status == 400 and not step.url.startswith(chain.rp_redirect)
    assert [r.event.get("reason") for r in records(chain.broker.audit)
            if r.seq > before and r.event["type"] == "upstream.result"] == ["upstream_invalid"]
    # Without max_age the same answer is a login, dated as the IdP said.
    assert time.time() - _id_token(chain, "j.smit")["auth_time"] > 86000


@pytest.mark.parametrize("name_id_format", [None, "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"],
                         ids=["no format", "unspecified"])
def test_a_name_id_of_unspecified_format_is_taken_under_a_persistent_policy(
        chain: Chain, monkeypatch: pytest.MonkeyPatch, name_id_format: str | None) -> None:
    """No Format means 'unspecified' (SAML Core 2.2.2): the two are one case, and both are
    the IdP's persistent names the policy describes (ADFS writes the Format out)."""
    from idbroker.demo.saml_idp import DemoSamlIdp

    apply = DemoSamlIdp._apply_faults

    def unspecified(self: DemoSamlIdp, root: Any) -> None:
        apply(self, root)
        for name_id in root.iter("{urn:oasis:names:tc:SAML:2.0:assertion}NameID"):
            if name_id_format is None:
                name_id.attrib.pop("Format", None)
            else:
                name_id.set("Format", name_id_format)

    monkeypatch.setattr(DemoSamlIdp, "_apply_faults", unspecified)
    assert _id_token(chain, "j.smit")["sub"]
