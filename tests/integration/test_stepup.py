"""Step-up to eIDAS substantial with the broker's own factors (issue 4), over real HTTP.

A person from an organisation whose IdP gives a password login only (low) reaches
substantial with a TOTP app or a WebAuthn authenticator of their own; the first one is
enrolled with an activation code. Every refusal in the issue's "Bad input" paragraph has
a test here. Each test uses a person of its own (STEPUP_ACCOUNTS), since factors and
lockouts are per person.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from idbroker.assurance.activation import ActivationCodes
from idbroker.assurance.factors import FactorRegistry
from idbroker.assurance.stepup import FactorKind
from idbroker.audit.log import records
from idbroker.sessions import SsoSession
from tests.integration.conftest import STEPUP_ORG, TRUSTED_OIDC_ORG, Chain, running_chain
from tests.support.browser import Browser, Step, TotpApp
from tests.support.soft_authenticator import SoftAuthenticator

LOW = "http://eidas.europa.eu/LoA/low"
SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"
HIGH = "http://eidas.europa.eu/LoA/high"


def person(n: int, **means: Any) -> Browser:
    return Browser(username=f"s{n:02d}", organisation=STEPUP_ORG, **means)


def tokens(chain: Chain, query: dict, request: dict) -> tuple[dict, dict]:
    """The ID token's and the access token's claims for an authorization response."""
    assert "code" in query, query
    body = chain.redeem(query["code"][0], request["verifier"]).json()
    keys = KeySet.import_key_set(requests.get(f"{chain.base}/jwks.json", timeout=5).json())
    id_token = dict(jwt.decode(body["id_token"], keys).claims)
    access = dict(jwt.decode(body["access_token"], keys).claims)
    return id_token, access


def upstream_logins(browser: Browser) -> int:
    """Password logins at the organisation's IdP (its login form posts to /login)."""
    return sum("/stepup-idp/login" in s.url for s in browser.history)


def stop_at_page(chain: Chain, browser: Browser, **params: str) -> Step:
    """Walk a login until a step-up page stops it (the browser lacks the means)."""
    browser.give_up = False
    url, _ = chain.authorize_url(**params)
    step = browser.go(url, stop_at=chain.rp_redirect)
    assert "/stepup/" in step.url, (step.url, step.body[:300])
    return step


def post_form(browser: Browser, step: Step, form: str, **fields: str) -> requests.Response:
    action, hidden = Browser.forms(step.url, step.body)[form]
    return browser.http.post(action, data={**hidden, **fields}, allow_redirects=False, timeout=10)


def message(body: str) -> str:
    found = re.search(r'<p class="message" role="alert"[^>]*>([^<]+)</p>', body)
    return found.group(1) if found else ""


def enrolled(chain: Chain, n: int, *, webauthn: bool = False) -> Browser:
    """Person ``n`` with a first factor enrolled through an activation code."""
    browser = person(n, activation=chain.issue_activation,
                     **({"authenticator": SoftAuthenticator()} if webauthn else {"totp": TotpApp()}))
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    id_token, _ = tokens(chain, query, request)
    assert id_token["acr"] == SUBSTANTIAL
    return browser


def session_of(chain: Chain, browser: Browser) -> SsoSession:
    session = chain.broker.sessions.get(browser.http.cookies.get("idb_session"))
    assert session is not None
    return session


# -- what a person can do ------------------------------------------------------------------------


def test_low_login_enrols_totp_with_an_activation_code_and_gets_substantial(chain: Chain) -> None:
    browser = person(1, activation=chain.issue_activation, totp=TotpApp())
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    id_token, access = tokens(chain, query, request)
    assert id_token["acr"] == access["acr"] == SUBSTANTIAL
    assert {"otp", "mfa"} <= set(id_token["amr"]) and id_token["amr"] == access["amr"]
    assert any("/activate" in s.url for s in browser.history)
    assert any("/enrol/totp" in s.url for s in browser.history)


