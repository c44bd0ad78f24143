"""Level arithmetic: which level a login needs, which level it has, and what is missing.

Pure code: no web framework, no store, no clock of its own (callers pass ``now``). The
broker writes into its tokens only the level it can prove:

* the **required** level is the highest of the client's minimum, the minimum of the roles
  the person would use, and what the client asks for (``acr_values``, or ``acr`` in the
  ``claims`` parameter);
* the **achieved** level is the trusted upstream level, raised by the broker's own second
  factor (WebAuthn with user verification, or TOTP) on top of the upstream login to
  ``substantial``; ``high`` only where a trusted upstream says so or a policy names the
  combination explicitly.

Every result carries its reasons, for ``policy explain`` and the audit record.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from idbroker.assurance.levels import BUILTIN_VOCABULARY, Level


class FactorKind(StrEnum):
    """The broker's own factors, in the order a person is offered them (WebAuthn first)."""

    WEBAUTHN = "webauthn"
    TOTP = "totp"


#: Registered ``amr`` values (RFC 8176 §2); anything else an upstream IdP says is dropped,
#: so the broker never repeats a claim whose meaning nobody agreed on.
RFC8176_AMR = frozenset({
    "face", "fpt", "geo", "hwk", "iris", "kba", "mca", "mfa", "otp", "pin", "pop", "pwd",
    "rba", "retina", "sc", "sms", "swk", "tel", "user", "vbm", "wia",
})


class RequestError(ValueError):
    """The client's ``claims`` parameter is malformed: answer ``invalid_request``."""


class Unmeetable(ValueError):
    """The client made ``acr`` essential with only values the broker does not know:
    answer ``unmet_authentication_requirements``, never a weaker token."""


@dataclass(frozen=True)
class Requirement:
    """The level a login needs, why, and the values an essential ``acr`` request allows."""

    level: Level
    reasons: tuple[str, ...]
    #: Non-empty when the ``claims`` parameter made ``acr`` essential with listed values:
    #: then the token's ``acr`` must be one of them (OpenID Connect Core §5.5.1.1).
    essential_values: tuple[str, ...] = ()


def required_level(client_min: Level | None, role_min: Level | None,
                   acr_values: str | Sequence[str] | None,
                   claims_param: Mapping[str, Any] | str | None) -> Requirement:
    """The highest of the client's minimum, the roles' minimum and what the request asks.

    A list of ``acr`` values names alternatives, any of which would do, so the request asks
    for the weakest known one. Unknown ``acr_values`` are ignored (they are voluntary); an
    essential ``acr`` whose values are all unknown raises :class:`Unmeetable`.
    """
    level, reasons = Level.LOW, ["baseline: low"]
    essential: tuple[str, ...] = ()
    for name, wanted in (("the client's minimum", client_min), ("the roles' minimum", role_min)):
        if wanted is not None:
            reasons.append(f"{name}: {wanted.name.lower()}")
            level = max(level, wanted)
    asked = _split(acr_values)
    if asked:
        known = [BUILTIN_VOCABULARY[v] for v in asked if v in BUILTIN_VOCABULARY]
        if known:
            reasons.append(f"acr_values asks for at least {min(known).name.lower()}")
            level = max(level, min(known))
        else:
            reasons.append("acr_values names no known level: ignored (voluntary)")
    acr_request = _acr_claim_request(claims_param)
    if acr_request is not None:
        values = _claim_values(acr_request)
        known = [BUILTIN_VOCABULARY[v] for v in values if v in BUILTIN_VOCABULARY]
        is_essential = acr_request.get("essential") is True
        if is_essential and values and not known:
            raise Unmeetable("the claims parameter makes acr essential with no known value")
        if known:
            how = "an essential" if is_essential else "a voluntary"
            reasons.append(f"{how} acr claim asks for at least {min(known).name.lower()}")
            level = max(level, min(known))
        if is_essential and values:
            essential = tuple(v for v in values if v in BUILTIN_VOCABULARY)
    if essential:
        # The token must carry one of these values and never claim less than is required, so
        # only a listed value at or above the level counts: the weakest such one is needed.
        reachable = [BUILTIN_VOCABULARY[v] for v in essential if BUILTIN_VOCABULARY[v] >= level]
        if not reachable:
            raise Unmeetable(f"the claims parameter makes acr essential with only values below "
                             f"the required {level.name.lower()}")
        if min(reachable) > level:
            reasons.append(f"the essential acr values allow nothing below {min(reachable).name.lower()}")
            level = min(reachable)
    return Requirement(level, tuple(reasons), essential)


def _split(acr_values: str | Sequence[str] | None) -> list[str]:
    if not acr_values:
        return []
    if isinstance(acr_values, str):
        return acr_values.split()
    return [str(v) for v in acr_values]


