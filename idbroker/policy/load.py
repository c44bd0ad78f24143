"""Load ``policies/*.yaml`` into one :class:`Policy`, or say exactly what is wrong.

String values may name environment variables as ``${NAME}`` or ``${NAME:-default}``
(the demo uses this for its URLs); an unset variable without default is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from idbroker.policy.model import ClientPolicy, Organisation, Policy

_SECTIONS = {"organisations": Organisation, "clients": ClientPolicy}
_VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


class PolicyError(ValueError):
    """The policy directory is not valid; ``problems`` lists each finding."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid policy:\n  " + "\n  ".join(problems))
        self.problems = problems


def load_policy(directory: Path, *, environ: Mapping[str, str] | None = None) -> Policy:
    directory = Path(directory)
    environ = os.environ if environ is None else environ
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise PolicyError([f"{directory}: no *.yaml policy files"])
    problems: list[str] = []
    collected: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    origin: dict[tuple[str, str], str] = {}
    for path in files:
        document = _read(path, problems)
        if document is None:
            continue
        for section, entries in document.items():
            model = _SECTIONS.get(section)
            if model is None:
                problems.append(f"{path.name}: unknown section '{section}' (expected one of "
                                f"{', '.join(_SECTIONS)})")
                continue
            if not isinstance(entries, list):
                problems.append(f"{path.name}: '{section}' must be a list")
                continue
            for index, raw in enumerate(entries):
                where = f"{path.name}: {section}[{index}]"
                try:
                    item = model.model_validate(_expand(raw, environ))
                except ValidationError as exc:
                    problems.extend(f"{where}.{_loc(e['loc'])}: {e['msg']}" for e in exc.errors())
                    continue
                except KeyError as exc:
                    problems.append(f"{where}: environment variable {exc.args[0]} is not set")
                    continue
                if item.id in collected[section]:
                    problems.append(f"{where}: duplicate id '{item.id}' (first in "
                                    f"{origin[(section, item.id)]})")
                    continue
                collected[section][item.id] = item
                origin[(section, item.id)] = path.name
    if problems:
        raise PolicyError(problems)
    return Policy(organisations=collected["organisations"], clients=collected["clients"])


def _read(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        problems.append(f"{path.name}: not UTF-8 text")
        return None
    except yaml.YAMLError as exc:
        problems.append(f"{path.name}: not valid YAML: {exc}")
        return None
    if document is None:
        return {}
    if not isinstance(document, dict):
        problems.append(f"{path.name}: must be a mapping of sections")
        return None
    return document


def _expand(value: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is None:
                raise KeyError(name)
            return default

        return _VARIABLE.sub(substitute, value)
    if isinstance(value, list):
        return [_expand(item, environ) for item in value]
    if isinstance(value, dict):
        return {key: _expand(item, environ) for key, item in value.items()}
    return value


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(entry)"
