"""Single sign-on across chain applications, home-realm discovery and logout."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jws, jwt
from joserfc.jwk import KeySet

from idbroker.oidc.views import LOGOUT_CONFIRMATION
from tests.integration.conftest import BASIC_SECRET, Chain
from tests.support.browser import Browser
from tests.support.forgery import FORGERIES, forge


def _id_token(chain: Chain, query: dict, req: dict) -> tuple[str, dict]:
    body = chain.redeem(query["code"][0], req["verifier"]).json()
    keys = KeySet.import_key_set(requests.get(f"{chain.base}/jwks.json", timeout=5).json())
    return body["id_token"], dict(jwt.decode(body["id_token"], keys, algorithms=["ES256"]).claims)


def test_demo_apps_share_one_login(chain: Chain) -> None:
    """The demo chain apps (authlib clients with private_key_jwt via jwks_uri) get in, the
    second one without a new login at the organisation's IdP. They ask for eIDAS
    substantial: the first login enrols an authenticator app with an activation code, the
    second app gets its code from the SSO session and the step-up already given."""
    browser = chain.enrolling_browser(username="m.visser", organisation="veilig-thuis-utrecht")
    first = browser.go(chain.demo.app_urls["wvggz-portaal"] + "login")
    assert first.status == 200 and "Marieke Visser" in first.body, first.body[:400]
    assert "http://eidas.europa.eu/LoA/substantial" in first.body
    logins_at_idp = sum("/demo-idp/" in s.url and "/login" in s.url for s in browser.history)
    assert logins_at_idp == 1
    second = browser.go(chain.demo.app_urls["zvh-casus"] + "login")
    assert second.status == 200 and "Marieke Visser" in second.body
    assert sum("/demo-idp/" in s.url and "/login" in s.url for s in browser.history) == 1
    assert '&#34;alg&#34;: &#34;PS256&#34;' in second.body  # zvh-casus is registered for PS256 ID tokens


def test_second_client_gets_a_code_without_upstream_login(chain: Chain) -> None:
    _, _, browser = chain.login()
    url, req = chain.authorize_url(client_id=chain.basic_id, scope="openid profile")
    reply = browser.http.get(url, allow_redirects=False, timeout=5)
    assert reply.status_code == 302
    query = parse_qs(urlsplit(reply.headers["Location"]).query)
    token = requests.post(f"{chain.base}/token", auth=(chain.basic_id, BASIC_SECRET), timeout=5, data={
        "grant_type": "authorization_code", "code": query["code"][0],
        "redirect_uri": chain.rp_redirect, "code_verifier": req["verifier"]})
    assert token.status_code == 200, token.text
    assert jws.extract_compact(token.json()["id_token"].encode()).headers()["alg"] == "RS256"


def test_max_age_without_a_value_is_as_if_omitted(chain: Chain) -> None:
    """RFC 6749 §3.1: it asks for no fresh login, so a silent request gets its code."""
    _, _, browser = chain.login()
    url, _ = chain.authorize_url(prompt="none", max_age="")
    silent = browser.http.get(url, allow_redirects=False, timeout=5)
    assert "code" in parse_qs(urlsplit(silent.headers["Location"]).query)


@pytest.mark.parametrize("max_age", ["\u00b2", "\u0663", "9" * 5000, "-1", "1.5", " 60", "60s"])
@pytest.mark.parametrize("signed_in", [True, False])
def test_a_max_age_that_is_no_number_of_seconds_is_invalid_request(chain: Chain, max_age: str,
                                                                   signed_in: bool) -> None:
    """Refused at /authorize, with or without a session, before any login: never a 500 (a
    superscript digit passes ``str.isdigit`` but not ``int``; 5,000 digits pass neither)."""
    browser = chain.login()[2] if signed_in else Browser()
    url, request = chain.authorize_url(max_age=max_age)
    reply = browser.http.get(url, allow_redirects=False, timeout=5)
    assert reply.status_code == 302, reply.text[:300]
    query = parse_qs(urlsplit(reply.headers["Location"]).query)
    assert (query["error"], query["state"]) == (["invalid_request"], [request["state"]])


def test_prompt_login_forces_a_new_upstream_login(chain: Chain) -> None:
    _, _, browser = chain.login()
    before = sum("/login" in s.url and "/demo-idp/" in s.url for s in browser.history)
    chain.login(browser, prompt="login")
    after = sum("/login" in s.url and "/demo-idp/" in s.url for s in browser.history)
    assert after == before + 1


def test_idp_hint_and_login_hint_skip_the_chooser(chain: Chain) -> None:
    for hint in ({"idp_hint": "ggz-centraal"}, {"login_hint": "p.devries@ggzcentraal.demo"}):
        browser = Browser(username="p.devries", organisation=None)
        query, _, _ = chain.login(browser, **hint)
        assert "code" in query
        assert not any("/login/" in s.url and "/organisation/" in s.url for s in browser.history)


def test_logout_with_id_token_hint_ends_the_session_and_returns(chain: Chain) -> None:
    query, req, browser = chain.login()
    id_token, _ = _id_token(chain, query, req)
    bye = f"{chain.base}/test-rp/bye"
    reply = browser.http.get(f"{chain.base}/logout?" + urlencode(
        {"id_token_hint": id_token, "post_logout_redirect_uri": bye, "state": "s1"}),
        allow_redirects=False, timeout=5)
    assert reply.status_code == 302 and reply.headers["Location"] == bye + "?state=s1"
    # The broker session is gone: a silent login now fails.
    url, _ = chain.authorize_url(prompt="none")
    silent = browser.http.get(url, allow_redirects=False, timeout=5)
    assert parse_qs(urlsplit(silent.headers["Location"]).query)["error"] == ["login_required"]


def test_logout_never_redirects_to_an_unregistered_uri(chain: Chain) -> None:
    query, req, browser = chain.login()
    id_token, _ = _id_token(chain, query, req)
    reply = browser.http.get(f"{chain.base}/logout?" + urlencode(
        {"id_token_hint": id_token, "post_logout_redirect_uri": "https://attacker.example/"}),
        allow_redirects=False, timeout=5)
    assert reply.status_code == 200 and "Location" not in reply.headers
    assert "uitgelogd" in reply.text


def _still_logged_in(chain: Chain, browser: Browser) -> bool:
    url, _ = chain.authorize_url(prompt="none")
    silent = browser.http.get(url, allow_redirects=False, timeout=5)
    return "code" in parse_qs(urlsplit(silent.headers["Location"]).query)


def _logout(browser: Browser, chain: Chain, hint: str) -> requests.Response:
    return browser.http.get(f"{chain.base}/logout?" + urlencode({"id_token_hint": hint}),
                            allow_redirects=False, timeout=5)


def test_an_access_token_is_no_id_token_hint(chain: Chain) -> None:
    """Any resource server may hold a person's access token: as a hint it would end that
    person's session without asking."""
    query, req, browser = chain.login()
    access_token = chain.redeem(query["code"][0], req["verifier"]).json()["access_token"]
    refused = _logout(browser, chain, access_token)
    assert refused.status_code == 400 and "Location" not in refused.headers
    assert _still_logged_in(chain, browser)


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_id_token_hint_is_refused(chain: Chain, forgery: str) -> None:
    query, req, browser = chain.login()
    id_token, _ = _id_token(chain, query, req)
    refused = _logout(browser, chain, forge(id_token, forgery, f"{chain.base}/jwks.json"))
    assert refused.status_code == 400 and "Location" not in refused.headers
    assert _still_logged_in(chain, browser)


