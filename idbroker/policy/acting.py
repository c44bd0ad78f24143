"""Who acts for which team in one authorization request, and what that gives.

Pure domain code: the login flow asks :func:`acting_team` once the person is known and
:func:`granted_scopes` once the achieved level is known. Tokens name exactly one acting
organisation and team, so a person in several teams that grant on the client chooses
(remembered per client); a person in none gets nothing from a client that only roles can
open.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from idbroker.assurance.levels import Level
from idbroker.policy.evaluate import Decision, PersonFacts, TeamDecision
from idbroker.policy.model import ClientPolicy, Policy
from idbroker.upstream.base import UpstreamIdentity


@dataclass(frozen=True)
class ActsFor:
    """The team this request acts for; ``None`` for a client that needs no role (identity only)."""

    team: TeamDecision | None
    organisation: str


@dataclass(frozen=True)
class MustChoose:
    """Several teams grant on this client and none is (still) chosen for it."""

    teams: tuple[TeamDecision, ...]


@dataclass(frozen=True)
class NoRole:
    """The client opens only through roles, and the person holds none for it now."""

    reason: str


def evaluate_login(policy: Policy, identity: Mapping[str, Any], person: str, client_id: str,
                   now: datetime) -> Decision:
    """The policy's decision for the session's person (as their IdP described them) and client."""
    facts = PersonFacts.from_identity(UpstreamIdentity.from_dict(identity), person_id=person)
    return policy.evaluate(facts, client_id, now)


def acting_team(decision: Decision, client: ClientPolicy, *, remembered: str | None,
                choose_again: bool = False) -> ActsFor | MustChoose | NoRole:
    """The team for this request: the only candidate, or the one remembered for the client
    while it still is one (unless the person asked to choose again), else a choice."""
    candidates = decision.teams_for_client
    organisation = decision.person.organisation
    if not candidates:
        if client.application_scope_names:
            inactive = "; ".join(item.reason for item in decision.inactive) or "no team grants it"
            return NoRole(f"no role in {client.id} now ({inactive})")
        return ActsFor(None, organisation)
    if len(candidates) == 1 and not choose_again:
        return ActsFor(decision.teams[candidates[0]], organisation)
    if remembered in candidates and not choose_again:
        return ActsFor(decision.teams[remembered], organisation)
    return MustChoose(tuple(decision.teams[team_id] for team_id in candidates))


def role_level(team: TeamDecision | None, audience: str, requested: Iterable[str]) -> Level | None:
    """The level the roles the person would use need: per requested scope the lowest level of a
    role of the team that grants it, and the highest of those (``None``: no role is used)."""
    if team is None:
        return None
    needed: Level | None = None
    for scope in requested:
        levels = [role.min_level for role in team.role_objects
                  if scope in role.grants.get(audience, frozenset())]
        if levels and (needed is None or min(levels) > needed):
            needed = min(levels)
    return needed


def granted_scopes(requested: Iterable[str], client: ClientPolicy, team: TeamDecision | None,
                   achieved: Level) -> list[str]:
    """Requested identity scopes the client may have, plus requested application scopes that
    the team's roles grant at the achieved level; in the request's order."""
    allowed = team.scopes_at(achieved, client.id) if team is not None else frozenset()
    granted = []
    for scope in dict.fromkeys(requested):
        if scope in client.scopes or (scope in client.application_scope_names and scope in allowed):
            granted.append(scope)
    return granted


def token_roles(team: TeamDecision | None, audience: str, achieved: Level) -> list[str]:
    """The roles to name in a token: those of the acting team that grant on its audience and
    whose minimum level the login reached (an API may decide on a role name alone)."""
    if team is None:
        return []
    return [role.id for role in team.role_objects if audience in role.grants and role.min_level <= achieved]
