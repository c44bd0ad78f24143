"""WebAuthn in a real browser: Debian's Chromium driven by Playwright, with a CDP virtual
authenticator (ctap2, internal, user verification on).

The whole demo chain runs at ``http://localhost:PORT`` (a secure context whose rp id is
``localhost``; a page at 127.0.0.1 would be refused by the browser). The journey: a demo
account that arrives at low logs in to the demo chain app, which needs eIDAS substantial;
an administrator issues an activation code; the person enrols a WebAuthn authenticator,
logs out, logs in again with a step-up, and the demo app shows ``acr`` substantial and the
acting team; the second demo app then signs the person in without a new login (SSO). In a
browser of its own, a person in two teams (``j.smit`` of Veilig Thuis, SAML, eHerkenning
loa3) chooses a team on the broker's team page and switches with "Ander team kiezen"
(``prompt=select_account``).

Every page on the way is screenshotted and checked with axe-core (``tests/browser/axe.py``):
no serious or critical WCAG violations.

Locally the test skips when Chromium or Playwright is missing; with ``CI=true`` it fails
instead, so CI can never pass without it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idbroker.assurance.activation import ActivationCodes
from idbroker.demo.launcher import DemoChain, build_demo
from tests.browser.axe import PageAudit
from tests.support.wsgi_server import DeferredApp, serve_wsgi

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"
MISSING = "run `make test` (installs chromium and playwright)"


def _playwright():
    """Playwright's sync API, or skip (locally) / fail (CI) when the browser is missing."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the Python package playwright is not installed"
    if problem is None and not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        problem = f"{CHROMIUM} is not installed"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem}: this test must run in CI; {MISSING}")
        pytest.skip(f"{problem}: {MISSING}")
    return sync_playwright


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoChain]:
    """The demo chain, served on a free port and addressed as http://localhost:PORT."""
    deferred = DeferredApp()
    with serve_wsgi(deferred) as (base, _shutdown):
        base = base.replace("127.0.0.1", "localhost")
        shutil.copytree(REPO / "policies", tmp_path / "policies")
        chain = build_demo(base, policies=tmp_path / "policies", state_dir=tmp_path / "state")
        deferred.target = chain.app
        yield chain


def _acting_team(page: Any) -> str | None:
    """The team the demo app says the person acts for (``data-acting-team``)."""
    marker = page.locator("[data-acting-team]")
    return marker.get_attribute("data-acting-team") if marker.count() else None


def _navigations(page: Any) -> list[str]:
    """Every URL the page's main frame goes to from now on (redirects included)."""
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url)
            if request.is_navigation_request() and request.frame == page.main_frame else None)
    return seen