def _acr_claim_request(claims_param: Mapping[str, Any] | str | None) -> Mapping[str, Any] | None:
    """The ``acr`` member of the ``id_token`` (or else ``userinfo``) claims request."""
    if claims_param is None or claims_param == "":
        return None
    if isinstance(claims_param, str):
        try:
            claims_param = json.loads(claims_param)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." thousands deep
            raise RequestError("the claims parameter is not JSON") from exc
    if not isinstance(claims_param, Mapping):
        raise RequestError("the claims parameter must be a JSON object")
    for target in ("id_token", "userinfo"):
        section = claims_param.get(target)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise RequestError(f"claims.{target} must be a JSON object")
        if "acr" in section:
            request = section["acr"]
            if request is None:
                return {}
            if not isinstance(request, Mapping):
                raise RequestError(f"claims.{target}.acr must be null or a JSON object")
            return request
    return None


def _claim_values(request: Mapping[str, Any]) -> list[str]:
    values: list[str] = []
    if "value" in request:
        if not isinstance(request["value"], str):
            raise RequestError("claims acr value must be a string")
        values.append(request["value"])
    if "values" in request:
        listed = request["values"]
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise RequestError("claims acr values must be a list of strings")
        values.extend(listed)
    return values


# -- what a login has ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FactorUse:
    """One successful use of a local factor during this login or SSO session."""

    kind: FactorKind
    at: int  #: epoch seconds of the verification
    factor_id: str = ""
    #: WebAuthn: the authenticator verified the user (PIN or biometric). Required to count.
    user_verified: bool = True
    #: WebAuthn: a multi-device (synced) credential, whose key can leave the hardware.
    backup_eligible: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "at": self.at, "factor_id": self.factor_id,
                "user_verified": self.user_verified, "backup_eligible": self.backup_eligible}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FactorUse:
        return cls(FactorKind(data["kind"]), int(data["at"]), str(data.get("factor_id", "")),
                   bool(data.get("user_verified", True)), bool(data.get("backup_eligible", False)))


@dataclass(frozen=True)
class Combination:
    """An upstream login of at least ``upstream_at_least`` plus fresh ``factors`` gives ``gives``."""

    upstream_at_least: Level
    factors: frozenset[FactorKind]
    gives: Level
    name: str = ""


#: The built-in rule: any upstream login (a knowledge factor at least) plus a possession
#: factor of the broker's own reaches substantial. ``high`` is never built in.
BUILTIN_COMBINATIONS: tuple[Combination, ...] = (
    Combination(Level.LOW, frozenset({FactorKind.WEBAUTHN}), Level.SUBSTANTIAL,
                "upstream login + WebAuthn with user verification"),
    Combination(Level.LOW, frozenset({FactorKind.TOTP}), Level.SUBSTANTIAL,
                "upstream login + TOTP"),
)


@dataclass(frozen=True)
class Achievement:
    """The level a login can prove, its ``amr`` values (RFC 8176), and why."""

    level: Level
    amr: tuple[str, ...]
    reasons: tuple[str, ...]


def amr_for(use: FactorUse) -> tuple[str, ...]:
    """RFC 8176 values for one local factor.

    WebAuthn: ``hwk`` for a device-bound key, ``swk`` for a synced passkey (backup eligible),
    and ``user`` (presence). User verification is required but the authenticator does not
    say whether it used a PIN or a biometric, so neither ``pin`` nor ``fpt`` is claimed.
    """
    if use.kind is FactorKind.TOTP:
        return ("otp",)
    return ("swk" if use.backup_eligible else "hwk", "user")


def achieved_level(upstream: Level, fresh_factors: Iterable[FactorUse],
                   combinations: Iterable[Combination] = (), *,
                   upstream_amr: Iterable[str] = ()) -> Achievement:
    """What the upstream level plus the fresh local factors prove.

    ``upstream`` is the level the policy trusts the upstream statement for (see
    :func:`idbroker.assurance.levels.upstream_level`); ``fresh_factors`` are the uses that
    still count (see :func:`usable_factors`); ``combinations`` are the policy's explicit
    extra rules, on top of :data:`BUILTIN_COMBINATIONS`.
    """
    uses = [u for u in fresh_factors if u.kind is not FactorKind.WEBAUTHN or u.user_verified]
    kinds = {u.kind for u in uses}
    level = upstream
    reasons = [f"upstream login: {upstream.name.lower()}"]
    for combo in (*BUILTIN_COMBINATIONS, *combinations):
        if upstream >= combo.upstream_at_least and combo.factors <= kinds and combo.gives > level:
            level = combo.gives
            reasons.append(f"{combo.name or 'policy combination'}: {combo.gives.name.lower()}")
    amr: list[str] = [v for v in dict.fromkeys(upstream_amr) if v in RFC8176_AMR]
    for use in uses:
        amr.extend(amr_for(use))
    if uses:
        amr.append("mfa")  # the upstream login and a local factor of another category
    return Achievement(level, tuple(dict.fromkeys(amr)), tuple(reasons))


