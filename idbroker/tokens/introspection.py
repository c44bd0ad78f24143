"""Access-token verification and RFC 7662 introspection.

One function decides whether an access token is live, for every place the broker accepts
one (introspection, token exchange, userinfo): signed by a key of this broker under that
key's one algorithm (``alg: none``, HS256 keyed with a public key, an unknown ``kid`` all
fail in :meth:`KeyRing.verify`), ``typ: at+jwt`` (RFC 9068: an ID token is not an access
token), this ``iss``, within ``iat``/``nbf``/``exp``, and not revoked on any instance.

Introspection answers only the resource server the token is for: a token whose ``aud`` is
another application's is ``active: false`` to the caller, like a token that does not exist
(RFC 7662 §4: a resource server must not learn about tokens meant for others).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from idbroker.keys import KeyRing, TokenInvalid, is_numeric_date
from idbroker.policy.model import ClientPolicy
from idbroker.tokens.errors import INVALID_CLIENT, TokenError

ACCESS_TOKEN_TYP = "at+jwt"
_REQUIRED = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id")
#: RFC 7662 §2.2 / RFC 9068 fields, then who acts for whom, copied when the token has them.
RESPONSE_FIELDS = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti", "acr",
                   "auth_time", "amr", "organisation", "organisation_kind", "team", "roles", "person",
                   "act")
INACTIVE: Mapping[str, Any] = {"active": False}


class RevocationCheck(Protocol):
    """What verification needs of :class:`~idbroker.tokens.revocation.Revocations`."""

    def is_revoked(self, jti: str, sid: str | None = None, family: str | None = None) -> bool: ...


class InactiveToken(ValueError):
    """The access token is not live; ``reason`` is for the log (it never holds the token)."""


def single_audience(claims: Mapping[str, Any]) -> str | None:
    """The one ``aud`` of a broker access token (a string or a one-element list), else None."""
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    return aud if isinstance(aud, str) and aud else None


def verify_access_token(token: str, keys: KeyRing, issuer: str, revoked: RevocationCheck, *,
                        now: float | None = None, leeway: int = 0) -> dict[str, Any]:
    """The claims of a live access token this broker issued, or :class:`InactiveToken`."""
    if not isinstance(token, str) or not token or len(token) > 16384:
        raise InactiveToken("not a token")
    try:
        claims = keys.verify(token, typ=ACCESS_TOKEN_TYP)
    except TokenInvalid as exc:
        raise InactiveToken(str(exc)) from None
    missing = [name for name in _REQUIRED if name not in claims]
    if missing:
        raise InactiveToken(f"claims missing: {', '.join(missing)}")
    if claims["iss"] != issuer:
        raise InactiveToken("issued by another issuer")
    now = time.time() if now is None else now
    if not (is_numeric_date(claims["exp"]) and is_numeric_date(claims["iat"])):
        raise InactiveToken("exp/iat are not numbers")
    if claims["exp"] <= now:
        raise InactiveToken("expired")
    if claims["iat"] > now + leeway:
        raise InactiveToken("issued in the future")
    if "nbf" in claims and (not is_numeric_date(claims["nbf"]) or claims["nbf"] > now + leeway):
        raise InactiveToken("not yet valid")
    if single_audience(claims) is None or not isinstance(claims["jti"], str):
        raise InactiveToken("malformed aud or jti")
    sid, family = claims.get("sid"), claims.get("family")
    if revoked.is_revoked(claims["jti"], sid if isinstance(sid, str) else None,
                          family if isinstance(family, str) else None):
        raise InactiveToken("revoked")
    return claims


def introspect(token_string: str, keys: KeyRing, issuer: str, revoked: RevocationCheck,
               caller: ClientPolicy | None, *, now: float | None = None, leeway: int = 0) -> dict[str, Any]:
    """RFC 7662 answer for ``caller``, an authenticated resource server (client of the policy).

    No caller (the request was not authenticated): :class:`TokenError` ``invalid_client``,
    which the endpoint sends as 401. Anything not live, or meant for another audience:
    ``{"active": false}`` and nothing else. Refresh tokens are not introspected here.
    """
    if caller is None:
        raise TokenError(INVALID_CLIENT, "introspection requires client authentication")
    try:
        claims = verify_access_token(token_string, keys, issuer, revoked, now=now, leeway=leeway)
    except InactiveToken:
        return dict(INACTIVE)
    if single_audience(claims) not in caller.audience_values:
        return dict(INACTIVE)
    answer: dict[str, Any] = {"active": True, "token_type": "Bearer"}
    answer.update({name: claims[name] for name in RESPONSE_FIELDS if name in claims})
    return answer
