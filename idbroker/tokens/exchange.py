"""RFC 8693 token exchange and RFC 8707 resource indicators: the policy decisions.

A chain application holding a user's access token asks for one towards another
application's API. The permission check is never skipped (the Keycloak bug class): the
calling client must be the one the subject token was issued to or the one it is for, the
policy must list the target audience in the caller's ``token_exchange``, and the scope is
requested ∩ what that rule allows ∩ what the person's acting team's roles grant on the
target at the level the token proves. The new token keeps the person (``sub`` re-derived
for the target's sector), the acting organisation, team and roles, ``acr`` and
``auth_time``, and names the caller in ``act``, nesting the actors before it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from idbroker.assurance.levels import Level
from idbroker.keys import KeyRing
from idbroker.policy.model import ClientPolicy, Policy
from idbroker.tokens.errors import INVALID_GRANT, INVALID_REQUEST, INVALID_SCOPE, INVALID_TARGET, TokenError
from idbroker.tokens.introspection import InactiveToken, RevocationCheck, single_audience, verify_access_token

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
_LEVEL_BY_ACR = {level.acr: level for level in Level}


def level_of_acr(acr: Any) -> Level:
    """The level a broker ``acr`` states; anything else counts as low (fail closed)."""
    return _LEVEL_BY_ACR.get(acr, Level.LOW) if isinstance(acr, str) else Level.LOW


@dataclass(frozen=True)
class ExchangeRequest:
    """An RFC 8693 request whose shape is acceptable: one subject token and its type, at
    most one ``audience`` and one ``resource``, the requested scopes."""

    subject_token: str
    subject_token_type: str
    audience: str | None
    resource: str | None
    scopes: tuple[str, ...]


def read_exchange_request(params: Mapping[str, Sequence[str]]) -> ExchangeRequest:
    """The request's parameters (each name with all its values), or :class:`TokenError`.
    Nothing the broker would not act on is silently ignored:

    * ``actor_token`` / ``actor_token_type``: ``invalid_request``. The actor is the
      authenticated calling client (``act``), never a token a caller hands in; RFC 8693
      §2.1 makes ``actor_token_type`` without ``actor_token`` ``invalid_request`` too.
    * ``requested_token_type`` other than an access token: ``invalid_request``. Not even
      ``...:token-type:jwt``: RFC 8693 §3 keeps that for a JWT as such (an assertion for
      another authorization server), while what is issued here is an access token of this
      broker, whatever its format.
    * more than one ``audience`` or ``resource``: ``invalid_target`` (one audience per token;
      RFC 8693 allows several, so the token endpoint lets these two repeat and leaves them
      to this check).
    * a missing ``subject_token`` or ``subject_token_type``: ``invalid_request``.

    Any other parameter sent twice never gets here: the token endpoint refuses it for every
    grant (``FormPayload.repeated``, RFC 6749 §3.2).
    """
    if "actor_token" in params or "actor_token_type" in params:
        raise TokenError(INVALID_REQUEST,
                         "actor tokens are not supported: the authenticated client is the actor")
    if len(params.get("audience", ())) > 1 or len(params.get("resource", ())) > 1:
        raise TokenError(INVALID_TARGET, "one audience per token: name one audience or one resource")
    requested_type = _single(params, "requested_token_type")
    if requested_type is not None and requested_type != ACCESS_TOKEN_TYPE:
        raise TokenError(INVALID_REQUEST, f"requested_token_type: only {ACCESS_TOKEN_TYPE} is issued")
    subject_token = _single(params, "subject_token")
    subject_token_type = _single(params, "subject_token_type")
    if not subject_token:
        raise TokenError(INVALID_REQUEST, "the subject_token is missing")
    if not subject_token_type:
        raise TokenError(INVALID_REQUEST, "the subject_token_type is missing")
    return ExchangeRequest(subject_token=subject_token, subject_token_type=subject_token_type,
                           audience=_single(params, "audience"), resource=_single(params, "resource"),
                           scopes=tuple((_single(params, "scope") or "").split()))


def _single(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


class Target(NamedTuple):
    """Where a token is for: the application (``client``, the key of role grants and of
    ``token_exchange``) and the ``aud`` value the token carries."""

    client: str
    aud: str


def default_target(client: ClientPolicy) -> Target:
    """A request without ``resource``: the client's own default audience."""
    return Target(client.id, client.audience)


def resolve_resource(policy: Policy, client: ClientPolicy, resource: str, *,
                     exchange: bool = False) -> Target:
    """The target an RFC 8707 ``resource`` names, if ``client`` may have tokens for it.

    At the authorization and refresh grants (``exchange=False``) a client gets tokens for its
    own API only; reaching another application's API goes through token exchange, where the
    caller's ``token_exchange`` must list that application. Anything else: ``invalid_target``.
    """
    _check_resource_uri(resource)
    owner = policy.client_for_resource(resource)
    if owner is None:
        raise TokenError(INVALID_TARGET, "the resource is not known to this broker")
    if owner == client.id or (exchange and client.exchange_rule(owner) is not None):
        return Target(owner, resource)
    raise TokenError(INVALID_TARGET, "the client may not obtain tokens for this resource")


