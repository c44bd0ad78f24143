"""Organisations whose IdP is ``oidc-provider`` (a certified OpenID Provider): the broker as
its relying party, with the IdP's own ``acr`` believed only where the policy trusts it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from tests.interop.conftest import (
    DOSSIER_SCOPE,
    OIDC_CONFORMING,
    OIDC_TRUSTED,
    OIDC_UNTRUSTED,
    RP,
    SUBSTANTIAL,
    InteropChain,
    oidc_person,
)
from tests.support.browser import Browser


def _upstream_request(browser: Browser, chain: InteropChain, org: str) -> dict[str, list[str]]:
    """The authorization request the broker sent to the organisation's IdP."""
    issuer = chain.peers[org].info["issuer"]
    sent = [step.url for step in browser.history if step.url.startswith(f"{issuer}/auth?")]
    assert len(sent) == 1, [step.url for step in browser.history]
    return parse_qs(urlsplit(sent[0]).query)


def test_trusted_oidc_provider_login_reaches_substantial_without_step_up(interop: InteropChain) -> None:
    browser = Browser(organisation=OIDC_TRUSTED)
    result = interop.tokens(browser, login_hint=oidc_person(OIDC_TRUSTED, "e.dekker"))

    claims = result["id_token"]
    assert claims["acr"] == SUBSTANTIAL
    assert claims["amr"] == ["pwd", "otp"]  # the IdP's own factors, passed on (RFC 8176)
    assert claims["organisation"] == OIDC_TRUSTED
    assert claims["name"] == "E. Dekker" and claims["email"] == "e.dekker@vertrouwd.example"
    # The IdP's group claim made the person a member of the organisation's crisis team.
    assert claims["team"] == f"{OIDC_TRUSTED}-crisis" and claims["roles"] == ["medewerker"]
    assert not any("/stepup/" in step.url for step in browser.history)
    # Trusted for substantial, so the broker asked the IdP for it, in eIDAS words, with PKCE.
    upstream = _upstream_request(browser, interop, OIDC_TRUSTED)
    assert upstream["acr_values"][0].split()[0] == SUBSTANTIAL
    assert upstream["code_challenge_method"] == ["S256"]
    assert upstream["login_hint"] == ["e.dekker@vertrouwd.example"]
    # The IdP's RFC 9207 iss parameter came back to the broker's per-organisation callback.
    callback = next(step.url for step in browser.history if "/upstream/" in step.url)
    assert parse_qs(urlsplit(callback).query)["iss"] == [interop.peers[OIDC_TRUSTED].info["issuer"]]


def test_untrusted_oidc_provider_claiming_substantial_gets_a_step_up(interop: InteropChain) -> None:
    """The same product (able to say substantial), under a policy that does not trust it: the
    broker does not ask it for a level, counts its login as low, and sends the person to the
    step-up (here: the activation code, as the person has no factor yet)."""
    browser = Browser(organisation=OIDC_UNTRUSTED, give_up=False)
    url, _ = interop.authorize_url(login_hint=oidc_person(OIDC_UNTRUSTED, "g.smits"))
    step = browser.go(url, stop_at=interop.redirect_uri(RP))

    assert "/stepup/" in step.url and step.url.endswith("/activate"), step.url  # no factor yet
    assert step.status == 200
    assert "acr_values" not in _upstream_request(browser, interop, OIDC_UNTRUSTED)
    session = interop.broker.sessions.get(browser.http.cookies.get("idb_session"))
    assert session.level == "low"


def test_untrusted_oidc_provider_then_totp_step_up_reaches_substantial(interop: InteropChain) -> None:
    browser = interop.totp_browser(OIDC_UNTRUSTED, "h.vos")
    result = interop.tokens(browser, login_hint=oidc_person(OIDC_UNTRUSTED, "h.vos"))

    claims = result["id_token"]
    assert claims["acr"] == SUBSTANTIAL
    assert "otp" in claims["amr"]
    assert any(step.url.endswith("/activate") for step in browser.history)
    assert claims["team"] == f"{OIDC_UNTRUSTED}-crisis"


def test_untrusted_oidc_provider_and_a_cancelled_step_up_is_refused(interop: InteropChain) -> None:
    browser = Browser(organisation=OIDC_UNTRUSTED)  # gives up on the step-up page
    query, request = interop.login(browser, login_hint=oidc_person(OIDC_UNTRUSTED, "g.smits"))

    assert "code" not in query
    assert query["error"] == ["unmet_authentication_requirements"]
    assert query["state"] == [request["state"]]


def test_a_dossier_scope_needs_the_team_role_from_the_idp_groups(interop: InteropChain) -> None:
    browser = Browser(organisation=OIDC_TRUSTED)
    result = interop.tokens(browser, login_hint=oidc_person(OIDC_TRUSTED, "f.mulder"),
                            scope=f"openid profile {DOSSIER_SCOPE}")
    access = interop.verify(result["access_token"])
    assert DOSSIER_SCOPE in access["scope"].split()
    assert access["acr"] == SUBSTANTIAL


def test_conforming_oidc_provider_profile_and_groups_reach_the_client(interop: InteropChain) -> None:
    """oidc-provider as shipped (``conformIdTokenClaims``) puts profile, e-mail and group claims
    at userinfo only, as OIDC Core 5.4 says for claims asked for by scope: the broker reads
    them there (interop finding; before, the person arrived without groups and was refused)."""
    browser = Browser(organisation=OIDC_CONFORMING)
    hint = oidc_person(OIDC_CONFORMING, "k.peters")
    query, request = interop.login(browser, login_hint=hint)
    assert "code" in query, query
    claims = interop.verify(interop.redeem(query["code"][0], request["verifier"]).json()["id_token"])
    assert claims["name"] == "K. Peters" and claims["email"] == hint
    # The groups claim (userinfo only) made the person a member of the crisis team.
    assert claims["team"] == f"{OIDC_CONFORMING}-crisis" and claims["roles"] == ["medewerker"]
    assert claims["acr"] == SUBSTANTIAL  # acr/amr still come from the ID token
    assert "groups" in _upstream_request(browser, interop, OIDC_CONFORMING)["scope"][0].split()