def test_enrol_webauthn_with_an_activation_code_then_step_up(demo: DemoChain, tmp_path: Path) -> None:
    sync_playwright = _playwright()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    audit = PageAudit(shots)
    app_url = demo.app_urls["wvggz-portaal"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(locale="nl-NL").new_page()
            page.set_default_timeout(15_000)
            cdp = page.context.new_cdp_session(page)
            cdp.send("WebAuthn.enable", {"enableUI": False})
            cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
                "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
                "hasUserVerification": True, "isUserVerified": True, "automaticPresenceSimulation": True}})

            # 1. Upstream login: Anna Jansen's IdP gives a password login only (low).
            page.goto(app_url)
            audit(page, "chain app")
            page.get_by_text("Inloggen via idbroker").click()
            page.wait_for_url("**/login/*")
            audit(page, "organisation chooser")
            page.get_by_role("link", name="Gemeente Utrecht").click()
            page.wait_for_selector("#password")
            audit(page, "IdP login")
            page.fill("#username", "a.jansen")
            page.fill("#password", "demo")
            page.get_by_role("button", name="Inloggen").click()

            # 2. No factor yet: the broker asks for an activation code, which an
            #    administrator issues (idbroker enrol issue) for this person.
            page.wait_for_url("**/stepup/*/activate")
            audit(page, "activation code")
            session_cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "idb_session")
            person = demo.broker.sessions.get(session_cookie).person
            code = ActivationCodes(demo.broker.store).issue(person, issued_by="browser test").code
            page.fill("#activation-code", code)
            page.get_by_role("button", name="Code controleren").click()

            # 3. Enrol the (virtual) authenticator with WebAuthn.
            page.wait_for_url("**/stepup/*/enrol")
            audit(page, "enrolment choice")
            page.locator("[data-enrol=webauthn]").click()
            page.wait_for_selector("#factor-name")
            audit(page, "enrol security key")
            page.fill("#factor-name", "Virtuele sleutel")
            page.locator("#webauthn-button").click()
            page.wait_for_url(app_url)
            body = page.content()
            assert "Anna Jansen" in body and SUBSTANTIAL in body, body[:2000]
            audit(page, "chain app after enrolment")

            # 4. Log out everywhere (the demo app logs out at the broker too).
            page.get_by_role("button", name="Uitloggen").click()
            page.wait_for_selector("text=U bent uitgelogd")
            audit(page, "logged out")

            # 5. Log in again: password at the IdP, then the step-up with the authenticator.
            page.get_by_text("Inloggen via idbroker").click()
            page.get_by_role("link", name="Gemeente Utrecht").click()
            if page.locator("#password").count():
                page.fill("#username", "a.jansen")
                page.fill("#password", "demo")
                page.get_by_role("button", name="Inloggen").click()
            page.wait_for_url("**/stepup/*/webauthn")
            audit(page, "step-up with security key")
            page.locator("#webauthn-button").click()
            page.wait_for_url(app_url)
            body = page.content()
            audit(page, "chain app after step-up")
            assert "Anna Jansen" in body and SUBSTANTIAL in body, body[:2000]
            assert "&#34;hwk&#34;" in body or '"hwk"' in body  # amr: a hardware-bound key
            # a.jansen's one team on the Wvggz-portaal, named in the token the app received.
            assert _acting_team(page) == "utrecht-wvggz", body[:2000]

            # 6. The second chain app: single sign-on, no new login at the IdP, no step-up.
            second_url = demo.app_urls["zvh-casus"]
            went = _navigations(page)
            page.goto(second_url)
            audit(page, "second chain app")
            page.get_by_text("Inloggen via idbroker").click()
            page.wait_for_url(lambda url: url.startswith(second_url) or "/team/" in url)
            if "/team/" in page.url:
                # Her stand-in membership of the ZVH process directors (2 Nov 2026 - 31 Jan 2027,
                # demo policy) gives a second team on this app during that period.
                audit(page, "team choice on the second app")
                page.locator('[data-team="utrecht-wvggz"]').click()
                page.wait_for_url(second_url)
            body = page.content()
            audit(page, "second chain app after single sign-on")
            assert "Anna Jansen" in body and SUBSTANTIAL in body, body[:2000]
            assert _acting_team(page) == "utrecht-wvggz"
            # (/stepup/<login>/continue only carries on after a team choice; it asks nothing)
            asked = [url for url in went if "/demo-idp/" in url
                     or ("/stepup/" in url and not url.split("?")[0].endswith("/continue"))]
            assert not asked, went

            # 7. Another person, another browser: j.smit is in two Veilig Thuis teams that reach
            #    the Wvggz-portaal; her IdP's own MFA (eHerkenning loa3) is trusted for substantial.
            page = browser.new_context(locale="nl-NL").new_page()
            page.set_default_timeout(15_000)
            page.goto(app_url)
            page.get_by_text("Inloggen via idbroker").click()
            page.wait_for_url("**/login/*")
            page.get_by_role("link", name="Veilig Thuis Utrecht").click()
            page.wait_for_selector("#password")
            audit(page, "SAML IdP login")
            page.fill("#username", "j.smit")
            page.fill("#password", "demo")
            page.get_by_role("button", name="Inloggen").click()
            page.get_by_role("button", name="Doorgaan").wait_for()
            audit(page, "SAML IdP sends the response")
            page.get_by_role("button", name="Doorgaan").click()
            page.wait_for_url("**/team/*")
            audit(page, "team choice")
            offered = {button.get_attribute("data-team") for button in page.locator("[data-team]").all()}
            assert offered == {"vtu-team-west", "vtu-crisisdienst"}, offered
            page.locator('[data-team="vtu-crisisdienst"]').click()
            page.wait_for_url(app_url)
            body = page.content()
            audit(page, "chain app acting for the crisis team")
            assert "Jeroen Smit" in body and SUBSTANTIAL in body, body[:2000]
            assert _acting_team(page) == "vtu-crisisdienst"

            # 8. Team switch: "Ander team kiezen" sends prompt=select_account; the broker asks again
            #    (no new login) and the app now acts for the other team.
            went = _navigations(page)
            page.get_by_role("link", name="Ander team kiezen").click()
            page.wait_for_url("**/team/*")
            audit(page, "team choice again")
            assert any("prompt=select_account" in url for url in went), went
            page.locator('[data-team="vtu-team-west"]').click()
            page.wait_for_url(app_url)
            audit(page, "chain app acting for team West")
            assert _acting_team(page) == "vtu-team-west"
            assert not [url for url in went if "/demo-idp/" in url], went
            audit.check()
        finally:
            browser.close()
