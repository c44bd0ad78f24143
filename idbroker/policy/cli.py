"""``idbroker policy check | explain | test | diff``: the administrator's tools.

Exit codes: 0 all well; 1 the answer is "no" (check found problems, an expectation
failed, the diff found differences); 2 the command could not do its work (bad arguments,
unreadable input, or a policy that does not pass check where the command needs one).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from idbroker.policy.diff import diff_policies
from idbroker.policy.evaluate import PersonFacts
from idbroker.policy.explain import explain, person_from_claims, person_from_mapping, unmapped_claims
from idbroker.policy.load import CheckReport, check_policy
from idbroker.policy.model import Policy, parse_moment
from idbroker.policy.rota import AMSTERDAM
from idbroker.policy.source import LinedDict, LinedList, Problem, read_yaml
from idbroker.policy.testing import run_tests

OK, NO, TROUBLE = 0, 1, 2


class _Trouble(Exception):
    """The command cannot do its work; the message says why."""


def add_policy_commands(commands: Any) -> None:
    """Register ``policy`` and its subcommands on the root parser's subparsers."""
    policy = commands.add_parser("policy", help="check, explain, test and diff role policies")
    sub = policy.add_subparsers(dest="policy_command", required=True)

    def with_dir(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dir", type=Path, help="policy directory (default: the settings' "
                                                     "policies_dir with --config, else ./policies)")

    check = sub.add_parser("check", help="schema and invariants; each problem with file, line and fix")
    with_dir(check)

    explain_cmd = sub.add_parser("explain", help="why a person gets (or not) each scope of a client")
    with_dir(explain_cmd)
    who = explain_cmd.add_mutually_exclusive_group(required=True)
    who.add_argument("--person", type=Path, metavar="FILE",
                     help="YAML: organisation, subject, email, groups, attributes")
    who.add_argument("--claims", metavar="JSON", help="the claims the person's IdP sends, as JSON "
                                                      "(add \"organisation\" unless the e-mail says it)")
    explain_cmd.add_argument("--org", help="the organisation whose IdP sent --claims")
    explain_cmd.add_argument("--client", required=True, help="client id (chain application)")
    explain_cmd.add_argument("--at", help="moment (ISO 8601; Europe/Amsterdam unless an offset is given); "
                                          "default now")

    test = sub.add_parser("test", help="run the expectation files in <policy dir>/tests/")
    with_dir(test)
    test.add_argument("--tests", type=Path, help="expectations directory (default: <policy dir>/tests)")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing expectations too")

    diff = sub.add_parser("diff", help="who gains and who loses which access")
    diff.add_argument("old_dir", type=Path, metavar="OLD_DIR")
    diff.add_argument("new_dir", type=Path, metavar="NEW_DIR")
    diff.add_argument("--population", type=Path, required=True, metavar="FILE",
                      help="YAML with 'persons:' (a list, or a mapping name -> person)")


def run_policy_command(args: argparse.Namespace, policies_dir: Callable[[], Path],
                       out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``idbroker policy ...``; ``policies_dir`` gives the default directory (lazily,
    so that the settings are only read when no ``--dir`` is given)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if args.policy_command == "diff":
            return _diff(args, out, err)
        directory = args.dir if args.dir is not None else policies_dir()
        if args.policy_command == "check":
            return _check(directory, out)
        report = check_policy(directory, now=datetime.now(UTC))
        if report.policy is None:
            _problems(err, f"policy in {directory} does not pass check", report.problems)
            return TROUBLE
        if args.policy_command == "explain":
            return _explain(report.policy, args, out)
        return _test(report.policy, args.tests or Path(directory) / "tests", args.verbose, out, err)
    except _Trouble as trouble:
        print(f"idbroker policy {args.policy_command}: {trouble}", file=err)
        return TROUBLE


def _check(directory: Path, out: TextIO) -> int:
    report = check_policy(directory, now=datetime.now(UTC))
    for warning in report.warnings:
        print(f"warning: {warning}", file=out)
    if report.policy is None:
        _problems(out, f"policy in {directory}: {len(report.problems)} problem(s)", report.problems)
        return NO
    print(f"policy in {directory} ok: {_summary(report)}", file=out)
    return OK


def _summary(report: CheckReport) -> str:
    policy = report.policy
    assert policy is not None
    rules = sum(len(team.members) for team in policy.teams.values())
    roles = sum(len(team.roles) for team in policy.teams.values())
    return (f"{len(report.files)} files, {len(policy.organisations)} organisations, "
            f"{len(policy.teams)} teams ({rules} member rules, {roles} roles), {len(policy.rotas)} rotas, "
            f"{len(policy.clients)} clients"
            + (f"; {len(report.warnings)} warning(s)" if report.warnings else ""))


def _explain(policy: Policy, args: argparse.Namespace, out: TextIO) -> int:
    if args.client not in policy.clients:
        raise _Trouble(f"no client '{args.client}' (known: {', '.join(sorted(policy.clients))})")
    person = _person_file(args.person) if args.person else _claims(policy, args.claims, args.org, out)
    at = _at(args.at)
    print(explain(policy, person, args.client, at).text, file=out)
    return OK


def _test(policy: Policy, tests_dir: Path, verbose: bool, out: TextIO, err: TextIO) -> int:
    if not tests_dir.is_dir():
        raise _Trouble(f"{tests_dir} is not a directory of expectation files")
    run = run_tests(policy, tests_dir)
    for outcome in run.outcomes:
        if outcome.passed and verbose:
            print(f"PASS {outcome.file}:{outcome.line} {outcome.name}", file=out)
        elif not outcome.passed:
            print(f"FAIL {outcome.file}:{outcome.line} {outcome.name}", file=out)
            for failure in outcome.failures:
                print(f"     {failure}", file=out)
    if run.problems:
        _problems(err, f"{len(run.problems)} problem(s) in the expectation files", run.problems)
    broken = f", {len(run.problems)} broken" if run.problems else ""
    print(f"{run.passed} passed, {run.failed} failed{broken}", file=out)
    if run.problems:
        return TROUBLE
    return NO if run.failed else OK


def _diff(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    policies = []
    for directory in (args.old_dir, args.new_dir):
        report = check_policy(directory)
        if report.policy is None:
            _problems(err, f"policy in {directory} does not pass check", report.problems)
            return TROUBLE
        policies.append(report.policy)
    population = _population(args.population)
    result = diff_policies(policies[0], policies[1], population)
    print(result.render(), file=out)
    return NO if result.changed else OK


def _problems(stream: TextIO, title: str, problems: tuple[Problem, ...] | list[Problem]) -> None:
    print(title, file=stream)
    for problem in problems:
        print(f"  {problem}", file=stream)


def _read(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Trouble(f"{path}: {exc.strerror}") from exc
    problems: list[Problem] = []
    document = read_yaml(data, path.name, environ=None, problems=problems)
    if problems:
        raise _Trouble("; ".join(str(problem) for problem in problems))
    return document


def _person_file(path: Path) -> PersonFacts:
    document = _read(path)
    if not isinstance(document, LinedDict):
        raise _Trouble(f"{path}: must be a mapping (organisation, subject, email, groups, attributes)")
    try:
        return person_from_mapping(document)
    except ValueError as exc:
        raise _Trouble(f"{path}: {exc}") from exc


def _claims(policy: Policy, text: str, organisation: str | None, out: TextIO) -> PersonFacts:
    try:
        claims = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Trouble(f"--claims is not JSON: {exc}") from exc
    if not isinstance(claims, dict):
        raise _Trouble("--claims must be a JSON object")
    try:
        person = person_from_claims(policy, claims, organisation)
    except ValueError as exc:
        raise _Trouble(f"--claims: {exc}") from exc
    ignored = unmapped_claims(policy, claims, person.organisation)
    if ignored:
        print(f"note: the attribute mapping of {person.organisation}'s IdP does not map "
              f"{', '.join(ignored)}: ignored, as at login", file=out)
    return person


def _population(path: Path) -> list[tuple[str, PersonFacts]]:
    document = _read(path)
    persons = document.get("persons") if isinstance(document, LinedDict) else None
    if isinstance(persons, LinedDict):
        items = list(persons.items())
        lines = [persons.lines[name] for name, _ in items]
    elif isinstance(persons, LinedList):
        items = [(None, person) for person in persons]
        lines = list(persons.lines)
    else:
        raise _Trouble(f"{path}: needs 'persons:', a list of persons or a mapping name -> person")
    population = []
    for (name, data), line in zip(items, lines, strict=True):
        if not isinstance(data, dict):
            raise _Trouble(f"{path.name}:{line}: a person must be a mapping")
        try:
            person = person_from_mapping(data)
        except ValueError as exc:
            raise _Trouble(f"{path.name}:{line}: {exc}") from exc
        population.append((f"{name} ({person.person_id})" if name else person.person_id, person))
    return population


def _at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = parse_moment(text)
    except ValueError as exc:
        raise _Trouble(f"--at: {exc}") from exc
    if isinstance(value, datetime):
        return value
    return datetime.combine(value, datetime.min.time(), AMSTERDAM)
