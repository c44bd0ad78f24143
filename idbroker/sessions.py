"""Login transactions and single sign-on sessions, kept server-side in the store.

Cookies carry only random identifiers; the store is keyed by their hashes. A login
transaction is bound to the browser that started it, so one browser can never finish
(or step up) another browser's login.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from idbroker.config import SessionSettings
from idbroker.store import Store, secret_key

_LOGIN = "login"
_SSO = "sso"


@dataclass
class LoginTransaction:
    """One /authorize request on its way through organisation choice and upstream login."""

    id: str
    browser: str  # hash of the browser-binding cookie
    params: dict[str, str]
    created_at: float
    organisation: str | None = None
    upstream: dict[str, Any] = field(default_factory=dict)
    #: Set once the person is known and a step-up or enrolment is under way: the person
    #: the step-up pages may act for (a step-up for anyone else is refused).
    person: str | None = None
    #: Step-up state: a checked activation code (its hash record, never the code), and
    #: ``purpose`` ("authorize", or "manage" for the authenticators page).
    stepup: dict[str, Any] = field(default_factory=dict)


@dataclass
class SsoSession:
    key: str  # hash of the cookie token: the token itself is never stored
    sid: str  # public session id, for the ID token's ``sid`` and logout
    person: str
    identity: dict[str, Any]
    created_at: float
    auth_time: int
    clients: list[str] = field(default_factory=list)
    #: The eIDAS level the upstream login proves, as far as the policy trusts the IdP
    #: (low/substantial/high). The broker's own factors (``factor_uses``) raise it per
    #: request, see :mod:`idbroker.assurance.stepup`.
    level: str = "low"
    #: Uses of the broker's own factors in this session (``FactorUse.to_dict()``), newest last.
    factor_uses: list[dict[str, Any]] = field(default_factory=list)
    #: The team the person chose to act for, per client (client id -> team id).
    teams: dict[str, str] = field(default_factory=dict)


class Sessions:
    def __init__(self, store: Store, settings: SessionSettings) -> None:
        self.store = store
        self.settings = settings

    # -- login transactions ----------------------------------------------------

    def begin_login(self, browser: str, params: dict[str, str]) -> LoginTransaction:
        txn = LoginTransaction(secrets.token_urlsafe(24), secret_key(browser), params, time.time())
        self.save_login(txn)
        return txn

    def save_login(self, txn: LoginTransaction) -> None:
        remaining = txn.created_at + self.settings.login_timeout - time.time()
        if remaining <= 0:
            return
        self.store.put(_LOGIN, secret_key(txn.id), asdict(txn), remaining)

    def login(self, txn_id: str, browser: str | None, *,
              check_browser: bool = True) -> LoginTransaction | None:
        """The transaction, if it exists and this browser started it.

        ``check_browser=False`` only where the browser cannot show its cookie (a SAML
        Response posted cross-site); the login is then finished where it can."""
        if not txn_id:
            return None
        data = self.store.get(_LOGIN, secret_key(txn_id))
        if data is None:
            return None
        if check_browser and (not browser or not hmac.compare_digest(data["browser"], secret_key(browser))):
            return None
        return LoginTransaction(**data)

    def end_login(self, txn: LoginTransaction) -> None:
        self.store.delete(_LOGIN, secret_key(txn.id))

    # -- single sign-on sessions -------------------------------------------------

    def create(self, person: str, identity: dict[str, Any], auth_time: int, *,
               level: str = "low") -> tuple[str, SsoSession]:
        """A new session and the token for the browser's cookie."""
        token = secrets.token_urlsafe(32)
        session = SsoSession(secret_key(token), secrets.token_urlsafe(16), person, identity,
                             time.time(), auth_time, level=level)
        self._save(session)
        return token, session

    def get(self, token: str | None) -> SsoSession | None:
        """A live session; each use restarts its idle timer (never past the absolute limit)."""
        if not token:
            return None
        data = self.store.get(_SSO, secret_key(token))
        if data is None:
            return None
        session = SsoSession(**data)
        ttl = self._ttl(session)
        if ttl <= 0 or not self.store.touch(_SSO, session.key, ttl):
            self.store.delete(_SSO, session.key)
            return None
        return session

    def add_client(self, session: SsoSession, client_id: str) -> None:
        if client_id not in session.clients:
            session.clients.append(client_id)
            self._save(session)

    def add_factor_use(self, session: SsoSession, use: dict[str, Any], *, keep: int = 20) -> None:
        """Record a successful step-up (the newest ``keep`` uses are kept)."""
        session.factor_uses = [*session.factor_uses, use][-keep:]
        self._save(session)

    def choose_team(self, session: SsoSession, client_id: str, team_id: str) -> None:
        """Remember the team the person acts for at this client (until they change it)."""
        session.teams = {**session.teams, client_id: team_id}
        self._save(session)

    def end(self, token: str | None) -> None:
        if token:
            self.store.delete(_SSO, secret_key(token))

    def _ttl(self, session: SsoSession) -> float:
        """The idle timeout, cut short by the absolute limit (<= 0: the session is over)."""
        remaining = session.created_at + self.settings.absolute_timeout - time.time()
        return min(self.settings.idle_timeout, remaining)

    def _save(self, session: SsoSession) -> None:
        ttl = self._ttl(session)
        if ttl > 0:
            self.store.put(_SSO, session.key, asdict(session), ttl)
