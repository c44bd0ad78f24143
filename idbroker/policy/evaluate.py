"""Evaluation: (person, client, now) -> :class:`Decision`, pure and fast.

The policy is indexed once, when it is loaded, by what an upstream login can show:
(organisation, group), (organisation, attribute, value), (organisation, subject) and
(organisation, e-mail). Evaluating a login looks up only the person's own groups,
attributes, subject and e-mail, so its cost grows with that person's memberships and not
with the size of the chain. A team only ever takes members from its own organisation's
IdP: another organisation's IdP cannot make anyone a member of it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from idbroker.assurance.levels import Level
from idbroker.policy.model import moment_end, moment_start
from idbroker.policy.rota import AMSTERDAM, CompiledRota, minute_of_week

if TYPE_CHECKING:
    from idbroker.policy.model import MemberRule, Policy, Team
    from idbroker.upstream.base import UpstreamIdentity


class UnknownClient(KeyError):
    """The policy has no client with this id."""


class NotAMember(LookupError):
    """The person is not (now) a member of the team they want to act for."""


@dataclass(frozen=True, slots=True)
class PersonFacts:
    """What an upstream login tells the policy about a person (after attribute mapping).

    ``person_id`` is the broker's stable person identifier; tokens carry it so every action
    is traceable to the person. Unset, it is ``<organisation>/<subject>``.
    """

    organisation: str
    subject: str
    email: str | None = None
    groups: frozenset[str] = frozenset()
    attributes: Mapping[str, Any] = field(default_factory=dict)
    person_id: str = ""

    def __post_init__(self) -> None:
        if not self.person_id:
            object.__setattr__(self, "person_id", f"{self.organisation}/{self.subject}")
        if not isinstance(self.groups, frozenset):
            object.__setattr__(self, "groups", frozenset(self.groups))

    @classmethod
    def from_identity(cls, identity: UpstreamIdentity, *, person_id: str = "") -> PersonFacts:
        """From a connector's normalised identity (``email`` and ``groups`` attributes)."""
        attributes = dict(identity.attributes)
        groups = attributes.get("groups") or ()
        if isinstance(groups, str):
            groups = (groups,)
        email = attributes.get("email")
        return cls(organisation=identity.organisation, subject=identity.subject,
                   email=email if isinstance(email, str) else None, groups=frozenset(groups),
                   attributes=attributes, person_id=person_id)


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRole:
    team: str
    id: str
    name: str
    min_level: Level
    #: audience (client id) -> application scopes
    grants: Mapping[str, frozenset[str]]
    source: str | None


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRule:
    """One member rule of one team, ready to be checked against a moment."""

    team: str
    organisation: str
    index: int
    kind: str  # group | attribute | persons
    description: str
    roles: tuple[CompiledRole, ...]
    starts: float | None
    ends: float | None
    rota: CompiledRota | None
    source: str | None
    #: audience -> scopes over all of ``roles`` (precomputed: most teams hold by one rule)
    grants: Mapping[str, frozenset[str]]
    #: audience -> the highest min_level of ``roles`` that grant on it
    levels: Mapping[str, Level]

    @property
    def label(self) -> str:
        return f"team '{self.team}' member rule #{self.index + 1} ({self.description})"

    def inactive_reason(self, timestamp: float, minute: int | None) -> str | None:
        """Why this rule does not hold at the moment, as a code (``None``: it holds)."""
        if self.starts is not None and timestamp < self.starts:
            return _NOT_YET
        if self.ends is not None and timestamp >= self.ends:
            return _EXPIRED
        if self.rota is not None and minute is not None and not self.rota.on_duty_at(minute):
            return _OFF_DUTY
        return None

    def explain_reason(self, code: str) -> str:
        if code == _NOT_YET:
            return f"not yet valid (from {_when(self.starts)})"
        if code == _EXPIRED:
            return f"no longer valid (until {_when(self.ends)})"
        assert self.rota is not None
        return f"off duty per rota '{self.rota.id}' ({self.rota.describe()})"


_NOT_YET, _EXPIRED, _OFF_DUTY = "not-yet-valid", "expired", "off-duty"


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp or 0, AMSTERDAM).isoformat(timespec="minutes")