def _check_resource_uri(resource: object) -> None:
    """RFC 8707 §2: a ``resource`` is an absolute URI without a fragment (never empty)."""
    try:
        parts = urlsplit(resource) if isinstance(resource, str) else None
    except ValueError:  # e.g. "http://[": not a URI at all
        parts = None
    if parts is None or not parts.scheme or not parts.netloc or parts.fragment:
        raise TokenError(INVALID_TARGET, "resource must be an absolute URI without a fragment")


def exchange_target(policy: Policy, client: ClientPolicy,
                    request: ExchangeRequest) -> tuple[str | None, str | None]:
    """Where an exchange is towards, as :func:`decide_exchange` takes it: the audience (a
    client id) and the ``aud`` the token carries (None: that client's default). That is the
    ``audience`` as given, or the application owning the ``resource`` with that URI as ``aud``.

    Both may be given when they name the same application (RFC 8693 §2.1 allows both, and
    the token still has one audience: the resource); naming two is ``invalid_target``.
    """
    if request.resource is None:
        return request.audience, None
    target = resolve_resource(policy, client, request.resource, exchange=True)
    if request.audience is not None and request.audience not in (target.client, target.aud):
        raise TokenError(INVALID_TARGET, "one audience per token: the audience and the resource differ")
    return target.client, target.aud


def audience_allowed(policy: Policy, client: ClientPolicy, aud: str) -> bool:
    """Whether ``client`` could obtain a token for ``aud`` at the authorization endpoint now:
    its default audience, or a resource :func:`resolve_resource` gives it (a refresh asks this
    of its grant's audience, so a resource taken from the client ends its families)."""
    if aud == client.audience:
        return True
    try:
        resolve_resource(policy, client, aud)
    except TokenError:
        return False
    return True


def check_token_resource(resources: Sequence[str], audience: str) -> None:
    """RFC 8707 §2.2 at the token endpoint: ``resource`` names the audience of the token asked
    for. This broker issues one audience per token, fixed by the grant, so ``resource`` may be
    absent or that audience; anything else (or several) is ``invalid_target``."""
    if len(resources) > 1:
        raise TokenError(INVALID_TARGET, "a token is for one audience: send at most one resource")
    if resources:
        _check_resource_uri(resources[0])  # the client's default audience is an id, not a resource
        if resources[0] != audience:
            raise TokenError(INVALID_TARGET, "the resource is not the audience this grant was made for")


@dataclass(frozen=True)
class ExchangeGrant:
    """An allowed exchange: what the new access token for ``target`` says."""

    target: ClientPolicy
    aud: str
    actor: str
    scope: tuple[str, ...]
    organisation: str | None
    team: str
    roles: tuple[str, ...]
    acr: str | None
    auth_time: int | None
    act: Mapping[str, Any]
    sid: str | None
    amr: tuple[str, ...]
    #: The refresh family of the subject token, if any: ending it ends this token too.
    family: str | None
    #: The new token never outlives the token it was made from.
    not_after: int

    issued_token_type = ACCESS_TOKEN_TYPE

    def access_token_claims(self, *, issuer: str, subject: str, now: float, lifetime: int,
                            jti: str | None = None) -> dict[str, Any]:
        """Claims of the new RFC 9068 access token (sign with ``typ: at+jwt``). ``subject`` is
        :func:`idbroker.subjects.subject_for` of the person for :attr:`target`."""
        issued = int(now)
        claims: dict[str, Any] = {
            "iss": issuer, "sub": subject, "aud": self.aud, "client_id": self.actor, "azp": self.actor,
            "iat": issued, "exp": min(issued + lifetime, self.not_after),
            "jti": jti or secrets.token_urlsafe(16), "scope": " ".join(self.scope),
            "team": self.team, "roles": list(self.roles), "act": dict(self.act),
        }
        optional = {"organisation": self.organisation, "acr": self.acr, "auth_time": self.auth_time,
                    "sid": self.sid, "amr": list(self.amr) or None, "family": self.family}
        claims.update({name: value for name, value in optional.items() if value is not None})
        return claims


