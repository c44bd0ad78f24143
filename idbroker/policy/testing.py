"""``policy test``: administrators' own expectations, run against the policy.

Expectation files are ``<policy dir>/tests/*.yaml`` (read with the same strict YAML reader
as the policy; the format is documented at the top of ``policies/tests/example-chain.yaml``):
"this person, at this time, in this application, gets / does not get these scopes".
A scope the client does not declare is an error in the test file, not a pass: a typo in
``does_not_get`` must never make a test pass by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from idbroker.assurance.levels import Level
from idbroker.policy.common import StrictModel
from idbroker.policy.evaluate import PersonFacts
from idbroker.policy.explain import explain, person_from_mapping
from idbroker.policy.model import LevelName, Moment, Policy
from idbroker.policy.rota import AMSTERDAM
from idbroker.policy.source import LinedDict, LinedList, Problem, line_of, read_yaml


class Expectation(StrictModel):
    name: str = Field(min_length=1)
    #: A name from the file's ``persons``, or the person written out.
    person: str | dict[str, Any]
    client: str
    at: Moment
    #: The team the person acts for; unset: what they could get acting for any of their teams.
    team: str | None = None
    gets: tuple[str, ...] = ()
    does_not_get: tuple[str, ...] = ()
    #: Exactly these teams now (order does not matter).
    teams: tuple[str, ...] | None = None
    #: The level everything granted on the client needs (of the team when ``team`` is set): a
    #: login that asks for fewer scopes needs only the level of the roles granting those.
    level: LevelName | None = None

    @field_validator("at")
    @classmethod
    def _moment(cls, value: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        return datetime.combine(value, datetime.min.time(), AMSTERDAM)


@dataclass
class Outcome:
    file: str
    line: int | None
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ExpectationRun:
    outcomes: list[Outcome]
    problems: list[Problem]

    @property
    def passed(self) -> int:
        return sum(outcome.passed for outcome in self.outcomes)

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.passed


def run_tests(policy: Policy, tests_dir: Path) -> ExpectationRun:
    run = ExpectationRun([], [])
    files = sorted(Path(tests_dir).glob("*.yaml"))
    if not files:
        run.problems.append(Problem(str(tests_dir), None, "no *.yaml expectation files",
                                    "write expectations; see policies/tests/ in the idbroker sources"))
    for path in files:
        document = read_yaml(path.read_bytes(), path.name, environ=None, problems=run.problems)
        if document is None:
            continue
        if not isinstance(document, LinedDict) or set(document) - {"persons", "expectations"} \
                or not isinstance(document.get("expectations"), LinedList):
            run.problems.append(Problem(path.name, getattr(document, "line", 1),
                                        "an expectation file is a mapping with 'expectations:' (a list) and "
                                        "optionally 'persons:'"))
            continue
        persons = document.get("persons") or {}
        if not isinstance(persons, dict):
            run.problems.append(Problem(path.name, document.lines["persons"], "'persons' must be a mapping"))
            continue
        entries: LinedList = document["expectations"]
        for position, raw in enumerate(entries):
            line = entries.lines[position]
            try:
                expectation = Expectation.model_validate(raw)
            except ValidationError as exc:
                for error in exc.errors():
                    loc = tuple(error["loc"])
                    run.problems.append(Problem(
                        path.name, line_of(raw, loc, line),
                        f"expectations[{position}].{'.'.join(str(p) for p in loc)}: "
                        f"{str(error['msg']).removeprefix('Value error, ')}"))
                continue
            outcome = Outcome(path.name, line, expectation.name)
            try:
                person = _person(expectation.person, persons)
                _check(policy, person, expectation, outcome)
            except ValueError as exc:
                run.problems.append(Problem(path.name, line, f"expectation '{expectation.name}': {exc}"))
                continue
            run.outcomes.append(outcome)
    return run


def _person(value: str | dict[str, Any], persons: Mapping[str, dict[str, Any]]) -> PersonFacts:
    if isinstance(value, str):
        if value not in persons:
            raise ValueError(f"person '{value}' is not in this file's persons")
        value = persons[value]
    return person_from_mapping(value)


def _check(policy: Policy, person: PersonFacts, expectation: Expectation, outcome: Outcome) -> None:
    client = policy.clients.get(expectation.client)
    if client is None:
        raise ValueError(f"client '{expectation.client}' is not in the policy")
    declared = client.application_scope_names
    for scope in (*expectation.gets, *expectation.does_not_get):
        if scope not in declared:
            raise ValueError(f"'{scope}' is not an application scope of '{client.id}' "
                             f"(known: {', '.join(sorted(declared)) or 'none'})")
    if expectation.team is not None and expectation.team not in policy.teams:
        raise ValueError(f"team '{expectation.team}' is not in the policy")
    assert isinstance(expectation.at, datetime)
    explanation = explain(policy, person, client.id, expectation.at)
    decision = explanation.decision
    if expectation.teams is not None and set(expectation.teams) != set(decision.teams):
        outcome.failures.append(f"teams: expected {sorted(expectation.teams)}, got {sorted(decision.teams)}")
    if expectation.team is not None:
        team = decision.teams.get(expectation.team)
        if team is None:
            outcome.failures.append(f"not a member of '{expectation.team}' at this time (teams now: "
                                    f"{', '.join(decision.teams) or 'none'})")
            granted: frozenset[str] = frozenset()
            level = decision.client_level
        else:
            granted, level = team.scopes_for(client.id), team.required_level
    else:
        granted, level = decision.scopes.get(client.id, frozenset()), decision.required_level
    missing = explanation.missing.get(client.id, {})
    for scope in expectation.gets:
        if scope not in granted:
            why = "; ".join(missing.get(scope, ())) or "granted by another team than the one acted for"
            outcome.failures.append(f"expected to get {scope}, but does not: {why}")
    chains = explanation.granted.get(client.id, {})
    for scope in expectation.does_not_get:
        if scope in granted:
            how = "; ".join(chain.replace("\n        ", " ") for chain in chains.get(scope, ()))
            outcome.failures.append(f"expected not to get {scope}, but does: {how}")
    if expectation.level is not None and level != Level.from_name(expectation.level):
        outcome.failures.append(f"level: expected {expectation.level}, "
                                f"the policy requires {level.name.lower()}")
