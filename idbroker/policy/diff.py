"""``policy diff``: who gains and who loses which access between two policy versions.

Compared for a population of persons (as their IdPs would describe them), and not at one
moment: each (team, application, scope) a person could hold is listed with its conditions
(validity period, rota and its windows, the level the role needs). So a change that only
moves a rota window or raises a level shows up as a changed condition, not as nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from idbroker.policy.evaluate import CompiledRule, PersonFacts
from idbroker.policy.model import Policy
from idbroker.policy.rota import AMSTERDAM

AccessKey = tuple[str, str, str]  # (team, audience, scope)


@dataclass
class PersonChanges:
    person: PersonFacts
    label: str
    gained: dict[AccessKey, frozenset[str]] = field(default_factory=dict)
    lost: dict[AccessKey, frozenset[str]] = field(default_factory=dict)
    changed: dict[AccessKey, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.gained or self.lost or self.changed)


@dataclass
class PolicyDiff:
    people: list[PersonChanges]
    population: int

    @property
    def changed(self) -> list[PersonChanges]:
        return [person for person in self.people if person.any]

    def render(self) -> str:
        lines: list[str] = []
        for person in self.changed:
            lines.append(f"{person.label}")
            for (team, audience, scope), conditions in sorted(person.gained.items()):
                lines.append(f"  + {audience}: {scope}  (team {team}; {_conditions(conditions)})")
            for (team, audience, scope), conditions in sorted(person.lost.items()):
                lines.append(f"  - {audience}: {scope}  (team {team}; was {_conditions(conditions)})")
            for (team, audience, scope), (old, new) in sorted(person.changed.items()):
                lines.append(f"  ~ {audience}: {scope}  (team {team}): was {_conditions(old)}; "
                             f"now {_conditions(new)}")
        gainers = sum(bool(person.gained) for person in self.people)
        losers = sum(bool(person.lost) for person in self.people)
        changers = sum(bool(person.changed) for person in self.people)
        lines.append(f"{self.population} persons compared: {gainers} gain access, {losers} lose access, "
                     f"{changers} keep access under changed conditions"
                     + ("" if self.changed else "; no differences"))
        return "\n".join(lines)


def access_of(policy: Policy, person: PersonFacts) -> dict[AccessKey, frozenset[str]]:
    """Everything ``person`` could hold under ``policy``, with the conditions for each."""
    result: dict[AccessKey, set[str]] = {}
    for rule in policy.index.candidate_rules(person):
        condition = _condition(rule)
        for role in rule.roles:
            for audience, scopes in role.grants.items():
                for scope in scopes:
                    result.setdefault((rule.team, audience, scope), set()).add(
                        f"{condition}, role '{role.id}' needs {role.min_level.name.lower()}")
    return {key: frozenset(value) for key, value in result.items()}


def diff_policies(old: Policy, new: Policy, population: Iterable[tuple[str, PersonFacts]]) -> PolicyDiff:
    people: list[PersonChanges] = []
    for label, person in population:
        before, after = access_of(old, person), access_of(new, person)
        changes = PersonChanges(person, label)
        for key, conditions in after.items():
            if key not in before:
                changes.gained[key] = conditions
            elif before[key] != conditions:
                changes.changed[key] = (before[key], conditions)
        for key, conditions in before.items():
            if key not in after:
                changes.lost[key] = conditions
        people.append(changes)
    return PolicyDiff(people, len(people))


def _condition(rule: CompiledRule) -> str:
    # A list of persons is one criterion however long it grows: only the person's own place counts.
    criterion = "being listed by name" if rule.kind == "persons" else rule.description.split(", on duty")[0]
    parts = [f"by {criterion}"]
    if rule.starts is not None or rule.ends is not None:
        start = _when(rule.starts) if rule.starts is not None else "always"
        end = _when(rule.ends) if rule.ends is not None else "open-ended"
        parts.append(f"valid {start} to {end}")
    if rule.rota is not None:
        parts.append(f"on duty per rota '{rule.rota.id}' ({rule.rota.describe()})")
    return ", ".join(parts)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, AMSTERDAM).strftime("%Y-%m-%d %H:%M")


def _conditions(conditions: frozenset[str]) -> str:
    return " | ".join(sorted(conditions))