def decide_exchange(policy: Policy, subject_token_claims: Mapping[str, Any], actor_client: ClientPolicy,
                    requested_audience: str | None, requested_scopes: Iterable[str],
                    team_decision_scopes: Iterable[str], *, issuer: str, aud: str | None = None,
                    roles: Sequence[str] | None = None, now: float | None = None) -> ExchangeGrant:
    """Allow the exchange, or raise :class:`TokenError` with the RFC code.

    ``subject_token_claims`` come from :func:`~idbroker.tokens.introspection.verify_access_token`
    (signature, type, revocation); they are checked again here for expiry and issuer, and for
    being the caller's to exchange. ``requested_audience`` is a client id (the RFC 8693
    ``audience``, or :func:`resolve_resource`'s ``Target.client`` with its ``aud``).
    ``team_decision_scopes``: ``TeamDecision.scopes_at(level_of_acr(acr), audience)`` for the
    token's team, re-evaluated now. ``roles``: the team's roles for the target (default: the
    subject token's).
    """
    now = time.time() if now is None else now
    claims = subject_token_claims
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= now:
        raise TokenError(INVALID_GRANT, "the subject token has expired")
    if claims.get("iss") != issuer:
        raise TokenError(INVALID_GRANT, "the subject token was not issued by this broker")
    token_aud = single_audience(claims)
    if claims.get("client_id") != actor_client.id and token_aud not in actor_client.audience_values:
        raise TokenError(INVALID_GRANT, "the subject token was neither issued to nor meant for this client")
    team = claims.get("team")
    if not isinstance(team, str) or not team or not isinstance(claims.get("sub"), str):
        raise TokenError(INVALID_GRANT, "the subject token names no acting team")
    if not requested_audience:
        raise TokenError(INVALID_REQUEST, "name the audience or resource to exchange towards")
    target = policy.clients.get(requested_audience)
    if target is None:
        raise TokenError(INVALID_TARGET, "the audience is not known to this broker")
    rule = actor_client.exchange_rule(target.id)
    if rule is None:
        raise TokenError(INVALID_TARGET, "the client may not exchange tokens towards this audience")
    if aud is not None and aud not in target.audience_values:
        raise TokenError(INVALID_TARGET, "the resource does not belong to the audience")
    acr = claims.get("acr")
    if level_of_acr(acr) < target.minimum_level:
        raise TokenError(INVALID_GRANT, "the subject token's level is below what the audience requires")
    requested = tuple(dict.fromkeys(requested_scopes))
    allowed = frozenset(rule.scopes)
    beyond = [scope for scope in requested if scope not in allowed]
    if beyond:
        raise TokenError(INVALID_SCOPE, _scopes_beyond(target, beyond))
    granted = frozenset(team_decision_scopes)
    scope = tuple(s for s in (requested or rule.scopes) if s in granted)
    if not scope:
        raise TokenError(INVALID_SCOPE, "the acting team's roles grant none of these scopes on the audience")
    earlier = claims.get("act")
    act: dict[str, Any] = {"sub": actor_client.id}
    if isinstance(earlier, Mapping) and earlier:
        act["act"] = dict(earlier)
    subject_roles = claims.get("roles")
    kept_roles = roles if roles is not None else subject_roles if isinstance(subject_roles, list) else ()
    amr = claims.get("amr")
    auth_time = claims.get("auth_time")
    return ExchangeGrant(
        target=target, aud=aud or target.audience, actor=actor_client.id, scope=scope,
        organisation=claims.get("organisation") if isinstance(claims.get("organisation"), str) else None,
        team=team, roles=tuple(str(role) for role in kept_roles), acr=acr if isinstance(acr, str) else None,
        auth_time=auth_time if isinstance(auth_time, int) else None, act=act,
        sid=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
        family=claims.get("family") if isinstance(claims.get("family"), str) else None,
        amr=tuple(amr) if isinstance(amr, list) else (), not_after=int(exp))


def _scopes_beyond(target: ClientPolicy, beyond: Sequence[str]) -> str:
    """Which requested scopes an exchange rule does not allow, naming only the target's own
    (policy-checked names): the caller's text never goes into an ``error_description``
    (RFC 6749 §5.2 limits its characters, and it is logged)."""
    known = [scope for scope in beyond if scope in target.application_scope_names]
    unknown = len(beyond) - len(known)
    named = [", ".join(known)] if known else []
    if unknown:
        named.append(f"{unknown} scope{'s' if unknown > 1 else ''} {target.id} does not define")
    return f"not allowed in an exchange towards {target.id}: {'; '.join(named)}"


def check_subject_token(token: str, token_type: str, keys: KeyRing, issuer: str, revoked: RevocationCheck, *,
                        now: float | None = None, leeway: int = 0) -> dict[str, Any]:
    """The claims of an RFC 8693 ``subject_token``: only a live access token of this broker.

    Another ``subject_token_type`` is ``invalid_request`` (RFC 8693 §2.2.2); a token that is
    not live (expired, revoked, foreign, forged: see ``verify_access_token``) ``invalid_grant``.
    """
    if token_type != ACCESS_TOKEN_TYPE:
        raise TokenError(INVALID_REQUEST, "subject_token_type must be an access token")
    try:
        return verify_access_token(token, keys, issuer, revoked, now=now, leeway=leeway)
    except InactiveToken:
        raise TokenError(INVALID_GRANT, "the subject token is not an active access token of this broker") \
            from None