def test_a_hint_of_another_session_asks_first(chain: Chain) -> None:
    """An ID token of someone else's (or an earlier) session is genuine but says nothing
    about this browser's session: the person is asked, as without a hint."""
    _, _, browser = chain.login()
    other_query, other_req, _ = chain.login()
    others_id_token, _ = _id_token(chain, other_query, other_req)
    page = _logout(browser, chain, others_id_token)
    assert page.status_code == 200 and f'name="{LOGOUT_CONFIRMATION}"' in page.text
    assert _still_logged_in(chain, browser)
    token = re.search(rf'name="{LOGOUT_CONFIRMATION}" value="([^"]+)"', page.text).group(1)
    done = browser.http.post(f"{chain.base}/logout", timeout=5,
                             data={LOGOUT_CONFIRMATION: token, "id_token_hint": others_id_token})
    assert done.status_code == 200 and "uitgelogd" in done.text
    assert not _still_logged_in(chain, browser)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_logout_without_hint_asks_first_and_checks_csrf(chain: Chain, method: str) -> None:
    """The RP's request by GET or by POST (RP-Initiated Logout 1.0 §2: the OP supports both)."""
    _, _, browser = chain.login()
    sent = {"client_id": chain.rp_id}
    page = browser.http.request(method, f"{chain.base}/logout", timeout=5,
                                **({"params": sent} if method == "GET" else {"data": sent}))
    assert page.status_code == 200 and f'name="{LOGOUT_CONFIRMATION}"' in page.text
    assert f'name="client_id" value="{chain.rp_id}"' in page.text
    assert _still_logged_in(chain, browser)
    forged = browser.http.post(f"{chain.base}/logout", data={LOGOUT_CONFIRMATION: "forged"}, timeout=5)
    assert forged.status_code == 400
    token = re.search(rf'name="{LOGOUT_CONFIRMATION}" value="([^"]+)"', page.text).group(1)
    done = browser.http.post(f"{chain.base}/logout", data={LOGOUT_CONFIRMATION: token, **sent}, timeout=5)
    assert done.status_code == 200 and "uitgelogd" in done.text
    url, _ = chain.authorize_url(prompt="none")
    silent = browser.http.get(url, allow_redirects=False, timeout=5)
    assert "login_required" in silent.headers["Location"]


