"""Level arithmetic: required level, achieved level, what to ask, the acr to issue, enrolment rules."""

from __future__ import annotations

import json

import pytest

from idbroker.assurance.levels import Level
from idbroker.assurance.stepup import (
    Combination,
    FactorKind,
    FactorUse,
    Outcome,
    RequestError,
    Unmeetable,
    achieved_level,
    may_change_factors,
    may_enrol_first_factor,
    plan_step_up,
    required_level,
    token_acr,
    usable_factors,
)

LOW, SUB, HIGH = Level.LOW, Level.SUBSTANTIAL, Level.HIGH
E_LOW, E_SUB, E_HIGH = LOW.acr, SUB.acr, HIGH.acr
WEBAUTHN = FactorUse(FactorKind.WEBAUTHN, 1000, "f-key")
TOTP = FactorUse(FactorKind.TOTP, 1000, "f-phone")


def essential(*values: str) -> dict[str, object]:
    return {"id_token": {"acr": {"essential": True, "values": list(values)}}}


@pytest.mark.parametrize(("client_min", "role_min", "acr_values", "claims", "expected"), [
    (None, None, None, None, LOW),
    (SUB, None, None, None, SUB),
    (None, SUB, None, None, SUB),
    (LOW, HIGH, None, None, HIGH),
    (None, None, E_SUB, None, SUB),
    (None, None, f"{E_HIGH} {E_SUB}", None, SUB),  # alternatives: the weakest listed will do
    (HIGH, None, E_SUB, None, HIGH),  # asking for less never lowers a minimum
    (None, None, "urn:unknown", None, LOW),  # voluntary and unknown: ignored
    (None, None, f"urn:unknown {E_HIGH}", None, HIGH),
    (None, None, "urn:etoegang:core:assurance-class:loa3", None, SUB),
    (None, None, None, essential(E_HIGH), HIGH),
    (None, None, None, {"id_token": {"acr": {"value": E_SUB}}}, SUB),  # voluntary claim
    (None, None, None, {"userinfo": {"acr": {"essential": True, "values": [E_SUB]}}}, SUB),
    (None, None, None, {"id_token": {"acr": None}}, LOW),
    (None, None, None, {"id_token": {"acr": {"essential": True}}}, LOW),
    (None, None, None, json.dumps(essential(E_SUB)), SUB),  # the parameter as the client sent it
    (None, None, E_SUB, essential(E_HIGH), HIGH),
    (None, None, None, essential(E_LOW, E_HIGH), LOW),
    (SUB, None, None, essential(E_LOW, E_HIGH), HIGH),  # low may not be claimed, so high is needed
    (None, SUB, E_LOW, essential(E_LOW, E_SUB), SUB),
])
def test_required_level(client_min: Level | None, role_min: Level | None, acr_values: str | None,
                        claims: object, expected: Level) -> None:
    assert required_level(client_min, role_min, acr_values, claims).level is expected  # type: ignore[arg-type]


def test_the_requirement_says_why() -> None:
    requirement = required_level(SUB, None, E_HIGH, None)
    assert "the client's minimum: substantial" in requirement.reasons
    assert "acr_values asks for at least high" in requirement.reasons


@pytest.mark.parametrize(("client_min", "role_min", "acr_values", "claims"), [
    (None, None, None, essential("urn:example:super-strong")),  # only unknown values
    (SUB, SUB, E_LOW, essential(E_LOW)),  # only values below what is required
    (None, None, E_SUB, essential(E_LOW)),
    (None, HIGH, None, essential(E_LOW, E_SUB)),
])
def test_an_essential_acr_the_token_could_not_truthfully_carry_cannot_be_met(
        client_min: Level | None, role_min: Level | None, acr_values: str | None, claims: object) -> None:
    with pytest.raises(Unmeetable):
        required_level(client_min, role_min, acr_values, claims)  # type: ignore[arg-type]


@pytest.mark.parametrize(("client_min", "claims", "achieved", "acr"), [
    (SUB, essential(E_LOW, E_HIGH), HIGH, E_HIGH),
    (None, essential(E_LOW, E_HIGH), SUB, E_LOW),  # the strongest listed value it proves
    (None, essential(E_SUB, E_HIGH), HIGH, E_HIGH),
])
def test_a_satisfied_essential_acr_always_has_a_value_to_carry(client_min: Level | None, claims: object,
                                                                achieved: Level, acr: str) -> None:
    required = required_level(client_min, None, None, claims)  # type: ignore[arg-type]
    assert achieved >= required.level
    assert token_acr(achieved, required) == acr


