"""Load ``policies/*.yaml`` into one :class:`Policy`, or say exactly what is wrong, and where.

Any file may hold any of the sections ``organisations``, ``clients``, ``rotas`` and
``teams`` (each a list of entries), so that each organisation's administrators can keep
their own teams in their own file. Every finding names the file and line and, where one
helps, a fix. String values may name environment variables as ``${NAME}`` or
``${NAME:-default}`` (the demo uses this for its URLs); an unset variable without default
is an error. A policy with findings is never returned: the caller keeps what it had.
"""

from __future__ import annotations

import gc
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from idbroker.policy.invariants import check_invariants
from idbroker.policy.model import ClientPolicy, Organisation, Policy, Rota, Team
from idbroker.policy.source import LinedDict, LinedList, Problem, line_of, read_yaml

SECTIONS: dict[str, type[BaseModel]] = {
    "organisations": Organisation, "clients": ClientPolicy, "rotas": Rota, "teams": Team,
}
#: Entries whose parts explain output names by source line.
_NAMED_PARTS = {"teams": ("roles", "members")}


class PolicyError(ValueError):
    """The policy directory is not valid; ``problems`` lists each finding (file, line, fix)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("invalid policy:\n  " + "\n  ".join(str(problem) for problem in problems))
        self.problems = problems


@dataclass(frozen=True)
class CheckReport:
    """The outcome of reading a policy directory: the policy only when there are no problems."""

    policy: Policy | None
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    files: tuple[Path, ...]

    @property
    def ok(self) -> bool:
        return self.policy is not None


def load_policy(directory: Path, *, environ: Mapping[str, str] | None = None) -> Policy:
    """The valid policy in ``directory``, or :class:`PolicyError` with every problem."""
    report = check_policy(directory, environ=environ)
    if report.policy is None:
        raise PolicyError(list(report.problems))
    return report.policy


def policy_files(directory: Path) -> list[Path]:
    """The files that make up the policy (``*.yaml`` directly in ``directory``, by name)."""
    return sorted(path for path in Path(directory).glob("*.yaml") if path.is_file())


def read_policy_files(directory: Path) -> tuple[dict[str, bytes], list[Problem]]:
    """One snapshot of the policy files' bytes, by file name, and what kept any from being read."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}, [Problem(str(directory), None, "not a directory")]
    contents: dict[str, bytes] = {}
    problems: list[Problem] = []
    for path in policy_files(directory):
        try:
            contents[path.name] = path.read_bytes()
        except OSError as exc:
            problems.append(Problem(path.name, None, f"cannot be read: {exc.strerror}"))
    if not contents and not problems:
        problems.append(Problem(str(directory), None, "no *.yaml policy files"))
    for stray in sorted(directory.glob("*.yml")):
        problems.append(Problem(stray.name, None, "ignored: policy files end in .yaml",
                                f"rename it to {stray.stem}.yaml"))
    return contents, problems


def check_policy(directory: Path, *, environ: Mapping[str, str] | None = None,
                 now: datetime | None = None,
                 snapshot: tuple[dict[str, bytes], list[Problem]] | None = None) -> CheckReport:
    """Read, validate and cross-check ``directory`` (or a ``snapshot`` of it, as
    :func:`read_policy_files` gives); ``now`` only adds warnings (expired rules)."""
    # Loading a big chain makes hundreds of thousands of small containers and no cycles;
    # the cyclic collector would walk them over and over (it doubled the load time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _check(directory, environ=environ, now=now, snapshot=snapshot)
    finally:
        if collecting:
            gc.enable()


def _check(directory: Path, *, environ: Mapping[str, str] | None, now: datetime | None,
           snapshot: tuple[dict[str, bytes], list[Problem]] | None) -> CheckReport:
    directory = Path(directory)
    environ = os.environ if environ is None else environ
    contents, read_problems = snapshot if snapshot is not None else read_policy_files(directory)
    problems: list[Problem] = list(read_problems)
    files = tuple(directory / name for name in sorted(contents))
    collected: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    raw_entries: dict[tuple[str, str], tuple[str, LinedDict]] = {}
    invalid: set[tuple[str, str]] = set()
    sources: dict[str, str] = {}
    for path in files:
        data = contents[path.name]
        document = read_yaml(data, path.name, environ=environ, problems=problems)
        if document is None:
            continue
        if not isinstance(document, LinedDict):
            problems.append(Problem(path.name, getattr(document, "line", 1),
                                    "must be a mapping of sections",
                                    f"start with one of: {', '.join(f'{s}:' for s in SECTIONS)}"))
            continue
        for section, entries in document.items():
            line = document.lines[section]
            model = SECTIONS.get(section)
            if model is None:
                problems.append(Problem(path.name, line, f"unknown section '{section}'",
                                        f"expected one of {', '.join(SECTIONS)}"))
                continue
            if entries is None:
                continue
            if not isinstance(entries, LinedList):
                problems.append(Problem(path.name, line, f"'{section}' must be a list",
                                        "write each entry as an item starting with '- '"))
                continue
            for position, raw in enumerate(entries):
                _read_entry(path.name, section, position, raw, entries.lines[position], model, collected,
                            raw_entries, invalid, sources, problems)
    warnings: list[Problem] = []
    findings = check_invariants(collected["organisations"], collected["clients"], collected["rotas"],
                                collected["teams"], now=now)
    for finding in findings:
        if finding.refers is not None and finding.refers in invalid:
            continue  # that entry's own problems are reported already
        file, raw = raw_entries[(finding.section, finding.entry)]
        label = f"{finding.section[:-1]} '{finding.entry}'"
        if finding.loc:
            label += " " + _render_loc(finding.loc)
        problem = Problem(file, line_of(raw, finding.loc), f"{label}: {finding.message}", finding.hint)
        (warnings if finding.warning else problems).append(problem)
    if problems:
        return CheckReport(None, tuple(problems), tuple(warnings), files)
    policy = Policy(organisations=collected["organisations"], clients=collected["clients"],
                    rotas=collected["rotas"], teams=collected["teams"], sources=sources)
    return CheckReport(policy, (), tuple(warnings), files)