def test_next_login_asks_only_the_factor_and_prompt_login_asks_it_again(chain: Chain) -> None:
    browser = enrolled(chain, 2)
    browser.activation = None  # no second activation code is needed (or asked)
    before = len(browser.history)
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL, prompt="login")
    assert tokens(chain, query, request)[0]["acr"] == SUBSTANTIAL
    assert upstream_logins(browser) == 2
    assert not any("/activate" in s.url or "/enrol" in s.url for s in browser.history[before:])
    assert any(s.url.endswith("/totp") for s in browser.history[before:])
    # SSO: the factor given a moment ago still counts, nothing is asked.
    before = len(browser.history)
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    assert tokens(chain, query, request)[0]["acr"] == SUBSTANTIAL
    assert not any("/stepup/" in s.url for s in browser.history[before:])


def test_rfc9470_return_asks_only_what_is_missing(chain: Chain) -> None:
    """A low session, then the resource server's challenge sends the user back with
    acr_values=substantial: no new upstream login, only the factor; later a max_age the
    factor is too old for asks the factor again, and nothing else."""
    browser = enrolled(chain, 3, webauthn=True)
    query, request, _ = chain.login(browser, prompt="login")  # a fresh session at low
    assert tokens(chain, query, request)[0]["acr"] == LOW
    logins = upstream_logins(browser)
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    id_token, _ = tokens(chain, query, request)
    assert id_token["acr"] == SUBSTANTIAL and "hwk" in id_token["amr"]
    assert upstream_logins(browser) == logins
    # Ten minutes pass (the factor use is moved back in the store: the clock is not ours).
    session = session_of(chain, browser)
    session.factor_uses = [{**u, "at": u["at"] - 600} for u in session.factor_uses]
    chain.broker.sessions._save(session)
    before = len(browser.history)
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL, max_age="300")
    assert tokens(chain, query, request)[0]["acr"] == SUBSTANTIAL
    assert any(s.url.endswith("/webauthn") for s in browser.history[before:])
    assert upstream_logins(browser) == logins
    # Without max_age the older use still counts.
    session = session_of(chain, browser)
    session.factor_uses = [{**u, "at": u["at"] - 600} for u in session.factor_uses]
    chain.broker.sessions._save(session)
    before = len(browser.history)
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    assert tokens(chain, query, request)[0]["acr"] == SUBSTANTIAL
    assert not any("/stepup/" in s.url for s in browser.history[before:])


def test_webauthn_enrolment_and_step_up_over_http(chain: Chain) -> None:
    browser = person(4, activation=chain.issue_activation, authenticator=SoftAuthenticator())
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    id_token, access = tokens(chain, query, request)
    assert id_token["acr"] == access["acr"] == SUBSTANTIAL
    assert {"hwk", "user", "mfa"} <= set(id_token["amr"])
    assert any("/enrol/webauthn" in s.url for s in browser.history)
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL, prompt="login")
    assert tokens(chain, query, request)[0]["acr"] == SUBSTANTIAL
    assert any(s.url.endswith("/webauthn") for s in browser.history)


def test_essential_acr_in_the_claims_parameter_is_met_with_a_listed_value(chain: Chain) -> None:
    browser = enrolled(chain, 5)
    claims = json.dumps({"id_token": {"acr": {"essential": True, "values": [SUBSTANTIAL, HIGH]}}})
    query, request, _ = chain.login(browser, claims=claims, prompt="login")
    assert tokens(chain, query, request)[0]["acr"] == SUBSTANTIAL


@pytest.mark.parametrize("claims", ["not json", "[1, 2]", '{"id_token": "acr"}',
                                    '{"id_token": {"acr": {"values": "x"}}}', "[" * 5000 + "]" * 5000],
                         ids=["not json", "list", "id_token text", "values text", "nested too deep"])
def test_claims_parameter_garbage_is_invalid_request(chain: Chain, claims: str) -> None:
    query, _, _ = chain.login(person(6), claims=claims)
    assert query["error"] == ["invalid_request"], query


