"""Reading policy files: a strict YAML subset that remembers where every value came from.

Why not ``yaml.safe_load``: an administrator must get ``file:line`` for every mistake,
YAML's conveniences are traps in a security policy (``17:00`` is the integer 1020 in
YAML 1.1, ``no`` is ``False``, anchors and aliases make billion-laughs bombs and let one
edit change many places unseen), and a duplicate key silently wins. So this reader takes
libyaml's events (fast, C) and builds plain values itself:

- mappings become :class:`LinedDict`, sequences :class:`LinedList`, each knowing the line
  of every key / item; duplicate keys, non-string keys, anchors, aliases, merge keys
  (``<<``), custom tags and several documents in one file are refused;
- plain scalars follow the YAML 1.2 core schema (``true``/``false``, decimal/hex/octal
  integers, floats, ``null``); everything else — times, dates, ``yes`` — stays a string;
- strings that are values (not keys) may name environment variables, ``${NAME}`` or
  ``${NAME:-default}``, expanded here so that an unset one is reported at its line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)

try:  # libyaml's parser when present (it is in the PyYAML wheels); the pure one otherwise
    from yaml._yaml import CParser as _Parser

    def _parser(text: str) -> Any:
        return _Parser(text)
except ImportError:  # pragma: no cover - depends on the PyYAML build
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _PureParser(Reader, Scanner, Parser):
        def __init__(self, text: str) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)

    def _parser(text: str) -> Any:
        return _PureParser(text)


#: Larger files are refused before parsing: a policy is text an administrator reads.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Deeper nesting is refused; the policy schema itself is never deeper than about 8.
MAX_DEPTH = 32

_VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan,
                  ".Inf": math.inf, "+.Inf": math.inf, "-.Inf": -math.inf, ".NaN": math.nan,
                  ".INF": math.inf, "+.INF": math.inf, "-.INF": -math.inf, ".NAN": math.nan}
_CORE = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {None, "!", _CORE + "str", _CORE + "int", _CORE + "float", _CORE + "bool",
                 _CORE + "null", _CORE + "map", _CORE + "seq"}


_TEXT = object()  # "this plain scalar is a string"
_SPECIAL_FIRST = frozenset("0123456789-+.~tTfFnN")


def _resolve_plain(value: str) -> Any:
    """A plain scalar under the YAML 1.2 core schema; ``_TEXT`` when it is just a string."""
    if not value:
        return None
    if value[0] not in _SPECIAL_FIRST:
        return _TEXT
    if _NULL.match(value):
        return None
    if value in _BOOL:
        return _BOOL[value]
    if _INT.match(value):
        return int(value)
    if _OCT.match(value):
        return int(value[2:], 8)
    if _HEX.match(value):
        return int(value[2:], 16)
    if _FLOAT.match(value):
        return float(value)
    if value in _SPECIAL_FLOAT:
        return _SPECIAL_FLOAT[value]
    return _TEXT


@dataclass(frozen=True)
class Problem:
    """One finding, placed in a file (and line, when known), with a hint how to fix it."""

    file: str
    line: int | None
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{place}: {self.message}"
        return f"{text}\n      fix: {self.hint}" if self.hint else text


class LinedDict(dict):
    """A mapping read from YAML: ``line`` of the mapping, ``lines[key]`` of each key."""

    __slots__ = ("line", "lines")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: dict[Any, int] = {}


class LinedList(list):
    """A sequence read from YAML: ``line`` of the sequence, ``lines[i]`` of each item."""

    __slots__ = ("line", "lines")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: list[int] = []


class _Refused(Exception):
    def __init__(self, line: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.line, self.message, self.hint = line, message, hint


def line_of(value: Any, loc: tuple[Any, ...], default: int | None = None) -> int | None:
    """The line of the deepest part of ``loc`` (keys and indexes) found in ``value``; parts
    that are not there (pydantic's union tags and validator names) are skipped."""
    line = getattr(value, "line", default)
    for part in loc:
        found = (part in value) if isinstance(value, LinedDict) else (
            isinstance(value, LinedList) and isinstance(part, int) and 0 <= part < len(value))
        if found:
            line, value = value.lines[part], value[part]
    return line


def read_yaml(data: bytes, file: str, *, environ: Mapping[str, str] | None = None,
              problems: list[Problem]) -> Any:
    """The document in ``data`` (``None`` when the file is empty or unreadable); every
    mistake is appended to ``problems`` with its line."""
    if len(data) > MAX_FILE_BYTES:
        problems.append(Problem(file, None, f"file is larger than {MAX_FILE_BYTES // 2**20} MiB",
                                "split the policy over several files"))
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        problems.append(Problem(file, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                                            f"{exc.start})", "save the file as UTF-8"))
        return None
    builder = _Builder(text, file, environ, problems)
    try:
        return builder.document()
    except _Refused as refused:
        problems.append(Problem(file, refused.line, refused.message, refused.hint))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        problems.append(Problem(file, line, f"not valid YAML: {what}",
                                "check indentation, quoting and brackets around this line"))
    except yaml.YAMLError as exc:
        problems.append(Problem(file, None, f"not valid YAML: {exc}"))
    return None


class _Builder:
    """Turns parser events into lined values; refuses what the policy language leaves out.

    Written for speed as well as strictness (a chain's policy can be megabytes): one
    parser call per event, and plain scalars resolved by their first character before
    any regular expression is tried.
    """

    def __init__(self, text: str, file: str, environ: Mapping[str, str] | None,
                 problems: list[Problem]) -> None:
        self.parser = _parser(text)
        self.file = file
        self.environ = environ
        self.problems = problems

    def document(self) -> Any:
        parser = self.parser
        self._expect(StreamStartEvent)
        if parser.check_event(StreamEndEvent):
            return None
        self._expect(DocumentStartEvent)
        value = self._node(parser.get_event(), 0)
        self._expect(DocumentEndEvent)
        if not parser.check_event(StreamEndEvent):
            line = parser.peek_event().start_mark.line + 1
            raise _Refused(line, "more than one YAML document ('---') in one file",
                           "put each document in its own file, or merge them")
        return value

    def _expect(self, kind: type) -> None:
        event = self.parser.get_event()
        if not isinstance(event, kind):  # pragma: no cover - the parser guarantees the order
            raise _Refused(event.start_mark.line + 1, f"unexpected {type(event).__name__}")

    def _check(self, event: Any) -> None:
        """Refuse aliases, anchors and tags outside the core schema."""
        if type(event) is AliasEvent:
            raise _Refused(event.start_mark.line + 1, f"YAML alias '*{event.anchor}' is not allowed",
                           "write the value out in full: anchors and aliases hide what a rule grants")
        if event.anchor is not None:
            raise _Refused(event.start_mark.line + 1, f"YAML anchor '&{event.anchor}' is not allowed",
                           "write the value out in full: anchors and aliases hide what a rule grants")
        if event.tag not in _ALLOWED_TAGS:
            raise _Refused(event.start_mark.line + 1, f"YAML tag '{event.tag}' is not allowed",
                           "remove the tag")

    def _node(self, event: Any, depth: int) -> Any:
        kind = type(event)
        if kind is ScalarEvent and event.anchor is None and event.tag is None:
            return self._scalar(event)
        self._check(event)
        line = event.start_mark.line + 1
        if kind is ScalarEvent:
            return self._tagged(event.value, event.tag, line) if event.tag not in (None, "!", _CORE + "str") \
                else self._string(event.value, line)
        if depth >= MAX_DEPTH:
            raise _Refused(line, f"nested deeper than {MAX_DEPTH} levels", "flatten the structure")
        if kind is SequenceStartEvent:
            return self._sequence(line, depth)
        if kind is MappingStartEvent:
            return self._mapping(line, depth)
        raise _Refused(line, f"unexpected {kind.__name__}")  # pragma: no cover

    def _sequence(self, line: int, depth: int) -> LinedList:
        result = LinedList(line)
        lines = result.lines
        get = self.parser.get_event
        while True:
            event = get()
            if type(event) is SequenceEndEvent:
                return result
            lines.append(event.start_mark.line + 1)
            result.append(self._node(event, depth + 1))

    def _mapping(self, line: int, depth: int) -> LinedDict:
        result = LinedDict(line)
        lines = result.lines
        get = self.parser.get_event
        while True:
            event = get()
            if type(event) is MappingEndEvent:
                return result
            key_line = event.start_mark.line + 1
            key = self._key(event, key_line)
            if key in result:
                raise _Refused(key_line, f"duplicate key '{key}' (first on line {lines[key]})",
                               "remove one of them: YAML would silently keep only the last")
            result[key] = self._node(get(), depth + 1)
            lines[key] = key_line

    def _key(self, event: Any, line: int) -> str:
        if type(event) is not ScalarEvent:
            self._check(event)
            raise _Refused(line, "a mapping key must be a plain string", "write the key as text")
        if event.anchor is not None or event.tag is not None:
            self._check(event)
        key = event.value
        if event.implicit[0] and event.tag is None:
            resolved = self._plain(key, line)
            if resolved is not _TEXT:
                raise _Refused(line, f"mapping key {key!r} is not a string", "quote the key")
        if key == "<<":
            raise _Refused(line, "YAML merge keys ('<<') are not allowed", "write the keys out in full")
        return key

    @staticmethod
    def _plain(value: str, line: int) -> Any:
        try:
            return _resolve_plain(value)
        except ValueError:  # Python reads no integer of over 4,300 digits
            raise _Refused(line, f"the number {value[:12]}... ({len(value)} digits) is too long",
                           "quote it if it is text") from None

    def _scalar(self, event: Any) -> Any:
        value: str = event.value
        if event.implicit[0]:  # unquoted
            resolved = self._plain(value, event.start_mark.line + 1)
            if resolved is not _TEXT:
                return resolved
        if self.environ is not None and "${" in value:
            return self._expand(value, event.start_mark.line + 1, self.environ)
        return value

    def _string(self, value: str, line: int) -> str:
        if self.environ is not None and "${" in value:
            return self._expand(value, line, self.environ)
        return value

    def _tagged(self, value: str, tag: str, line: int) -> Any:
        try:
            if tag == _CORE + "int":
                return int(value, 0)
            if tag == _CORE + "float":
                return float(value)
            if tag == _CORE + "bool" and value in _BOOL:
                return _BOOL[value]
            if tag == _CORE + "null" and _NULL.match(value):
                return None
        except ValueError:
            pass
        raise _Refused(line, f"'{value}' is not a valid {tag.removeprefix(_CORE)}",
                       "fix the value or the tag")

    def _expand(self, value: str, line: int, environ: Mapping[str, str]) -> str:
        if "${" not in value:
            return value

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is None:
                self.problems.append(Problem(
                    self.file, line, f"environment variable {name} is not set",
                    f"set {name}, or give a default: ${{{name}:-value}}"))
                return ""
            return default

        return _VARIABLE.sub(substitute, value)