@dataclass(frozen=True, slots=True)
class InactiveMembership:
    """A rule names the person but does not hold at the moment, and why."""

    rule: CompiledRule
    code: str  # not-yet-valid | expired | off-duty

    @property
    def reason(self) -> str:
        return self.rule.explain_reason(self.code)


@dataclass(frozen=True, slots=True)
class Grant:
    """One scope on one audience, and the chain of rules that gave it."""

    audience: str
    scope: str
    team: str
    role: CompiledRole
    rule: CompiledRule

    def chain(self) -> str:
        source = f" [{self.role.source}]" if self.role.source else ""
        rule_source = f" [{self.rule.source}]" if self.rule.source else ""
        level = self.role.min_level.name.lower()
        return (f"{self.audience}:{self.scope} <- role '{self.role.id}' (min {level}){source} "
                f"<- {self.rule.label}{rule_source}")


@dataclass(frozen=True, slots=True)
class TeamDecision:
    """What the person may do when acting for one team (tokens name exactly one)."""

    organisation: str
    team: str
    team_name: str
    client: str
    #: The member rules that make the person a member now.
    rules: tuple[CompiledRule, ...]
    #: Roles the person holds in this team now (in the team's order).
    role_objects: tuple[CompiledRole, ...]
    #: audience -> application scopes, over all audiences this team's roles grant.
    scopes: Mapping[str, frozenset[str]]
    #: For this decision's client: max of the client's minimum and its granting roles'.
    required_level: Level

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(role.id for role in self.role_objects)

    def roles_for(self, audience: str) -> tuple[str, ...]:
        """The roles that grant anything on ``audience`` (for a minimal ``roles`` claim)."""
        return tuple(role.id for role in self.role_objects if audience in role.grants)

    def scopes_for(self, audience: str) -> frozenset[str]:
        return self.scopes.get(audience, frozenset())

    def scopes_at(self, level: Level, audience: str) -> frozenset[str]:
        """The scopes on ``audience`` whose roles are satisfied by ``level``."""
        found: set[str] = set()
        for role in self.role_objects:
            if role.min_level <= level:
                found |= role.grants.get(audience, frozenset())
        return frozenset(found)

    def grants(self) -> tuple[Grant, ...]:
        """Every (audience, scope) with each role and rule that gives it: for explain/audit."""
        result: list[Grant] = []
        for rule in self.rules:
            for role in rule.roles:
                for audience, scopes in role.grants.items():
                    result += [Grant(audience, scope, self.team, role, rule) for scope in sorted(scopes)]
        return tuple(result)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one evaluation: teams, roles, scopes, required level, and reasons."""

    person: PersonFacts
    client: str
    at: datetime
    teams: Mapping[str, TeamDecision]
    inactive: tuple[InactiveMembership, ...]
    client_level: Level

    def for_team(self, team_id: str) -> TeamDecision:
        """The decision when the person acts for ``team_id``; refused if not a member now."""
        try:
            return self.teams[team_id]
        except KeyError:
            raise NotAMember(team_id) from None

    @property
    def team_ids(self) -> tuple[str, ...]:
        return tuple(self.teams)

    @property
    def teams_for_client(self) -> tuple[str, ...]:
        """The teams whose roles grant anything on this client: the ones to choose between."""
        return tuple(team_id for team_id, team in self.teams.items() if team.scopes.get(self.client))

    @property
    def scopes(self) -> Mapping[str, frozenset[str]]:
        """Union over all current teams (what the person could get acting for any one)."""
        merged: dict[str, set[str]] = defaultdict(set)
        for team in self.teams.values():
            for audience, scopes in team.scopes.items():
                merged[audience] |= scopes
        return {audience: frozenset(scopes) for audience, scopes in merged.items()}

    @property
    def required_level(self) -> Level:
        """The highest level any of the person's teams needs for this client."""
        return max((team.required_level for team in self.teams.values()), default=self.client_level)

    def reasons(self) -> tuple[str, ...]:
        lines = [grant.chain() for team in self.teams.values() for grant in team.grants()]
        lines += [f"{item.rule.label}: {item.reason}" for item in self.inactive]
        return tuple(lines)


_EMPTY: tuple[CompiledRule, ...] = ()