def test_pages_and_cookies_are_hardened(chain: Chain) -> None:
    browser = Browser()
    url, _ = chain.authorize_url()
    first = browser.http.get(url, allow_redirects=True, timeout=5)
    csp = first.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert first.headers["Referrer-Policy"] == "no-referrer"
    assert first.headers["Cache-Control"] == "no-store"
    raw = first.history[0].raw.headers.getlist("Set-Cookie")
    browser_cookie = next(c for c in raw if c.startswith("idb_browser="))
    assert "HttpOnly" in browser_cookie and "SameSite=Lax" in browser_cookie


def test_english_pages_on_request(chain: Chain) -> None:
    url, _ = chain.authorize_url(ui_locales="en")
    page = requests.get(url, timeout=5)
    assert '<html lang="en">' in page.text and "Choose your organisation" in page.text


def test_discovery_describes_the_profile(chain: Chain) -> None:
    metadata = requests.get(f"{chain.base}/.well-known/openid-configuration", timeout=5).json()
    assert metadata["issuer"] == chain.base
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert set(metadata["token_endpoint_auth_methods_supported"]) == {"private_key_jwt",
                                                                      "client_secret_basic"}
    keys = requests.get(metadata["jwks_uri"], timeout=5).json()["keys"]
    assert {k["alg"] for k in keys} == {"ES256", "RS256", "PS256"}
    assert all("d" not in k for k in keys)


def test_demo_app_logout_ends_the_broker_session(chain: Chain) -> None:
    browser = chain.enrolling_browser()
    home = browser.go(chain.demo.app_urls["wvggz-portaal"] + "login")
    assert "Anna Jansen" in home.body
    form_token = re.search(r'name="csrf_token" value="([^"]+)"', home.body).group(1)
    after = browser.http.post(chain.demo.app_urls["wvggz-portaal"] + "logout",
                              data={"csrf_token": form_token}, timeout=10)
    assert after.url.startswith(chain.demo.app_urls["wvggz-portaal"]), after.url
    assert "Anna Jansen" not in after.text
    assert any(r.url.startswith(f"{chain.base}/logout") for r in after.history)
    url, _ = chain.authorize_url(prompt="none")
    silent = browser.http.get(url, allow_redirects=False, timeout=5)
    assert "login_required" in silent.headers["Location"]


def test_chooser_offers_the_last_used_organisation_first(chain: Chain) -> None:
    browser = Browser(username="p.devries", organisation="ggz-centraal")
    chain.login(browser)
    url, _ = chain.authorize_url(prompt="login")
    chooser = browser.http.get(url, timeout=5)
    links = re.findall(r'href="/login/[^"]+/organisation/([^"]+)"', chooser.text)
    assert links[0] == "ggz-centraal"
    assert "Laatst gebruikt" in chooser.text