@pytest.mark.parametrize(("acr", "params"), [
    ({"value": "urn:example:loa:9"}, {}),  # only a value the broker does not know
    ({"values": [LOW]}, {"acr_values": SUBSTANTIAL}),  # only a value below what is asked for
])
def test_an_essential_acr_the_token_could_not_carry_is_unmet(chain: Chain, acr: dict[str, Any],
                                                             params: dict[str, str]) -> None:
    """Refused before the login, never a login that then cannot be answered (a substantial
    upstream login used to end in a 500 when the essential value was low)."""
    claims = json.dumps({"id_token": {"acr": {"essential": True, **acr}}})
    browser = Browser(username="t.devos", organisation=TRUSTED_OIDC_ORG)
    query, _, _ = chain.login(browser, claims=claims, **params)
    assert query["error"] == ["unmet_authentication_requirements"]


def test_high_cannot_be_reached_with_a_local_factor(chain: Chain) -> None:
    browser = enrolled(chain, 7)
    query, _, _ = chain.login(browser, acr_values=HIGH)
    assert query["error"] == ["unmet_authentication_requirements"]


def test_prompt_none_when_a_step_up_is_needed_is_interaction_required(chain: Chain) -> None:
    _, _, browser = chain.login(person(8))
    url, _ = chain.authorize_url(acr_values=SUBSTANTIAL, prompt="none")
    reply = browser.http.get(url, allow_redirects=False, timeout=5)
    assert parse_qs(urlsplit(reply.headers["Location"]).query)["error"] == ["interaction_required"]


def test_without_a_factor_or_code_the_client_gets_unmet(chain: Chain) -> None:
    query, _, browser = chain.login(person(9), acr_values=SUBSTANTIAL)  # the person cancels
    assert query["error"] == ["unmet_authentication_requirements"]
    assert any(s.url.endswith("/activate") for s in browser.history)


def test_trusted_substantial_login_needs_no_step_up_and_may_enrol_without_a_code(chain: Chain) -> None:
    browser = Browser(username="t.devos", organisation=TRUSTED_OIDC_ORG, totp=TotpApp(), give_up=False)
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    assert tokens(chain, query, request)[0]["acr"] == SUBSTANTIAL
    assert not any("/stepup/" in s.url for s in browser.history)
    page = browser.http.get(f"{chain.base}/account/factors", timeout=5)
    step = Step(page.url, page.status_code, page.text)
    reply = browser.http.post(f"{chain.base}/account/factors/confirm", timeout=5, allow_redirects=False,
                              data={"csrf_token": re.search(r'name="csrf_token" value="([^"]+)"',
                                                            step.body).group(1), "add": "1"})
    assert "/enrol" in reply.headers["Location"]  # no activation code asked
    final = browser.go(f"{chain.base}{reply.headers['Location']}")
    assert final.url.endswith("/account/factors"), final.url
    assert "Test app" in final.body


def test_discovery_advertises_acr_values_and_the_claims_parameter(chain: Chain) -> None:
    metadata = requests.get(f"{chain.base}/.well-known/openid-configuration", timeout=5).json()
    assert metadata["acr_values_supported"] == [LOW, SUBSTANTIAL, HIGH]
    assert metadata["claims_parameter_supported"] is True


def test_pages_are_dutch_by_default_english_on_request_and_keep_the_csp(chain: Chain) -> None:
    step = stop_at_page(chain, person(10), acr_values=SUBSTANTIAL)
    assert "Activeringscode" in step.body and 'lang="nl"' in step.body
    english = person(11)
    step = stop_at_page(chain, english, acr_values=SUBSTANTIAL, ui_locales="en")
    assert "Activation code" in step.body
    reply = english.http.get(step.url, timeout=5)
    assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
    assert "<script>" not in reply.text and "style=" not in reply.text


# -- bad input gets a clear answer ----------------------------------------------------------------


def _totp_page(chain: Chain, n: int) -> tuple[Browser, Step, TotpApp]:
    browser = enrolled(chain, n)
    app, browser.totp = browser.totp, None
    step = stop_at_page(chain, browser, acr_values=SUBSTANTIAL, prompt="login")
    assert step.url.endswith("/totp")
    return browser, step, app


