"""Refresh tokens: opaque, rotated on every use, in families, stored only by hash.

A family is one login (SSO session ``sid``) at one client. Every refresh hands out the
next token of the family and retires the presented one; a retired token that comes back
means two parties hold the family's tokens, so the whole family is revoked (OAuth 2.0
Security BCP §4.14.2) and :class:`RefreshReuse` carries the family id for the audit.

Who wins a race is decided by the store's atomic ``swap`` that marks the presented token's
hash as spent in ``refresh-used``: of two concurrent rotations of one token exactly one
creates the marker and gets the next token; the other is reuse. The marker stays until the
family's absolute expiry, so a replay long after the rotation is still recognised.

Limits: a token expires after ``idle_timeout`` without use (the setting
``tokens.refresh_token_idle_timeout``, at most 6 hours: NL GOV Assurance profile) and the
family at its absolute expiry, the SSO session's ``absolute_timeout`` after login.

Nothing here knows HTTP or authlib: the token endpoint asks
:meth:`RefreshTokens.redeemable` first (which spends nothing, so a request refused for its
scope or resource leaves the token as it was), then :meth:`RefreshTokens.spend` once every
check has passed, and :meth:`RefreshTokens.undo_spend` if the answer cannot be delivered.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

from idbroker.store import Spent, Store, secret_key
from idbroker.tokens.errors import INVALID_GRANT, RefreshReuse, TokenError
from idbroker.tokens.revocation import Revocations

#: NL GOV Assurance profile for OAuth 2.0: refresh tokens expire after at most 6 hours idle
#: (the default and the most ``tokens.refresh_token_idle_timeout`` may be).
IDLE_TIMEOUT = 6 * 3600
_TOKENS = "refresh"
_USED = "refresh-used"


@dataclass(frozen=True)
class RefreshGrant:
    """What a refresh token stands for: the grant as it was made at login.

    The token endpoint re-evaluates the policy from ``identity`` (the upstream facts) at
    every refresh; ``scope`` is the most any refresh may give (RFC 6749 §6)."""

    family: str
    client_id: str
    person: str
    sid: str
    organisation: str | None
    team: str | None
    #: The level reached at login (``low`` / ``substantial`` / ``high``).
    level: str
    amr: tuple[str, ...]
    auth_time: int
    scope: str
    audience: str
    #: No token of the family is honoured at or after this moment (epoch seconds).
    absolute_expires_at: int
    #: The upstream identity (``UpstreamIdentity.to_dict()``), to re-evaluate the policy.
    identity: Mapping[str, Any] = field(default_factory=dict)
    #: When this token of the family was issued, and how many came before it.
    issued_at: int = 0
    generation: int = 0

    def to_record(self) -> dict[str, Any]:
        # A shallow copy (not ``asdict``, which deep-copies ``identity`` field by field):
        # the record is serialised to JSON at once.
        record = {name: getattr(self, name) for name in _FIELDS}
        record["amr"] = list(self.amr)
        record["identity"] = dict(self.identity)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RefreshGrant:
        values = dict(record)
        values["amr"] = tuple(values.get("amr") or ())
        return cls(**values)


_FIELDS = tuple(f.name for f in fields(RefreshGrant))


def new_family() -> str:
    """A new family id: random, not a bearer secret (it revokes nothing by itself)."""
    return secrets.token_urlsafe(16)


class RevokedFamily(NamedTuple):
    """A family :meth:`RefreshTokens.revoke` ended, as the audit records it."""

    family: str
    person: str | None
    sid: str | None


class RefreshTokens:
    """Issue and rotate refresh tokens over a :class:`~idbroker.store.Store`."""

    def __init__(self, store: Store, revocations: Revocations, *, idle_timeout: int = IDLE_TIMEOUT) -> None:
        self.store = store
        self.revocations = revocations
        self.idle_timeout = idle_timeout

    def issue(self, *, client_id: str, person: str, sid: str, organisation: str | None, team: str | None,
              level: str, amr: Sequence[str], auth_time: int, scope: str, audience: str,
              absolute_expires_at: float, identity: Mapping[str, Any] | None = None,
              family: str | None = None, now: float | None = None) -> tuple[str, RefreshGrant]:
        """The first token of a new family (at the authorization code grant). ``family``: its
        id when the caller needs it first (the access tokens issued with it carry it)."""
        now = time.time() if now is None else now
        if absolute_expires_at <= now:
            raise TokenError(INVALID_GRANT, "the session has reached its absolute limit")
        grant = RefreshGrant(
            family=family or new_family(), client_id=client_id, person=person, sid=sid,
            organisation=organisation, team=team, level=level, amr=tuple(amr), auth_time=int(auth_time),
            scope=scope, audience=audience, absolute_expires_at=int(absolute_expires_at),
            identity=dict(identity or {}), issued_at=int(now), generation=0)
        token = secrets.token_urlsafe(32)
        self.store.put(_TOKENS, secret_key(token), grant.to_record(), self._unused_for(grant, now))
        return token, grant

    def rotate(self, token: str, client_id: str, now: float | None = None, *,
               check: Callable[[RefreshGrant], None] | None = None) -> tuple[str, RefreshGrant]:
        """Redeem ``token`` for ``client_id`` at once: :meth:`redeemable`, then :meth:`spend`.

        The token endpoint calls the two apart, so that a request refused between them (a
        scope or ``resource`` it may not have) leaves the token as it was."""
        now = time.time() if now is None else now
        grant = self.redeemable(token, client_id, now, check=check)
        return self.spend(token, grant, now)

    def redeemable(self, token: str, client_id: str, now: float | None = None, *,
                   check: Callable[[RefreshGrant], None] | None = None) -> RefreshGrant:
        """The grant ``token`` stands for, if ``client_id`` may redeem it now; nothing is spent.

        Refused with ``invalid_grant``: an unknown or expired token, another client's live
        token (left untouched: presenting it does not burn it), a revoked family or session, a
        token idle for longer than :attr:`idle_timeout`, a family past its absolute expiry.
        A token already rotated raises :class:`RefreshReuse` after revoking its family, by
        whichever client presents it: a used token in anyone's hands means it leaked.
        ``check`` (the policy re-evaluation) runs last; if it raises, the family is revoked
        (reason ``policy``), the token dropped, and the exception propagates.
        """
        now = time.time() if now is None else now
        key = secret_key(token)
        record = self.store.get(_TOKENS, key)
        if record is None:
            used = self.store.get(_USED, key)
            if used is not None:
                raise self._reuse(used["family"], used["until"], now)
            raise TokenError(INVALID_GRANT, "unknown or expired refresh token")
        grant = RefreshGrant.from_record(record)
        if grant.client_id != client_id:
            raise TokenError(INVALID_GRANT, "the refresh token was issued to another client")
        if self.revocations.grant_revoked(grant.family, grant.sid):
            # Revoked by the loser of a race for this very token: that too is reuse.
            if self.store.get(_USED, key) is not None:
                raise RefreshReuse(grant.family)
            raise TokenError(INVALID_GRANT, "the refresh token has been revoked")
        if now >= grant.absolute_expires_at:
            raise TokenError(INVALID_GRANT, "the login has reached its absolute limit; log in again")
        if now >= grant.issued_at + self.idle_timeout:
            raise TokenError(INVALID_GRANT, "the refresh token expired unused")
        if check is not None:
            try:
                check(grant)
            except BaseException:
                self.revocations.revoke_family(grant.family, grant.absolute_expires_at, reason="policy",
                                               now=now)
                self.store.delete(_TOKENS, key)
                raise
        return grant

    def spend(self, token: str, grant: RefreshGrant, now: float | None = None) -> tuple[str, RefreshGrant]:
        """Rotate ``token`` (found :meth:`redeemable` as ``grant``): the family's next token.

        Call it once every check of the request has passed, just before the answer is made:
        from here on the presented token is used up. Lost to a concurrent rotation of the
        same token: :class:`RefreshReuse`, after revoking the family."""
        now = time.time() if now is None else now
        key = secret_key(token)
        successor = replace(grant, issued_at=int(now), generation=grant.generation + 1)
        # The race is decided by this one atomic, durable write (one fsync on SQLite), made
        # before the new token leaves: the "used" marker on the presented token, the
        # successor in, the presented token out. Of two rotations of one token exactly one
        # makes it; the other finds the marker and is reuse. A loser revokes the family only
        # after the winner's write, so the winner's revocation check has not seen it.
        new_token = secrets.token_urlsafe(32)
        if not self.store.swap(_TOKENS, key, secret_key(new_token), successor.to_record(),
                               self._unused_for(successor, now), spent=self._spent_mark(grant, now)):
            raise self._reuse(grant.family, grant.absolute_expires_at, now)
        return new_token, successor

    def undo_spend(self, token: str, grant: RefreshGrant, successor: str, now: float | None = None) -> bool:
        """Make ``token`` current again after :meth:`spend` gave ``successor``, when the answer
        carrying ``successor`` could not be delivered (the audit trail or signing failed).

        Safe because ``successor`` never left the server: the client still holds ``token``
        and will retry with it, which must not look like theft. The same compare-and-swap as
        a rotation puts ``token`` back in ``successor``'s place, marking ``successor`` spent,
        so it happens only if ``successor`` was not used. Only then does the presented
        token's "used" marker go: at every moment the token is either current (a
        ``/revoke`` or logout finds it) or marked used (a replay is reuse), never unknown;
        and between the two writes a concurrent rotation of it fails on the marker, as
        reuse, never giving a second live token. False if it could not be undone (the
        token then stays spent); a store error between the writes leaves the marker, so the
        token's next use counts as reuse: closed, not open."""
        now = time.time() if now is None else now
        key = secret_key(token)
        if not self.store.swap(_TOKENS, secret_key(successor), key, grant.to_record(),
                               self._unused_for(grant, now), spent=self._spent_mark(grant, now)):
            return False
        self.store.delete(_USED, key)
        return True

    def revoke(self, token: str, client_id: str, now: float | None = None) -> RevokedFamily | None:
        """RFC 7009 for a refresh token: revoke its family, if it is ``client_id``'s.

        Returns what was revoked (for the audit): the family, and its person and session
        when the presented token was the current one (an old, used token of the family only
        names the family). ``None`` for an unknown token or one of another client, which
        RFC 7009 §2.2 answers like a success without revealing it."""
        now = time.time() if now is None else now
        key = secret_key(token)
        record = self.store.get(_TOKENS, key)
        if record is None:
            used = self.store.get(_USED, key)  # an old token of the family still names it
            if used is None or used.get("client_id") != client_id:
                return None
            self.revocations.revoke_family(used["family"], used["until"], reason="revoked", now=now)
            return RevokedFamily(used["family"], None, None)
        grant = RefreshGrant.from_record(record)
        if grant.client_id != client_id:
            return None
        self.revocations.revoke_family(grant.family, grant.absolute_expires_at, reason="revoked", now=now)
        self.store.delete(_TOKENS, key)
        return RevokedFamily(grant.family, grant.person, grant.sid)

    # -- internals -------------------------------------------------------------------------

    def _ttl(self, grant: RefreshGrant, now: float) -> float:
        return max(1.0, grant.absolute_expires_at - now)

    def _spent_mark(self, grant: RefreshGrant, now: float) -> Spent:
        """The "used" marker a rotation leaves on a token of ``grant``'s family: it names the
        family (for reuse detection and revocation) until the family's absolute expiry."""
        marker = {"family": grant.family, "until": grant.absolute_expires_at, "client_id": grant.client_id}
        return Spent(_USED, marker, self._ttl(grant, now) + self.revocations.leeway)

    def _unused_for(self, grant: RefreshGrant, now: float) -> float:
        """How long the token of ``grant`` may still live unused (its store entry's ttl)."""
        return max(1.0, min(grant.issued_at + self.idle_timeout, grant.absolute_expires_at) - now)

    def _reuse(self, family: str, until: float, now: float) -> RefreshReuse:
        self.revocations.revoke_family(family, until, reason="reuse", now=now)
        return RefreshReuse(family)
