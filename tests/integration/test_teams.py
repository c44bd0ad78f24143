"""The role policy in the login: acting team, roles, application scopes and the level the
roles need, as chain applications see them in their tokens (issue 5 with issue 4)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from idbroker.audit.log import records
from tests.integration.conftest import ROLES_CLIENT, STEPUP_ORG, Chain
from tests.support.browser import Browser, Step, TotpApp

SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"
LOW = "http://eidas.europa.eu/LoA/low"


def _keys(chain: Chain) -> KeySet:
    return KeySet.import_key_set(requests.get(f"{chain.base}/jwks.json", timeout=5).json())


def _tokens(chain: Chain, query: dict, request: dict) -> tuple[dict, dict, dict]:
    """ID token claims, access token claims and the token response of a roles-client login."""
    assert "code" in query, query
    body = chain.redeem(query["code"][0], request["verifier"], client_id=ROLES_CLIENT,
                        assertion=chain.assertion(iss=ROLES_CLIENT, sub=ROLES_CLIENT)).json()
    keys = _keys(chain)
    id_token, access = (dict(jwt.decode(body[name], keys).claims) for name in ("id_token", "access_token"))
    return id_token, access, body


def _stapper(n: int, **means: Any) -> Browser:
    return Browser(username=f"s{n:02d}", organisation=STEPUP_ORG, **means)


def _demo_claims(page: Step) -> dict[str, Any]:
    """The access token claims the demo app shows (it prints them as JSON)."""
    blocks = re.findall(r"<h2>Access token</h2>.*?<h3>Claims</h3><pre>(.*?)</pre>", page.body, re.S)
    assert blocks, page.body[:800]
    return json.loads(blocks[0].replace("&#34;", '"').replace("&amp;", "&"))


# -- scopes and the level the roles need -------------------------------------------------------


def test_a_role_at_low_needs_no_step_up_and_gets_only_its_scope(chain: Chain) -> None:
    query, request, _ = chain.login(_stapper(50), client_id=ROLES_CLIENT, scope="openid profile roles.agenda")
    id_token, access, body = _tokens(chain, query, request)
    assert access["scope"].split() == ["openid", "profile", "roles.agenda"] == body["scope"].split()
    assert access["acr"] == LOW
    assert (access["organisation"], access["team"]) == (STEPUP_ORG, "stap-team")
    assert access["roles"] == ["planner"]  # not the roles whose level this login did not reach
    assert (id_token["organisation"], id_token["team"]) == (STEPUP_ORG, "stap-team")


def test_a_scope_whose_role_needs_substantial_raises_the_requirement(chain: Chain) -> None:
    """The client asks no acr and its minimum is low: the role behind roles.casus needs
    substantial, so the person steps up (a first factor, with an activation code)."""
    browser = _stapper(51, activation=chain.issue_activation, totp=TotpApp())
    query, request, _ = chain.login(browser, client_id=ROLES_CLIENT, scope="openid roles.agenda roles.casus")
    _, access, _ = _tokens(chain, query, request)
    assert access["acr"] == SUBSTANTIAL
    assert access["scope"].split() == ["openid", "roles.agenda", "roles.casus"]
    assert access["roles"] == ["planner", "medewerker"]
    assert any("/stepup/" in step.url for step in browser.history)


def test_a_scope_whose_role_needs_high_is_unmet_not_silently_dropped(chain: Chain) -> None:
    query, _, _ = chain.login(_stapper(52, activation=chain.issue_activation, totp=TotpApp()),
                              client_id=ROLES_CLIENT, scope="openid roles.dossier")
    assert query["error"] == ["unmet_authentication_requirements"], query
    assert query["iss"] == [chain.base]


def test_an_undefined_scope_is_invalid_scope(chain: Chain) -> None:
    url, _ = chain.authorize_url(client_id=ROLES_CLIENT, scope="openid roles.everything")
    reply = requests.get(url, allow_redirects=False, timeout=5)
    assert parse_qs(urlsplit(reply.headers["Location"]).query)["error"] == ["invalid_scope"]


def test_a_person_without_a_role_gets_access_denied(chain: Chain) -> None:
    """Anna Jansen (another organisation) holds no role in the roles-only client."""
    before = chain.broker.audit.head().seq
    query, _, _ = chain.login(Browser(), client_id=ROLES_CLIENT, scope="openid roles.agenda")
    assert query["error"] == ["access_denied"], query
    assert "no role" in query["error_description"][0]
    # Refused on the IdP's callback page: recorded under the client the request named.
    refusals = [r.event for r in records(chain.broker.audit)
                if r.seq > before and r.event["type"] == "refusal"]
    assert [(e["reason"], e.get("client")) for e in refusals] == [("access_denied", ROLES_CLIENT)]


def test_an_identity_only_client_names_the_organisation_but_no_team(chain: Chain) -> None:
    query, request, _ = chain.login(_stapper(53))
    body = chain.redeem(query["code"][0], request["verifier"]).json()
    access = dict(jwt.decode(body["access_token"], _keys(chain)).claims)
    assert access["organisation"] == STEPUP_ORG
    assert "team" not in access and "roles" not in access


# -- a person in several teams chooses (demo chain: Sevda Elmaci, GGZ Centraal) -----------------


def _elmaci(chain: Chain, team: str | None) -> Browser:
    return chain.enrolling_browser(username="s.elmaci", organisation="ggz-centraal", team=team)


def test_a_member_of_two_teams_chooses_and_the_choice_is_remembered_and_can_change(chain: Chain) -> None:
    portal = chain.demo.app_urls["wvggz-portaal"]
    browser = _elmaci(chain, "ggz-fact-oost")
    first = browser.go(portal + "login")
    assert any("/team/" in step.url for step in browser.history), [s.url for s in browser.history]
    claims = _demo_claims(first)
    assert (claims["team"], claims["roles"]) == ("ggz-fact-oost", ["zorgverlener"])
    assert "wvggz.melding.indienen" in claims["scope"] and "wvggz.melding.lezen" not in claims["scope"]

    # The next login at the same application uses the remembered team without asking.
    seen = len(browser.history)
    again = browser.go(portal + "login")
    assert not any("/team/" in step.url for step in browser.history[seen:])
    assert _demo_claims(again)["team"] == "ggz-fact-oost"

    # "Ander team kiezen" (prompt=select_account) asks again; the new choice holds.
    browser.team = "ggz-crisisdienst"
    switched = browser.go(portal + "login?team=kiezen")
    claims = _demo_claims(switched)
    assert claims["team"] == "ggz-crisisdienst" and "wvggz.melding.lezen" in claims["scope"]
    # Another application: one team grants on it, so nothing to choose.
    seen = len(browser.history)
    zvh = browser.go(chain.demo.app_urls["zvh-casus"] + "login")
    assert not any("/team/" in step.url for step in browser.history[seen:])
    assert _demo_claims(zvh)["team"] == "ggz-fact-oost"


def test_team_page_refuses_a_team_the_person_is_not_in_and_a_missing_csrf_token(chain: Chain) -> None:
    browser = _elmaci(chain, None)
    page = browser.go(chain.demo.app_urls["wvggz-portaal"] + "login")
    assert "/team/" in page.url and 'data-team="ggz-crisisdienst"' in page.body, page.url
    action, hidden = Browser.forms(page.url, page.body)["team"]
    other = browser.http.post(action, data={**hidden, "team": "utrecht-burgemeester"}, timeout=10)
    assert other.status_code == 400 and "geen lid van dat team" in other.text
    forged = browser.http.post(action, data={"team": "ggz-crisisdienst"}, timeout=10)
    assert forged.status_code == 400
    stranger = Browser().http.post(action, data={**hidden, "team": "ggz-crisisdienst"}, timeout=10)
    assert stranger.status_code == 400  # another browser's login transaction
    session = chain.broker.sessions.get(browser.http.cookies.get("idb_session"))
    assert session is not None and session.teams == {}  # none of these chose a team


def test_prompt_none_when_a_team_must_be_chosen_is_account_selection_required(chain: Chain) -> None:
    browser = _elmaci(chain, None)
    browser.go(chain.demo.app_urls["zvh-casus"] + "login")  # one team there: an SSO session, no choice yet
    url, _ = chain.authorize_url(client_id="wvggz-portaal", prompt="none",
                                 redirect_uri=chain.demo.app_urls["wvggz-portaal"] + "callback")
    reply = browser.http.get(url, allow_redirects=False, timeout=5)
    assert parse_qs(urlsplit(reply.headers["Location"]).query)["error"] == ["account_selection_required"]


def test_claims_follow_the_clients_data_minimisation(chain: Chain) -> None:
    """The roles client receives name, organisation, team, roles and acr: no e-mail, no person."""
    query, request, _ = chain.login(_stapper(54), client_id=ROLES_CLIENT,
                                    scope="openid profile email roles.agenda")
    id_token, access, _ = _tokens(chain, query, request)
    assert "email" not in id_token and "person" not in id_token and "person" not in access
    assert id_token["name"] == "Stap Tester 54"
