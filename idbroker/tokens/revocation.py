"""The revocation registry (RFC 7009), shared through the store so every instance sees it.

Access tokens are JWTs checked offline, so revoking one means remembering its ``jti`` until
its ``exp``; after that the token is dead anyway and the entry expires by itself. A refresh
token family, or everything issued in one SSO session (logout), is revoked by a marker that
lives as long as what it revokes. Keys are ``jti``s, family ids and session ids: none of
them is a bearer secret, so none is hashed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from idbroker.store import Store

_JTI = "revoked-jti"
_FAMILY = "revoked-family"
_SESSION = "revoked-sid"


class Revocations:
    """Revoked access tokens, refresh families and sessions, as the store holds them."""

    def __init__(self, store: Store, *, leeway: int = 60, access_token_lifetime: int = 3600) -> None:
        self.store = store
        #: Markers outlive what they revoke by this much, covering clock skew between instances.
        self.leeway = leeway
        #: An access token issued just before its family or session ends lives this much
        #: longer, so their markers do too (the default: the longest lifetime allowed).
        self.access_token_lifetime = access_token_lifetime

    def _ttl(self, until: float, now: float | None) -> float | None:
        remaining = until - (time.time() if now is None else now) + self.leeway
        return remaining if remaining > 0 else None

    # -- access tokens -------------------------------------------------------------------

    def revoke_access_token(self, jti: str, exp: float, *, now: float | None = None) -> None:
        """Make the access token ``jti`` inactive everywhere until it expires (``exp``)."""
        ttl = self._ttl(exp, now)
        if ttl is not None:
            self.store.put(_JTI, jti, {"exp": int(exp)}, ttl)

    def is_revoked(self, jti: str, sid: str | None = None, family: str | None = None) -> bool:
        """Whether an access token is revoked: by its own ``jti``, its session (``sid``), or
        the refresh family it was issued with (``family``; RFC 7009 §2.1: ending a refresh
        token's grant ends its access tokens too), all looked up in one round trip."""
        return self.revoked_and_fetch(jti, sid, family=family)[0]

    def revoked_and_fetch(self, jti: str, sid: str | None, also: Sequence[tuple[str, str]] = (), *,
                          family: str | None = None) -> tuple[bool, list[dict[str, Any] | None]]:
        """:meth:`is_revoked`, and the store entries ``also`` names, in the same round trip
        (token exchange needs the token's session record right after this check)."""
        wanted = [(_JTI, jti), *([(_SESSION, sid)] if sid is not None else []),
                  *([(_FAMILY, family)] if family is not None else []), *also]
        found = self.store.get_many(wanted)
        checked = len(wanted) - len(also)
        return any(entry is not None for entry in found[:checked]), found[checked:]

    # -- refresh token families ------------------------------------------------------------

    def revoke_family(self, family: str, until: float, *, reason: str, now: float | None = None) -> None:
        """Revoke every refresh token of ``family`` (one login at one client) until ``until``,
        its absolute expiry, and the access tokens issued with them until the last has expired.
        ``reason`` (``reuse``, ``revoked``, ``policy``) is for the audit."""
        ttl = self._ttl(until + self.access_token_lifetime, now)
        if ttl is not None:  # the first revocation's reason stays (``add``), for the audit
            self.store.add(_FAMILY, family, {"reason": reason, "until": int(until)}, ttl)

    def family_revoked(self, family: str) -> bool:
        return self.store.get(_FAMILY, family) is not None

    def grant_revoked(self, family: str, sid: str) -> bool:
        """Whether a refresh token's family or its session is revoked (one round trip)."""
        return any(found is not None for found in self.store.get_many([(_FAMILY, family), (_SESSION, sid)]))

    def family_revocation(self, family: str) -> dict[str, Any] | None:
        """Why and until when ``family`` is revoked (``reason``, ``until``), if it is."""
        return self.store.get(_FAMILY, family)

    # -- sessions (logout) -------------------------------------------------------------------

    def revoke_session(self, sid: str, until: float, *, now: float | None = None) -> None:
        """Everything issued in SSO session ``sid`` (its refresh families, and access tokens
        checked with :meth:`is_revoked` and their ``sid``) is revoked until ``until``, the
        session's absolute expiry: what logout must do on every instance. The marker stays
        until the last access token issued by then has expired too."""
        ttl = self._ttl(until + self.access_token_lifetime, now)
        if ttl is not None:
            self.store.put(_SESSION, sid, {"until": int(until)}, ttl)

    def session_revoked(self, sid: str) -> bool:
        return self.store.get(_SESSION, sid) is not None
