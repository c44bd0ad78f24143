"""The factor domain (idbroker.assurance) built once per broker, and the level decision.

No Flask here: :func:`decide` says, for one authorization request and one SSO session,
what the login needs, what it has and what to ask; the views act on it.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from idbroker.assurance.activation import ActivationCodes
from idbroker.assurance.factors import FactorRefused, FactorRegistry
from idbroker.assurance.levels import Level
from idbroker.assurance.stepup import (
    FactorUse,
    Plan,
    RequestError,
    Requirement,
    plan_step_up,
    required_level,
    usable_factors,
)
from idbroker.assurance.totp import TotpFactors
from idbroker.assurance.webauthn import WebAuthnFactors
from idbroker.ratelimit import RateLimiter
from idbroker.sessions import LoginTransaction, SsoSession

log = logging.getLogger("idbroker")
security_log = logging.getLogger("idbroker.security")


class FactorServices:
    """Registry, TOTP, WebAuthn, activation codes and the attempt limiter of one broker."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        store = broker.store
        self.registry = FactorRegistry(store)
        self.totp = TotpFactors(store, self.registry, broker.keys.secrets["factor_key"],
                                issuer_name="idbroker")
        self.webauthn = WebAuthnFactors(store, self.registry, issuer=broker.settings.issuer,
                                        rp_name="idbroker")
        self.activation = ActivationCodes(store)
        self.limiter = RateLimiter(store, purpose="factor")


def requirement(policy: Any, params: dict[str, str], role_min: Level | None = None) -> Requirement:
    """The level the request needs: client minimum, roles' minimum, ``acr_values``, ``claims``.

    ``role_min`` is the minimum of the roles the person would use (see
    :func:`idbroker.policy.acting.role_level`); unknown before the upstream login.
    Raises :class:`idbroker.assurance.stepup.RequestError` (bad ``claims``) or
    :class:`~idbroker.assurance.stepup.Unmeetable`.
    """
    client = policy.clients.get(params.get("client_id", ""))
    client_min = getattr(client, "minimum_level", None)
    return required_level(client_min, role_min, params.get("acr_values"), params.get("claims"))


_SECONDS = re.compile(r"[0-9]{1,10}")


def max_age(params: dict[str, str]) -> int | None:
    """The request's ``max_age`` in seconds; None when absent or sent without a value (RFC 6749
    §3.1). Anything but ASCII digits (``²`` passes ``str.isdigit``, and ``int`` refuses 5,000
    digits) is :class:`~idbroker.assurance.stepup.RequestError`: ``/authorize`` answers
    ``invalid_request`` before any login, so later steps only see valid values."""
    raw = params.get("max_age")
    if not raw:
        return None
    if not _SECONDS.fullmatch(raw):
        raise RequestError("max_age must be a number of seconds")
    return int(raw)


def prompt_login(params: dict[str, str]) -> bool:
    """``prompt=login``: the client wants the person to log in again, now."""
    return "login" in params.get("prompt", "").split()


def fresh_uses(session: SsoSession, params: dict[str, str], *, now: int,
               txn: LoginTransaction | None = None) -> list[FactorUse]:
    """The session's factor uses that count for this request.

    ``max_age`` and ``prompt=login`` (the transaction's start) limit them; a factor given
    during this very transaction always counts, so ``max_age=0`` cannot loop.
    """
    uses = [FactorUse.from_dict(u) for u in session.factor_uses]
    not_before = int(txn.created_at) if txn is not None and prompt_login(params) else None
    kept = usable_factors(uses, now=now, max_age=max_age(params), not_before=not_before)
    if txn is not None:
        kept += [u for u in uses if u.at >= int(txn.created_at) and u not in kept]
    return kept


@dataclass(frozen=True)
class Decision:
    plan: Plan
    upstream: Level
    uses: list[FactorUse]


def decide(services: FactorServices, session: SsoSession, params: dict[str, str], required: Requirement, *,
           txn: LoginTransaction | None = None, now: int | None = None) -> Decision:
    now = int(time.time()) if now is None else now
    upstream = Level.from_name(session.level)
    uses = fresh_uses(session, params, now=now, txn=txn)
    plan = plan_step_up(required, upstream=upstream, used=uses,
                        registered=services.registry.kinds(session.person),
                        upstream_amr=session.identity.get("amr") or ())
    return Decision(plan, upstream, uses)


def security_event(refused: FactorRefused | None, *, what: str, person: str | None, ip: str | None,
                   level: int = logging.WARNING, **extra: Any) -> None:
    """A refusal worth the security log's attention (possible attack), without codes or
    secrets. The audit trail records the same refusals itself (the step-up views call
    :func:`idbroker.web.audit_refusal`); this line is for the operators' monitoring."""
    reason = refused.reason.value if refused is not None else what
    details = " ".join(f"{k}={v}" for k, v in sorted(extra.items()))
    security_log.log(level, "security event %s reason=%s person=%s ip=%s %s", what, reason, person, ip,
                     details)