def _read_entry(file: str, section: str, position: int, raw: Any, line: int, model: type[BaseModel],
                collected: dict[str, dict[str, Any]],
                raw_entries: dict[tuple[str, str], tuple[str, LinedDict]], invalid: set[tuple[str, str]],
                sources: dict[str, str], problems: list[Problem]) -> None:
    where = f"{section}[{position}]"
    if not isinstance(raw, LinedDict):
        problems.append(Problem(file, line, f"{where}: each entry must be a mapping (key: value)"))
        return
    entry_id = raw.get("id")
    try:
        item = model.model_validate(raw)
    except ValidationError as exc:
        if isinstance(entry_id, str):
            invalid.add((section, entry_id))
        for error in exc.errors():
            problems.append(_pydantic_problem(file, where, raw, model, error))
        return
    key = (section, item.id)
    if item.id in collected[section]:
        first_file, first = raw_entries[key]
        problems.append(Problem(file, raw.lines.get("id", raw.line),
                                f"{where}: duplicate id '{item.id}' (first in {first_file}:{first.line})",
                                "ids are unique per section across all policy files; rename one"))
        return
    collected[section][item.id] = item
    raw_entries[key] = (file, raw)
    sources[f"{section}/{item.id}"] = f"{file}:{raw.line}"
    for part in _NAMED_PARTS.get(section, ()):
        items = raw.get(part)
        if not isinstance(items, LinedList):
            continue
        for index, sub in enumerate(items):
            name = sub.get("id") if part == "roles" and isinstance(sub, LinedDict) else index
            sources[f"{section}/{item.id}/{part}/{name}"] = f"{file}:{items.lines[index]}"


def _pydantic_problem(file: str, where: str, raw: LinedDict, model: type[BaseModel],
                      error: Mapping[str, Any]) -> Problem:
    loc = tuple(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    hint = None
    if error["type"] == "extra_forbidden":
        message = f"unknown key '{loc[-1]}'"
        known = _known_keys(model, loc[:-1])
        hint = f"check the spelling; allowed here: {', '.join(known)}" if known else "check the spelling"
    elif error["type"] == "missing":
        message = f"required key '{loc[-1]}' is missing"
    elif error["type"].endswith("_type") or error["type"] in {"literal_error", "enum"}:
        got = error.get("input")
        if not isinstance(got, LinedDict | LinedList):
            message += f" (got {got!r})"
    if error["type"] == "int_type" or (isinstance(error.get("input"), int) and "string" in message):
        hint = "quote the value if it is meant as text"
    path = _render_loc(loc)
    return Problem(file, line_of(raw, loc), f"{where}{'.' if path and not path.startswith('[') else ''}"
                                          f"{path}: {message}", hint)


def _render_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and ("function-" in part or part.startswith(("str", "json-or"))):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the mapping at ``loc`` of ``model``, following field annotations."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        candidate = _submodel(current)
        if candidate is None:
            return []
        fields = {(info.alias or name): info for name, info in candidate.model_fields.items()}
        # a field; else a union tag (pick that member) or a dict key (stay)
        current = fields[part].annotation if part in fields else _tagged_member(current, part) or current
    found = _submodel(current)
    if found is None:
        return []
    return [info.alias or name for name, info in found.model_fields.items()]


def _tagged_member(annotation: Any, tag: Any) -> type[BaseModel] | None:
    """The member of a discriminated union whose literal field equals ``tag``."""
    for argument in typing.get_args(annotation):
        model = _submodel(argument)
        if model is None:
            continue
        for info in model.model_fields.values():
            literal = typing.get_origin(info.annotation) is typing.Literal
            if literal and tag in typing.get_args(info.annotation):
                return model
    return None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _submodel(argument)
        if found is not None:
            return found
    return None