@pytest.mark.parametrize("claims", ["{not json", "[]", {"id_token": []}, {"id_token": {"acr": "x"}},
                                    {"id_token": {"acr": {"values": "x"}}},
                                    {"id_token": {"acr": {"value": 3}}}])
def test_a_malformed_claims_parameter_is_an_invalid_request(claims: object) -> None:
    with pytest.raises(RequestError):
        required_level(None, None, None, claims)  # type: ignore[arg-type]


@pytest.mark.parametrize(("upstream", "factors", "combinations", "expected"), [
    (LOW, [], (), LOW),
    (LOW, [TOTP], (), SUB),
    (LOW, [WEBAUTHN], (), SUB),
    (LOW, [WEBAUTHN, TOTP], (), SUB),  # two local factors: still no high without a policy saying so
    (SUB, [WEBAUTHN], (), SUB),  # a local factor never pushes a substantial login to high by itself
    (HIGH, [], (), HIGH),  # a trusted upstream high stays high
    (SUB, [WEBAUTHN], (Combination(SUB, frozenset({FactorKind.WEBAUTHN}), HIGH, "policy"),), HIGH),
    (LOW, [WEBAUTHN], (Combination(SUB, frozenset({FactorKind.WEBAUTHN}), HIGH, "policy"),), SUB),
    (SUB, [TOTP], (Combination(SUB, frozenset({FactorKind.WEBAUTHN}), HIGH, "policy"),), SUB),
    (LOW, [FactorUse(FactorKind.WEBAUTHN, 1000, "f", user_verified=False)], (), LOW),  # no UV: no factor
])
def test_achieved_level(upstream: Level, factors: list[FactorUse], combinations: tuple[Combination, ...],
                        expected: Level) -> None:
    assert achieved_level(upstream, factors, combinations).level is expected


@pytest.mark.parametrize(("upstream_amr", "factors", "expected"), [
    (["pwd"], [], ("pwd",)),
    (["pwd"], [TOTP], ("pwd", "otp", "mfa")),
    (["pwd"], [WEBAUTHN], ("pwd", "hwk", "user", "mfa")),
    (["pwd", "x-vendor", "pwd"], [FactorUse(FactorKind.WEBAUTHN, 1, "f", backup_eligible=True)],
     ("pwd", "swk", "user", "mfa")),
    ([], [WEBAUTHN, TOTP], ("hwk", "user", "otp", "mfa")),
])
def test_amr_values(upstream_amr: list[str], factors: list[FactorUse], expected: tuple[str, ...]) -> None:
    assert achieved_level(LOW, factors, upstream_amr=upstream_amr).amr == expected


def test_freshness_max_age_and_prompt_login() -> None:
    uses = [FactorUse(FactorKind.TOTP, 1000, "a"), FactorUse(FactorKind.WEBAUTHN, 1500, "b")]
    assert usable_factors(uses, now=2000) == uses
    assert usable_factors(uses, now=2000, max_age=600) == uses[1:]
    assert usable_factors(uses, now=2000, max_age=0) == []
    assert usable_factors(uses, now=2000, not_before=1200) == uses[1:]  # prompt=login at 1200


@pytest.mark.parametrize(("required", "upstream", "used", "registered", "outcome", "offer"), [
    (SUB, SUB, [], {FactorKind.WEBAUTHN}, Outcome.SATISFIED, ()),
    (SUB, LOW, [], {FactorKind.WEBAUTHN, FactorKind.TOTP}, Outcome.STEP_UP,
     (FactorKind.WEBAUTHN, FactorKind.TOTP)),
    (SUB, LOW, [], {FactorKind.TOTP}, Outcome.STEP_UP, (FactorKind.TOTP,)),
    (SUB, LOW, [TOTP], {FactorKind.TOTP}, Outcome.SATISFIED, ()),  # only the missing part is asked
    (SUB, LOW, [], set(), Outcome.ENROL, (FactorKind.WEBAUTHN, FactorKind.TOTP)),
    (HIGH, LOW, [], {FactorKind.WEBAUTHN}, Outcome.UNMET, ()),
    (HIGH, SUB, [WEBAUTHN], {FactorKind.WEBAUTHN}, Outcome.UNMET, ()),
    (LOW, LOW, [], set(), Outcome.SATISFIED, ()),
])
def test_plan(required: Level, upstream: Level, used: list[FactorUse], registered: set[FactorKind],
              outcome: Outcome, offer: tuple[FactorKind, ...]) -> None:
    requirement = required_level(required, None, None, None)
    plan = plan_step_up(requirement, upstream=upstream, used=used, registered=registered)
    assert (plan.outcome, plan.offer) == (outcome, offer)