def test_wrong_replayed_and_old_totp_codes_are_refused_with_a_clear_message(chain: Chain) -> None:
    browser, step, app = _totp_page(chain, 12)
    totp = pyotp.TOTP(app.secret)
    wrong = f"{(int(totp.now()) + 1) % 1_000_000:06d}"
    reply = post_form(browser, step, "totp", code=wrong)
    assert reply.status_code == 400 and "klopt niet" in message(reply.text)
    reply = post_form(browser, step, "totp", code=app.code(step=app.last_step))  # the enrolment's step
    assert reply.status_code == 400 and "al gebruikt" in message(reply.text)
    old = totp.at(int(time.time()) - 5 * 30)
    reply = post_form(browser, step, "totp", code=old)
    assert reply.status_code == 400 and "ander tijdstip" in message(reply.text)
    reply = post_form(browser, step, "totp", code="12ab")
    assert reply.status_code == 400 and "juiste vorm" in message(reply.text)
    reply = post_form(browser, step, "totp", code=app.code())
    assert reply.status_code == 303 and reply.headers["Location"].endswith("/continue")


def test_brute_force_locks_the_person_out_with_a_page(chain: Chain) -> None:
    browser, step, app = _totp_page(chain, 13)
    statuses = []
    for guess in range(5):
        statuses.append(post_form(browser, step, "totp", code=f"{guess:06d}").status_code)
    assert statuses == [400, 400, 400, 400, 429]
    locked = post_form(browser, step, "totp", code=app.code())  # even the right code
    assert locked.status_code == 429 and "te veel mislukte pogingen" in locked.text
    assert int(locked.headers["Retry-After"]) > 0
    person = chain.person_of(browser)
    mine = [r.event for r in records(chain.broker.audit) if r.event.get("person") == person]
    failed = [e["reason"] for e in mine if e["type"] == "stepup.completed" and e["outcome"] == "failure"]
    assert failed[:4] == ["wrong_code"] * 4
    assert any(e["type"] == "refusal" and e["reason"] == "locked_out" for e in mine)


def test_brute_force_from_one_ip_locks_the_ip_out(tmp_path) -> None:
    """Twenty failures from one address, spread over persons, lock out the address."""
    with running_chain(tmp_path) as chain:
        for n in range(1, 5):
            browser = person(n)
            step = stop_at_page(chain, browser, acr_values=SUBSTANTIAL)
            for _ in range(5):
                reply = post_form(browser, step, "activate", code="AAAA-BBBB-CCCC-DDDD")
        assert reply.status_code == 429
        browser = person(5)
        step = stop_at_page(chain, browser, acr_values=SUBSTANTIAL)
        first = post_form(browser, step, "activate", code="AAAA-BBBB-CCCC-DDDD")
        assert first.status_code == 429 and "Retry-After" in first.headers


def _webauthn_page(chain: Chain, n: int) -> tuple[Browser, Step, SoftAuthenticator]:
    browser = enrolled(chain, n, webauthn=True)
    authenticator, browser.authenticator = browser.authenticator, None
    step = stop_at_page(chain, browser, acr_values=SUBSTANTIAL, prompt="login")
    assert step.url.endswith("/webauthn")
    browser.authenticator = authenticator
    return browser, step, authenticator


def _ceremony(browser: Browser, step: Step) -> tuple[dict, dict[str, str], str]:
    data = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', step.body[step.body.index("data-webauthn="):]))
    headers = {"X-CSRF-Token": data["csrf"]}
    options = browser.http.post(f"{step.url}/options", json={}, headers=headers, timeout=5).json()
    return options, headers, f"{step.url}/complete"


@pytest.mark.parametrize(("overrides", "words"), [
    ({"origin": "http://evil.example"}, "niet van deze website"),
    ({"rp_id": "evil.example"}, "andere website-naam"),
    ({"uv": False}, "pincode niet"),
    ({"client_type": "webauthn.create"}, "niet voor deze stap"),
])
def test_webauthn_assertion_with_a_wrong_field_is_refused(chain: Chain, overrides: dict, words: str) -> None:
    n = {"origin": 14, "rp_id": 15, "uv": 16, "client_type": 17}[next(iter(overrides))]
    browser, step, authenticator = _webauthn_page(chain, n)
    overrides = dict(overrides)
    origin = overrides.pop("origin", chain.base)
    options, headers, complete = _ceremony(browser, step)
    credential = authenticator.get(options["publicKey"], origin=origin, **overrides)
    reply = browser.http.post(complete, json={"handle": options["handle"], "credential": credential},
                              headers=headers, timeout=5)
    assert reply.status_code == 400 and words in reply.json()["message"], reply.text