class PolicyIndex:
    """The policy, compiled for evaluation. Built once per policy version."""

    def __init__(self) -> None:
        self.by_group: dict[tuple[str, str], tuple[CompiledRule, ...]] = {}
        self.by_attribute: dict[tuple[str, str, str], tuple[CompiledRule, ...]] = {}
        self.by_subject: dict[tuple[str, str], tuple[CompiledRule, ...]] = {}
        self.by_email: dict[tuple[str, str], tuple[CompiledRule, ...]] = {}
        #: Attribute names some rule of the organisation looks at.
        self.attribute_names: dict[str, tuple[str, ...]] = {}
        self.team_names: dict[str, str] = {}
        self.client_levels: dict[str, Level] = {}
        self.domains: dict[str, Any] = {}
        #: RFC 8707 resource URI -> the client (application) whose API it names.
        self.resources: dict[str, str] = {}
        #: (audience, scope) -> roles that grant it, for "why not" in explain.
        self.granted_by: dict[tuple[str, str], tuple[CompiledRole, ...]] = {}
        self.rules_by_team: dict[str, tuple[CompiledRule, ...]] = {}
        self.roles_by_team: dict[str, tuple[CompiledRole, ...]] = {}

    @classmethod
    def build(cls, policy: Policy) -> PolicyIndex:
        index = cls()
        for organisation in policy.organisations.values():
            for domain in organisation.domains:
                index.domains.setdefault(domain, organisation)
        index.client_levels = {client.id: client.minimum_level for client in policy.clients.values()}
        index.resources = {uri: client.id for client in policy.clients.values()
                           for uri in client.resource_uris}
        rotas = {rota.id: CompiledRota.build(rota.id, rota.name, (w.weekly for w in rota.windows))
                 for rota in policy.rotas.values()}
        groups: dict[tuple[str, str], list[CompiledRule]] = defaultdict(list)
        attributes: dict[tuple[str, str, str], list[CompiledRule]] = defaultdict(list)
        subjects: dict[tuple[str, str], list[CompiledRule]] = defaultdict(list)
        emails: dict[tuple[str, str], list[CompiledRule]] = defaultdict(list)
        attribute_names: dict[str, set[str]] = defaultdict(set)
        granted_by: dict[tuple[str, str], list[CompiledRole]] = defaultdict(list)
        for team in policy.teams.values():
            index.team_names[team.id] = team.name
            roles = _compile_roles(team, policy.sources)
            index.roles_by_team[team.id] = tuple(roles.values())
            for role in roles.values():
                for audience, scopes in role.grants.items():
                    for scope in scopes:
                        granted_by[(audience, scope)].append(role)
            compiled_rules = []
            for position, rule in enumerate(team.members):
                compiled = _compile_rule(team, position, rule, roles, rotas, policy.sources)
                compiled_rules.append(compiled)
                org = team.organisation
                if rule.group is not None:
                    groups[(org, rule.group)].append(compiled)
                elif rule.attribute is not None:
                    attributes[(org, rule.attribute.name, rule.attribute.equals)].append(compiled)
                    attribute_names[org].add(rule.attribute.name)
                else:
                    for subject in dict.fromkeys(rule.subjects):
                        subjects[(org, subject)].append(compiled)
                    for email in dict.fromkeys(rule.emails):
                        emails[(org, email)].append(compiled)
            index.rules_by_team[team.id] = tuple(compiled_rules)
        index.by_group = {key: tuple(value) for key, value in groups.items()}
        index.by_attribute = {key: tuple(value) for key, value in attributes.items()}
        index.by_subject = {key: tuple(value) for key, value in subjects.items()}
        index.by_email = {key: tuple(value) for key, value in emails.items()}
        index.attribute_names = {org: tuple(sorted(names)) for org, names in attribute_names.items()}
        index.granted_by = {key: tuple(value) for key, value in granted_by.items()}
        return index

    def candidate_rules(self, person: PersonFacts) -> list[CompiledRule]:
        """Every rule that names this person, whatever the moment (no duplicates)."""
        org = person.organisation
        found: list[CompiledRule] = []
        for group in person.groups:
            found += self.by_group.get((org, group), _EMPTY)
        names = self.attribute_names.get(org)
        if names:
            for name in names:
                value = person.attributes.get(name)
                if value is None:
                    continue
                for item in (value,) if isinstance(value, str | int | bool) else value:
                    found += self.by_attribute.get((org, name, str(item)), _EMPTY)
        found += self.by_subject.get((org, person.subject), _EMPTY)
        if person.email:
            found += self.by_email.get((org, person.email.lower()), _EMPTY)
        if len(found) > 1:
            found = list({id(rule): rule for rule in found}.values())
        return found

    def evaluate(self, person: PersonFacts, client_id: str, now: datetime) -> Decision:
        client_level = self.client_levels.get(client_id)
        if client_level is None:
            raise UnknownClient(client_id)
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        timestamp = now.timestamp()
        minute: int | None = None
        active: dict[str, list[CompiledRule]] = {}
        inactive: list[InactiveMembership] = []
        for rule in self.candidate_rules(person):
            if rule.rota is not None and minute is None:
                minute = minute_of_week(now)
            code = rule.inactive_reason(timestamp, minute)
            if code is None:
                found = active.get(rule.team)
                if found is None:
                    active[rule.team] = [rule]
                else:
                    found.append(rule)
            else:
                inactive.append(InactiveMembership(rule, code))
        teams = {}
        for team_id, rules in active.items():
            if len(rules) == 1:  # the common case: everything was precomputed per rule
                rule = rules[0]
                level = rule.levels.get(client_id, client_level)
                teams[team_id] = TeamDecision(
                    person.organisation, team_id, self.team_names[team_id], client_id, (rule,), rule.roles,
                    rule.grants, level if level > client_level else client_level)
            else:
                teams[team_id] = self._merged(person, team_id, rules, client_id, client_level)
        return Decision(person, client_id, now, teams, tuple(inactive), client_level)

    def _merged(self, person: PersonFacts, team_id: str, rules: list[CompiledRule], client_id: str,
                client_level: Level) -> TeamDecision:
        """A team the person is in by several rules at once: the union of what they give."""
        wanted = {id(role) for rule in rules for role in rule.roles}
        roles = tuple(role for role in self.roles_by_team[team_id] if id(role) in wanted)
        scopes, levels = _merge(roles)
        level = levels.get(client_id, client_level)
        return TeamDecision(person.organisation, team_id, self.team_names[team_id], client_id, tuple(rules),
                            roles, scopes, level if level > client_level else client_level)