def usable_factors(uses: Iterable[FactorUse], *, now: int, max_age: int | None = None,
                   not_before: int | None = None) -> list[FactorUse]:
    """The uses that still count: within ``max_age`` seconds, and not before ``not_before``
    (the start of a login with ``prompt=login``, which forces a fresh factor)."""
    result = []
    for use in uses:
        if max_age is not None and use.at < now - max_age:
            continue
        if not_before is not None and use.at < not_before:
            continue
        result.append(use)
    return result


# -- what to do about the difference ------------------------------------------------------------


class Outcome(StrEnum):
    SATISFIED = "satisfied"  #: issue tokens at the achieved level
    STEP_UP = "step_up"  #: ask one of ``offer`` (a factor the person has)
    ENROL = "enrol"  #: the person has no factor that would do: enrolment first
    UNMET = "unmet"  #: nothing the broker can ask reaches the level: refuse the client


@dataclass(frozen=True)
class Plan:
    outcome: Outcome
    required: Requirement
    achieved: Achievement
    #: Factor kinds that would close the gap, preferred first; for ENROL the kinds to enrol.
    offer: tuple[FactorKind, ...] = ()
    reason: str = ""


def plan_step_up(required: Requirement, *, upstream: Level, used: Iterable[FactorUse],
                 registered: Collection[FactorKind], combinations: Iterable[Combination] = (),
                 upstream_amr: Iterable[str] = ()) -> Plan:
    """Compare what is required with what the login has, and say what is missing.

    ``used`` are the usable factor uses (already filtered by :func:`usable_factors`), so a
    factor the person just gave is not asked again; ``registered`` are the kinds the person
    has enrolled.
    """
    combos = tuple(combinations)
    uses = list(used)
    achieved = achieved_level(upstream, uses, combos, upstream_amr=upstream_amr)
    if achieved.level >= required.level:
        return Plan(Outcome.SATISFIED, required, achieved, reason="the achieved level is enough")
    would_do = tuple(
        kind for kind in FactorKind
        if achieved_level(upstream, [*uses, FactorUse(kind, 0)], combos).level >= required.level
    )
    if not would_do:
        return Plan(Outcome.UNMET, required, achieved,
                    reason=f"no local factor raises {upstream.name.lower()} to "
                           f"{required.level.name.lower()}")
    available = tuple(kind for kind in would_do if kind in registered)
    if available:
        return Plan(Outcome.STEP_UP, required, achieved, available, "a registered factor closes the gap")
    return Plan(Outcome.ENROL, required, achieved, would_do, "the person has no factor that closes the gap")


def token_acr(achieved: Level, required: Requirement) -> str:
    """The ``acr`` to write into tokens: the achieved level, or — when the client made
    ``acr`` essential with a list — the strongest listed value the login proves.

    Never below the requirement: call it only after :func:`plan_step_up` said SATISFIED.
    """
    if achieved < required.level:
        raise ValueError("the achieved level is below the requirement: refuse, do not issue")
    if not required.essential_values or achieved.acr in required.essential_values:
        return achieved.acr
    proven = [v for v in required.essential_values
              if required.level <= BUILTIN_VOCABULARY[v] <= achieved]
    if not proven:
        raise ValueError("no essential acr value matches the achieved level")
    return max(proven, key=lambda v: BUILTIN_VOCABULARY[v])


# -- enrolment rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentDecision:
    allowed: bool
    reason: str  #: a machine reason when refused (see idbroker.assurance.factors.Reason)
    explanation: str


def may_enrol_first_factor(*, upstream: Level, has_factors: bool,
                           activation_valid: bool) -> EnrolmentDecision:
    """A first factor needs proof beyond the upstream password: a trusted upstream login at
    ``substantial`` or more, or a valid activation code an administrator issued to this
    person. A stolen password alone must not let an attacker enrol their own key.

    ``activation_valid``: the caller checked an activation code for this very person
    (:meth:`idbroker.assurance.activation.ActivationCodes.verify`).
    """
    if has_factors:
        return EnrolmentDecision(False, "has_factors",
                                 "the person already has a factor: adding one needs a fresh step-up")
    if upstream >= Level.SUBSTANTIAL:
        return EnrolmentDecision(True, "", f"trusted upstream login at {upstream.name.lower()}")
    if activation_valid:
        return EnrolmentDecision(True, "", "a valid activation code for this person")
    return EnrolmentDecision(False, "activation_required",
                             "the upstream login is below substantial and there is no activation code")


def may_change_factors(*, uses: Iterable[FactorUse], registered_ids: Collection[str], now: int,
                       within: int = 300) -> EnrolmentDecision:
    """Adding, renaming or removing a factor needs a step-up with one of the person's
    existing factors within the last ``within`` seconds."""
    for use in uses:
        fresh = now - within <= use.at <= now
        counts = use.kind is not FactorKind.WEBAUTHN or use.user_verified
        if fresh and counts and use.factor_id and use.factor_id in registered_ids:
            return EnrolmentDecision(True, "", f"step-up with an existing {use.kind.value} factor")
    return EnrolmentDecision(False, "step_up_required",
                             f"no step-up with an existing factor in the last {within} seconds")