def test_replayed_webauthn_assertion_is_refused(chain: Chain) -> None:
    browser, step, authenticator = _webauthn_page(chain, 18)
    options, headers, complete = _ceremony(browser, step)
    body = {"handle": options["handle"],
            "credential": authenticator.get(options["publicKey"], origin=chain.base)}
    assert browser.http.post(complete, json=body, headers=headers, timeout=5).status_code == 200
    again = browser.http.post(complete, json=body, headers=headers, timeout=5)
    assert again.status_code == 400 and "verlopen of al gebruikt" in again.json()["message"]


def test_counter_regression_is_refused(chain: Chain, caplog: pytest.LogCaptureFixture) -> None:
    browser, step, authenticator = _webauthn_page(chain, 19)
    options, headers, complete = _ceremony(browser, step)
    credential = authenticator.get(options["publicKey"], origin=chain.base, counter=1)
    reply = browser.http.post(complete, json={"handle": options["handle"], "credential": credential},
                              headers=headers, timeout=5)
    assert reply.status_code == 400 and "gekopieerd" in reply.json()["message"]
    assert any("counter_regression" in r.getMessage() for r in caplog.records)
    person = chain.person_of(browser)
    assert any(r.event["type"] == "stepup.completed" and r.event.get("reason") == "counter_regression"
               and r.event.get("person") == person for r in records(chain.broker.audit))


def test_cancelled_browser_prompt_gets_a_message_and_a_fresh_try(chain: Chain) -> None:
    browser, step, authenticator = _webauthn_page(chain, 20)
    options, headers, complete = _ceremony(browser, step)
    reply = browser.http.post(complete, json={"handle": options["handle"],
                                              "credential": {"error": "NotAllowedError"}},
                              headers=headers, timeout=5)
    assert reply.status_code == 400 and "afgebroken" in reply.json()["message"]
    options, headers, complete = _ceremony(browser, step)  # pressing the button again works
    credential = authenticator.get(options["publicKey"], origin=chain.base)
    ok = browser.http.post(complete, headers=headers, timeout=5,
                           json={"handle": options["handle"], "credential": credential})
    assert ok.status_code == 200 and ok.json()["redirect"].endswith("/continue")


def test_malformed_webauthn_posts_get_a_message_not_a_500(chain: Chain) -> None:
    browser, step, _ = _webauthn_page(chain, 21)
    options, headers, complete = _ceremony(browser, step)
    for body in ([1], {"handle": 5}, {"handle": options["handle"], "credential": {"id": "x"}}):
        reply = browser.http.post(complete, json=body, headers=headers, timeout=5)
        assert reply.status_code == 400 and reply.json()["message"]
    no_csrf = browser.http.post(complete, json={}, timeout=5)
    assert no_csrf.status_code == 400 and "verlopen" in no_csrf.json()["message"]


def test_expired_reused_and_other_persons_activation_codes_are_refused(chain: Chain) -> None:
    store = chain.broker.store
    # Expired.
    browser = person(22)
    step = stop_at_page(chain, browser, acr_values=SUBSTANTIAL)
    short = ActivationCodes(store, min_ttl=1).issue(chain.person_of(browser), ttl=1)
    time.sleep(1.2)
    reply = post_form(browser, step, "activate", code=short.code)
    assert reply.status_code == 400 and "verlopen, al gebruikt" in message(reply.text)
    # Used: person 23 enrols with a code; the same code then does nothing for anyone.
    used: list[str] = []

    def issue_and_remember(b: Browser) -> str:
        used.append(chain.issue_activation(b))
        return used[-1]

    chain.login(person(23, activation=issue_and_remember, totp=TotpApp()), acr_values=SUBSTANTIAL)
    reply = post_form(browser, step, "activate", code=used[0])
    assert reply.status_code == 400 and "verlopen, al gebruikt" in message(reply.text)
    # Another person's code: refused, and burnt for its owner too.
    owner = person(24)
    owner_step = stop_at_page(chain, owner, acr_values=SUBSTANTIAL)
    code = chain.issue_activation(owner)
    reply = post_form(browser, step, "activate", code=code)
    assert reply.status_code == 400 and "iemand anders" in message(reply.text)
    reply = post_form(owner, owner_step, "activate", code=code)
    assert reply.status_code == 400 and "verlopen, al gebruikt" in message(reply.text)
    # A live code of one's own works.
    reply = post_form(browser, step, "activate", code=chain.issue_activation(browser))
    assert reply.status_code == 303 and reply.headers["Location"].endswith("/enrol")


