"""SSO sessions end at the absolute limit however active they are; logins are browser-bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from idbroker.config import SessionSettings
from idbroker.sessions import Sessions
from idbroker.store.sqlite import SqliteStore


@pytest.fixture
def sessions(tmp_path: Path) -> Sessions:
    return Sessions(SqliteStore(tmp_path / "s.sqlite3"),
                    SessionSettings(idle_timeout=600, absolute_timeout=3600))


def test_session_ends_at_the_absolute_limit(sessions: Sessions, monkeypatch: pytest.MonkeyPatch) -> None:
    token, session = sessions.create("p-1", {}, auth_time=0)
    assert sessions.get(token).sid == session.sid
    real = __import__("time").time
    monkeypatch.setattr("idbroker.sessions.time.time", lambda: real() + 3601)
    assert sessions.get(token) is None


def test_cookie_token_is_not_stored(sessions: Sessions, tmp_path: Path) -> None:
    token, _ = sessions.create("p-1", {"subject": "x"}, auth_time=0)
    assert token.encode() not in (tmp_path / "s.sqlite3").read_bytes()
    sessions.end(token)
    assert sessions.get(token) is None


def test_login_transaction_needs_the_browser_that_started_it(sessions: Sessions) -> None:
    txn = sessions.begin_login("browser-secret-" + "a" * 32, {"client_id": "c"})
    assert sessions.login(txn.id, "browser-secret-" + "a" * 32) is not None
    assert sessions.login(txn.id, "browser-secret-" + "b" * 32) is None
    assert sessions.login(txn.id, None) is None