def test_plan_with_a_policy_combination_for_high() -> None:
    combo = Combination(SUB, frozenset({FactorKind.WEBAUTHN}), HIGH, "trusted IdP + security key")
    requirement = required_level(HIGH, None, None, None)
    plan = plan_step_up(requirement, upstream=SUB, used=[], registered={FactorKind.WEBAUTHN, FactorKind.TOTP},
                        combinations=[combo])
    assert (plan.outcome, plan.offer) == (Outcome.STEP_UP, (FactorKind.WEBAUTHN,))
    done = plan_step_up(requirement, upstream=SUB, used=[WEBAUTHN], registered={FactorKind.WEBAUTHN},
                        combinations=[combo])
    assert done.outcome is Outcome.SATISFIED and done.achieved.level is HIGH
    assert "trusted IdP + security key: high" in done.achieved.reasons


@pytest.mark.parametrize(("achieved", "requirement", "expected"), [
    (SUB, required_level(SUB, None, None, None), E_SUB),
    (HIGH, required_level(SUB, None, None, None), E_HIGH),  # achieved, not just required
    (HIGH, required_level(None, None, None, essential(E_SUB)), E_SUB),  # OIDC: one of the asked values
    (HIGH, required_level(None, None, None, essential(E_SUB, E_HIGH)), E_HIGH),
    (SUB, required_level(None, None, None, essential(E_SUB, "urn:etoegang:core:assurance-class:loa3")),
     E_SUB),
])
def test_token_acr(achieved: Level, requirement: object, expected: str) -> None:
    assert token_acr(achieved, requirement) == expected  # type: ignore[arg-type]


def test_token_acr_never_below_the_requirement() -> None:
    with pytest.raises(ValueError, match="below"):
        token_acr(LOW, required_level(SUB, None, None, None))


@pytest.mark.parametrize(("upstream", "has_factors", "activation", "allowed", "reason"), [
    (LOW, False, False, False, "activation_required"),  # a stolen password alone enrols nothing
    (LOW, False, True, True, ""),
    (SUB, False, False, True, ""),  # a trusted strong upstream login
    (HIGH, False, False, True, ""),
    (SUB, True, True, False, "has_factors"),  # adding one more needs a step-up instead
])
def test_may_enrol_first_factor(upstream: Level, has_factors: bool, activation: bool, allowed: bool,
                                reason: str) -> None:
    decision = may_enrol_first_factor(upstream=upstream, has_factors=has_factors, activation_valid=activation)
    assert (decision.allowed, decision.reason) == (allowed, reason)


@pytest.mark.parametrize(("uses", "now", "allowed"), [
    ([FactorUse(FactorKind.WEBAUTHN, 1000, "f-key")], 1200, True),
    ([FactorUse(FactorKind.TOTP, 1000, "f-phone")], 1300, True),
    ([FactorUse(FactorKind.WEBAUTHN, 1000, "f-key")], 1301, False),  # too long ago
    ([FactorUse(FactorKind.WEBAUTHN, 1000, "f-new")], 1100, False),  # not an existing factor
    ([FactorUse(FactorKind.WEBAUTHN, 1000, "f-key", user_verified=False)], 1100, False),
    ([], 1000, False),
])
def test_may_change_factors(uses: list[FactorUse], now: int, allowed: bool) -> None:
    decision = may_change_factors(uses=uses, registered_ids={"f-key", "f-phone"}, now=now)
    assert decision.allowed is allowed
    assert decision.reason == ("" if allowed else "step_up_required")


def test_factor_uses_survive_the_store() -> None:
    use = FactorUse(FactorKind.WEBAUTHN, 1234, "f-key", True, True)
    assert FactorUse.from_dict(json.loads(json.dumps(use.to_dict()))) == use