def test_step_up_for_another_persons_or_another_browsers_login_is_refused(
        chain: Chain, caplog: pytest.LogCaptureFixture) -> None:
    browser = person(25)
    first = stop_at_page(chain, browser, acr_values=SUBSTANTIAL)  # person 25's login
    browser.username = "s26"
    stop_at_page(chain, browser, acr_values=SUBSTANTIAL, prompt="login")  # now person 26 here
    reply = browser.http.get(first.url, timeout=5)
    assert reply.status_code == 403 and "iemand anders" in reply.text
    posted = post_form(browser, first, "activate", code=chain.issue_activation(browser))
    assert posted.status_code == 403
    assert any("stepup_other_person" in r.getMessage() for r in caplog.records)
    other_browser = person(27)
    chain.login(other_browser)
    reply = other_browser.http.get(first.url, timeout=5)
    assert reply.status_code == 400 and "ander browservenster" in reply.text


def test_forms_without_their_csrf_token_are_refused(chain: Chain) -> None:
    browser = person(28)
    step = stop_at_page(chain, browser, acr_values=SUBSTANTIAL)
    action, _ = Browser.forms(step.url, step.body)["activate"]
    reply = browser.http.post(action, data={"code": "AAAA-BBBB-CCCC-DDDD"}, timeout=5)
    assert reply.status_code == 400 and "formulier is verlopen" in reply.text


def test_enrolment_pages_refuse_a_person_without_a_code(chain: Chain) -> None:
    """Going straight to the enrolment page without an activation code goes to the code page;
    its JSON endpoints refuse outright."""
    browser = person(29)
    step = stop_at_page(chain, browser, acr_values=SUBSTANTIAL)
    base = step.url.removesuffix("/activate")
    reply = browser.http.get(f"{base}/enrol/webauthn", allow_redirects=False, timeout=5)
    assert reply.headers["Location"].endswith("/activate")
    options = browser.http.post(f"{base}/enrol/webauthn/options", json={}, timeout=5)
    assert options.status_code in (400, 403) and "publicKey" not in options.json()


# -- my authenticators ------------------------------------------------------------------------------


def test_manage_page_lists_renames_and_removes_after_a_fresh_step_up(chain: Chain) -> None:
    browser = enrolled(chain, 30)
    page = browser.http.get(f"{chain.base}/account/factors", timeout=5)
    assert "Test app" in page.text and "Verwijderen" in page.text  # the enrolment was a fresh step-up
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    factor_id = re.search(r'data-factor-id="([^"]+)"', page.text).group(1)
    renamed = browser.http.post(f"{chain.base}/account/factors/{factor_id}/rename", timeout=5,
                                data={"csrf_token": csrf, "name": "Mijn telefoon"})
    assert "Mijn telefoon" in renamed.text and "opgeslagen" in renamed.text
    # Later: the step-up is no longer fresh, so changes need one first.
    session = session_of(chain, browser)
    session.factor_uses = [{**u, "at": u["at"] - 3600} for u in session.factor_uses]
    chain.broker.sessions._save(session)
    refused = browser.http.post(f"{chain.base}/account/factors/{factor_id}/remove", timeout=5,
                                data={"csrf_token": csrf})
    assert "Bevestig eerst" in refused.text and "Mijn telefoon" in refused.text
    confirm = browser.http.post(f"{chain.base}/account/factors/confirm", data={"csrf_token": csrf},
                                allow_redirects=False, timeout=5)
    back = browser.go(f"{chain.base}{confirm.headers['Location']}")  # the TOTP step-up
    assert back.url.endswith("/account/factors") and "Verwijderen" in back.body
    removed = browser.http.post(f"{chain.base}/account/factors/{factor_id}/remove", timeout=5,
                                data={"csrf_token": csrf})
    assert "nog geen beveiligingsmiddelen" in removed.text