def _merge(roles: Iterable[CompiledRole]) -> tuple[dict[str, frozenset[str]], dict[str, Level]]:
    """audience -> scopes, and audience -> the highest role level granting there."""
    scopes: dict[str, frozenset[str]] = {}
    levels: dict[str, Level] = {}
    for role in roles:
        for audience, granted in role.grants.items():
            previous = scopes.get(audience)
            scopes[audience] = granted if previous is None else previous | granted
            current = levels.get(audience)
            if current is None or role.min_level > current:
                levels[audience] = role.min_level
    return scopes, levels


def _compile_roles(team: Team, sources: Mapping[str, str]) -> dict[str, CompiledRole]:
    return {role.id: CompiledRole(
        team.id, role.id, role.name or role.id, role.minimum_level,
        MappingProxyType({audience: frozenset(scopes) for audience, scopes in role.grants.items() if scopes}),
        sources.get(f"teams/{team.id}/roles/{role.id}")) for role in team.roles}


def _compile_rule(team: Team, position: int, rule: MemberRule, roles: Mapping[str, CompiledRole],
                  rotas: Mapping[str, CompiledRota], sources: Mapping[str, str]) -> CompiledRule:
    chosen = tuple(roles.values()) if rule.roles is None else tuple(
        roles[role_id] for role_id in roles if role_id in rule.roles)
    description = rule.describe()
    if rule.rota is not None:
        description += f", on duty per rota '{rule.rota}'"
    grants, levels = _merge(chosen)
    return CompiledRule(
        team=team.id, organisation=team.organisation, index=position, kind=rule.kind, description=description,
        roles=chosen,
        starts=moment_start(rule.valid_from) if rule.valid_from is not None else None,
        ends=moment_end(rule.valid_until) if rule.valid_until is not None else None,
        rota=rotas[rule.rota] if rule.rota is not None else None,
        source=sources.get(f"teams/{team.id}/members/{position}"),
        # Read-only: decisions hand these out as they are, so nobody may change the index through them.
        grants=MappingProxyType(grants), levels=MappingProxyType(levels))


def evaluate(policy: Policy, person: PersonFacts, client_id: str, now: datetime) -> Decision:
    """Shorthand for ``policy.evaluate(person, client_id, now)``."""
    return policy.index.evaluate(person, client_id, now)
