"""The audit trail in real logins (issue 7): every step recorded, one chain across broker
instances, nothing handed out without its record, and no secret in any log."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
import requests

from idbroker.app import create_app
from idbroker.audit import AuditUnavailable, open_for_settings
from idbroker.audit.log import records
from idbroker.audit.verify import verify
from tests.integration.conftest import STEPUP_ORG, Chain, audit_locked, running_chain
from tests.support.browser import Browser, TotpApp
from tests.support.redis_server import running_redis_server

LOW = "http://eidas.europa.eu/LoA/low"


def _events(chain: Chain, **filters: Any) -> list[dict[str, Any]]:
    return [record.event | {"seq": record.seq} for record in records(chain.broker.audit, **filters)]


def _login_and_redeem(chain: Chain, browser: Browser | None = None,
                      **params: str) -> tuple[requests.Response, Browser]:
    query, request, browser = chain.login(browser or Browser(), **params)
    return chain.redeem(query["code"][0], request["verifier"]), browser


# -- what a login leaves in the trail ---------------------------------------------------------------


def test_a_login_records_each_step_with_who_what_and_from_where(chain: Chain) -> None:
    before = chain.broker.audit.head().seq
    reply, browser = _login_and_redeem(chain)
    assert reply.status_code == 200, reply.text
    sid = chain.broker.sessions.get(browser.http.cookies.get("idb_session")).sid
    mine = [e for e in _events(chain) if e["seq"] > before and (e.get("sid") == sid or "sid" not in e)]
    types = [e["type"] for e in mine]
    for wanted in ("login.started", "login.organisation_chosen", "upstream.result", "login.completed",
                   "code.issued", "token.issued"):
        assert wanted in types, types
    assert types.index("login.completed") < types.index("code.issued") < types.index("token.issued")
    upstream = next(e for e in mine if e["type"] == "upstream.result")
    assert upstream["organisation"] == "gemeente-utrecht" and upstream["acr"] == LOW
    assert upstream["upstream_subject"] == "u-10234" and upstream["person"].startswith("p-")
    assert "mapping" in upstream["detail"]
    token = next(e for e in mine if e["type"] == "token.issued")
    assert token["client"] == "test-rp" and token["sid"] == sid and token["acr"] == LOW
    assert token["scopes"] == ["openid", "profile", "email"] and token["audience"] == ["test-rp"]
    assert token["source_ip"] == "127.0.0.1" and token["correlation_id"]
    assert token["detail"]["jti"] and token["detail"]["grant_type"] == "authorization_code"
    code = next(e for e in mine if e["type"] == "code.issued")
    assert re.fullmatch(r"[0-9a-f]{64}", code["detail"]["code_sha256"])
    assert verify(chain.broker.audit, chain.broker.keys).ok


def test_refusals_step_up_and_team_choice_are_recorded(chain: Chain) -> None:
    before = chain.broker.audit.head().seq
    url, _ = chain.authorize_url(scope="openid roles.unknown")
    requests.get(url, allow_redirects=False, timeout=5)  # invalid_scope
    browser = Browser(username="s40", organisation=STEPUP_ORG, activation=chain.issue_activation,
                      totp=TotpApp())
    query, request, _ = chain.login(browser, acr_values="http://eidas.europa.eu/LoA/substantial")
    chain.redeem(query["code"][0], request["verifier"])
    found = _events(chain)
    mine = [e for e in found if e["seq"] > before]
    assert any(e["type"] == "refusal" and e["reason"] == "invalid_scope" for e in mine), mine
    person = chain.person_of(browser)
    kinds = [e["type"] for e in mine if e.get("person") == person]
    assert {"activation.used", "enrolment.completed", "stepup.completed"} <= set(kinds), kinds
    token = next(e for e in mine if e["type"] == "token.issued" and e.get("person") == person)
    assert token["acr"] == "http://eidas.europa.eu/LoA/substantial" and "otp" in token["factors"]


def test_logout_is_recorded(chain: Chain) -> None:
    reply, browser = _login_and_redeem(chain)
    sid = chain.broker.sessions.get(browser.http.cookies.get("idb_session")).sid
    browser.http.get(f"{chain.base}/logout", params={"id_token_hint": reply.json()["id_token"]}, timeout=5)
    assert any(e["type"] == "session.ended" and e.get("sid") == sid for e in _events(chain))


# -- fail closed ----------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_chain(tmp_path: Path) -> Iterator[Chain]:
    with running_chain(tmp_path) as chain:
        yield chain


def test_no_token_leaves_without_its_record(sqlite_chain: Chain) -> None:
    chain = sqlite_chain
    query, request, browser = chain.login(Browser())
    tokens_before = [e for e in _events(chain) if e["type"] == "token.issued"]
    with audit_locked(chain):
        reply = chain.redeem(query["code"][0], request["verifier"])
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"] == "temporarily_unavailable" and "access_token" not in reply.text
        # SSO: the next application gets no code either, but a page that says why.
        url, _ = chain.authorize_url()
        page = browser.http.get(url, allow_redirects=False, timeout=30)
        assert page.status_code == 503 and "tijdelijk niet beschikbaar" in page.text
        assert "code=" not in page.headers.get("Location", "")
    assert [e for e in _events(chain) if e["type"] == "token.issued"] == tokens_before
    assert verify(chain.broker.audit, chain.broker.keys).ok


def test_no_session_is_handed_out_without_its_record(sqlite_chain: Chain) -> None:
    """The audit store fails while the person is at their IdP: the return gets the outage
    page and no session cookie."""
    chain = sqlite_chain
    browser = Browser()
    url, _ = chain.authorize_url()
    at_idp = browser.go(url, stop_at=f"{chain.base}/upstream/")  # the IdP's answer, not yet fetched
    with audit_locked(chain):
        back = browser.http.get(at_idp.url, allow_redirects=False, timeout=30)
    assert back.status_code == 503 and "tijdelijk niet beschikbaar" in back.text
    assert "idb_session" not in back.cookies and not browser.http.cookies.get("idb_session")


def test_the_broker_does_not_start_without_its_audit_store(tmp_path: Path) -> None:
    with running_chain(tmp_path) as chain:
        unreachable = chain.broker.settings.audit.model_copy(update={"url": "redis://127.0.0.1:1/0"})
        settings = chain.broker.settings.model_copy(update={"audit": unreachable})
        with pytest.raises(AuditUnavailable):
            create_app(settings)


# -- two broker instances, one chain ----------------------------------------------------------------


class _Alternate:
    """A load balancer in front of two broker instances: requests take turns."""

    def __init__(self, *apps: Any) -> None:
        self.apps, self.turn, self.lock = apps, 0, threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self.lock:
            self.turn += 1
            app = self.apps[self.turn % len(self.apps)]
        return app(environ, start_response)


def test_two_instances_on_one_redis_keep_one_chain_and_count_every_token(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    with running_redis_server(tmp_path / "redis") as redis_url, \
            running_chain(tmp_path / "chain", {"store.url": redis_url}) as chain:
        first = chain.demo.app.app
        second = create_app(chain.broker.settings)
        chain.demo.app.app = _Alternate(first, second)
        issued: list[str] = []
        failures: list[str] = []

        def one_login() -> None:
            try:
                reply, _ = _login_and_redeem(chain)
                if reply.status_code == 200:
                    issued.append(reply.json()["access_token"])
                else:
                    failures.append(reply.text)
            except Exception as error:  # reported below, with the rest
                failures.append(repr(error))

        threads = [threading.Thread(target=one_login) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures, failures[:3]
        assert len(issued) == 12
        token_events = [e for e in _events(chain) if e["type"] == "token.issued"]
        assert len(token_events) == len(issued)
        assert sorted(e["detail"]["jti"] for e in token_events) == sorted(_jti(token) for token in issued)
        # Both instances wrote: one chain, no forks, no gaps.
        audit = open_for_settings(chain.broker.settings, chain.broker.keys)
        report = verify(audit, chain.broker.keys)
        assert report.ok, report
        seqs = [record.seq for record in records(audit)]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def _jti(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


# -- no secret in the audit trail or the application log ------------------------------------------


def test_no_secret_of_a_login_appears_in_the_audit_trail_or_the_logs(
        sqlite_chain: Chain, caplog: pytest.LogCaptureFixture) -> None:
    chain = sqlite_chain
    caplog.set_level(logging.DEBUG)
    totp = TotpApp()
    activation: list[str] = []

    def issue(browser: Browser) -> str:
        activation.append(chain.issue_activation(browser))
        return activation[-1]

    browser = Browser(username="s41", organisation=STEPUP_ORG, activation=issue, totp=totp)
    query, request, _ = chain.login(browser, acr_values="http://eidas.europa.eu/LoA/substantial")
    reply = chain.redeem(query["code"][0], request["verifier"])
    body = reply.json()
    secrets_seen = {
        "authorization code": query["code"][0], "access token": body["access_token"],
        "id token": body["id_token"], "PKCE verifier": request["verifier"],
        "session cookie": browser.http.cookies.get("idb_session"), "activation code": activation[0],
        "TOTP secret": totp.secret, "TOTP code": pyotp.TOTP(totp.secret).at(totp.last_step * 30),
    }
    trail = "\n".join(entry.body for entry in chain.broker.audit.entries())
    logs = "\n".join(record.getMessage() for record in caplog.records)
    for name, value in secrets_seen.items():
        assert value and value not in trail, f"{name} in the audit trail"
        assert value not in logs, f"{name} in the application log"