def test_manage_page_needs_a_session(chain: Chain) -> None:
    reply = requests.get(f"{chain.base}/account/factors", timeout=5)
    assert reply.status_code == 401 and "Log eerst in" in reply.text


def test_a_second_factor_is_added_after_a_step_up_and_both_are_offered(chain: Chain) -> None:
    browser = enrolled(chain, 31, webauthn=True)
    browser.totp, browser.prefer = TotpApp(), "totp"
    page = browser.http.get(f"{chain.base}/account/factors", timeout=5)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    add = browser.http.post(f"{chain.base}/account/factors/confirm", data={"csrf_token": csrf, "add": "1"},
                            allow_redirects=False, timeout=5)
    done = browser.go(f"{chain.base}{add.headers['Location']}")
    assert done.url.endswith("/account/factors") and "Test app" in done.body and "Test key" in done.body
    browser.prefer = "webauthn"
    before = len(browser.history)
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL, prompt="login")
    assert tokens(chain, query, request)[0]["acr"] == SUBSTANTIAL
    choice = next(s for s in browser.history[before:] if re.search(r"/stepup/[^/]+$", s.url))
    assert 'data-factor="webauthn"' in choice.body and 'data-factor="totp"' in choice.body
    assert choice.body.index('data-factor="webauthn"') < choice.body.index('data-factor="totp"')


def test_every_refusal_reason_has_a_message_in_both_languages() -> None:
    from idbroker.assurance.factors import Reason
    from idbroker.i18n import MESSAGES

    keys = {f"reason_{r.value}" for r in Reason} | {
        "reason_has_factors", "reason_activation_required", "reason_step_up_required"}
    for lang in ("nl", "en"):
        assert keys <= set(MESSAGES[lang]), sorted(keys - set(MESSAGES[lang]))
    assert set(MESSAGES["nl"]) == set(MESSAGES["en"])


def test_totp_enrolment_with_a_bad_name_or_code_can_be_corrected(chain: Chain) -> None:
    browser = person(32)
    step = stop_at_page(chain, browser, acr_values=SUBSTANTIAL)
    post_form(browser, step, "activate", code=chain.issue_activation(browser))
    page = browser.http.get(step.url.replace("/activate", "/enrol/totp"), timeout=5)
    enrol = Step(page.url, page.status_code, page.text)
    app = TotpApp(secret=re.search(r'data-totp-secret="([A-Z2-7]+)"', page.text).group(1))
    bad_name = post_form(browser, enrol, "enrol-totp", name="x" * 100, code=app.code())
    assert bad_name.status_code == 400 and "1 tot 64" in message(bad_name.text)
    wrong = post_form(browser, enrol, "enrol-totp", name="Telefoon", code="000000")
    assert wrong.status_code == 400 and "klopt niet" in message(wrong.text)
    done = post_form(browser, enrol, "enrol-totp", name="Telefoon", code=app.code())
    assert done.status_code == 303, message(done.text)
    final = browser.go(f"{chain.base}{done.headers['Location']}", stop_at=chain.rp_redirect)
    query = parse_qs(urlsplit(final.url).query)
    assert "code" in query


def test_organisation_allow_list_refuses_an_authenticator_without_a_trusted_attestation(
        chain: Chain) -> None:
    browser = Browser(username="t.bos", organisation=TRUSTED_OIDC_ORG, authenticator=SoftAuthenticator(),
                      give_up=False)
    query, request, _ = chain.login(browser, acr_values=SUBSTANTIAL)
    assert tokens(chain, query, request)[0]["acr"] == SUBSTANTIAL
    page = browser.http.get(f"{chain.base}/account/factors", timeout=5)
    reply = browser.http.post(f"{chain.base}/account/factors/confirm", timeout=5, allow_redirects=False,
                              data={"csrf_token": re.search(r'name="csrf_token" value="([^"]+)"',
                                                            page.text).group(1), "add": "1"})
    step = browser.go(f"{chain.base}{reply.headers['Location']}")
    assert "/enrol/webauthn" in step.url, step.url
    # The browser was asked for a direct attestation, and the answer was refused.
    assert browser.last_json.get("message") == "Dit type sleutel is niet toegestaan door uw organisatie."
    registry = FactorRegistry(chain.broker.store)
    assert not any(f.kind == FactorKind.WEBAUTHN for f in registry.list(session_of(chain, browser).person))


@pytest.mark.parametrize(("browser", "kept"), [
    (lambda: person(64), False),  # trusted for nothing beyond low: its word alone
    (lambda: Browser(username="t.bos", organisation=TRUSTED_OIDC_ORG), True),  # trusted up to substantial
], ids=["untrusted", "trusted"])
def test_only_an_idp_the_policy_trusts_vouches_for_how_the_person_logged_in(
        chain: Chain, monkeypatch: pytest.MonkeyPatch, browser: Any, kept: bool) -> None:
    """An IdP's ``amr`` reaches the broker's tokens only if the policy trusts that IdP: an
    untrusted one's "hwk" and "mfa" used to stand in the ID token beside acr low."""
    from idbroker.demo import idp as demo_idp

    claims_of = demo_idp._OpenIDCode.generate_user_info
    monkeypatch.setattr(demo_idp._OpenIDCode, "generate_user_info",
                        lambda self, user, scope: {**claims_of(self, user, scope), "amr": ["hwk", "mfa"]})
    before = chain.broker.audit.head().seq
    query, request, _ = chain.login(browser())
    id_token, access = tokens(chain, query, request)
    assert ({"hwk", "mfa"} <= set(id_token.get("amr", ()))) is kept, id_token
    assert ({"hwk", "mfa"} <= set(access.get("amr", ()))) is kept, access
    said = [r.event for r in records(chain.broker.audit)
            if r.seq > before and r.event["type"] == "upstream.result"]
    assert said[0]["factors"] == ["hwk", "mfa"]  # the trail keeps what the IdP said, as with acr
    assert ("amr_ignored" in said[0]["detail"]) is not kept


def test_parallel_code_guesses_are_checked_one_at_a_time(chain: Chain) -> None:
    """Forty guesses at once: each used to pass the lockout check while the count was still
    below the limit, and 6 to 15 codes were checked against the person's app. Now each
    failure is counted before the next code is looked at: at most the limit is checked."""
    import threading

    browser, step, _ = _totp_page(chain, 68)
    action, hidden = Browser.forms(step.url, step.body)["totp"]
    start = threading.Barrier(40)
    statuses: list[int] = []

    def guess(n: int) -> None:
        http = requests.Session()
        http.cookies.update(browser.http.cookies)
        start.wait()
        statuses.append(http.post(action, data={**hidden, "code": f"{n:06d}"}, allow_redirects=False,
                                  timeout=30).status_code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    person = chain.person_of(browser)
    checked = [r.event for r in records(chain.broker.audit) if r.event.get("person") == person
               and r.event["type"] == "stepup.completed" and r.event.get("outcome") == "failure"]
    assert 1 <= len(checked) <= 5, len(checked)
    assert set(statuses) <= {400, 429}  # refused, busy or locked out: never a 500


def test_a_code_sent_while_another_is_checked_is_told_so_not_locked_out(chain: Chain) -> None:
    """A double click: the second submit finds the first holding the person's turn. It used
    to get the lockout page ('too many failed attempts') though nothing had failed."""
    browser, step, app = _totp_page(chain, 69)
    action, hidden = Browser.forms(step.url, step.body)["totp"]
    person = chain.person_of(browser)
    assert chain.broker.store.add("rl-factor-turn", person, {"at": time.time()}, 10)  # the first, still busy
    try:
        busy = browser.http.post(action, data={**hidden, "code": app.code()}, allow_redirects=False,
                                 timeout=10)
    finally:
        chain.broker.store.delete("rl-factor-turn", person)
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
    assert "wordt nog gecontroleerd" in busy.text and "mislukte pogingen" not in busy.text
    done = browser.http.post(action, data={**hidden, "code": app.code()}, allow_redirects=False, timeout=10)
    assert done.status_code == 303  # the same code, once the turn is free: nothing was counted
