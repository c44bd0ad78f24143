"""The strict YAML reader under the policy: what it refuses, and the lines it remembers."""

from __future__ import annotations

import pytest

from idbroker.policy.source import MAX_DEPTH, LinedDict, Problem, line_of, read_yaml


def read(text: bytes | str, environ: dict[str, str] | None = None) -> tuple[object, list[Problem]]:
    problems: list[Problem] = []
    data = text.encode() if isinstance(text, str) else text
    document = read_yaml(data, "chain.yaml", environ={} if environ is None else environ, problems=problems)
    return document, problems


def test_values_keep_their_lines() -> None:
    document, problems = read("teams:\n  - id: a\n    members:\n      - group: x\n      - group: y\n")
    assert not problems
    assert isinstance(document, LinedDict)
    assert line_of(document, ("teams", 0, "members", 1, "group")) == 5
    assert line_of(document, ("teams", 0, "id")) == 2
    # A part that is not there (pydantic's union tags) is skipped, a missing key stops at the parent.
    assert line_of(document, ("teams", 0, "function-after[x]", "members")) == 3
    assert line_of(document, ("teams", 0, "nope")) == 2


def test_plain_scalars_follow_the_yaml_1_2_core_schema() -> None:
    """``17:00`` is not the integer 1020 and ``no`` is not False: those would be traps in a policy."""
    text = "a: [17:00, no, yes, on, 2026-01-01, 0x1f, 010, 1.5, true, ~, '7', !!int '7']\n"
    document, problems = read(text)
    assert not problems
    assert document == {"a": ["17:00", "no", "yes", "on", "2026-01-01", 31, 10, 1.5, True, None, "7", 7]}


@pytest.mark.parametrize(("text", "line", "named"), [
    ("a: &anchor 1\nb: 2\n", 1, "YAML anchor '&anchor' is not allowed"),
    ("a: [1]\nb: *x\n", 2, "YAML alias '*x' is not allowed"),
    ("- &a [1]\n- *a\n", 1, "anchor '&a'"),
    ("a: 1\nb: 2\na: 3\n", 3, "duplicate key 'a' (first on line 1)"),
    ("<<: {a: 1}\n", 1, "merge keys"),
    ("a: !!python/object/apply:os.system [ls]\n", 1, "tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("a: !custom 1\n", 1, "YAML tag '!custom' is not allowed"),
    ("1: a\n", 1, "mapping key '1' is not a string"),
    ("? [a]\n: b\n", 1, "a mapping key must be a plain string"),
    ("a: 1\n---\nb: 2\n", 2, "more than one YAML document"),
    ("a: [1, 2\nb: 3\n", 2, "not valid YAML"),
    ("a: !!int twelve\n", 1, "'twelve' is not a valid int"),
])
def test_refusals_name_the_line(text: str, line: int, named: str) -> None:
    document, problems = read(text)
    assert document is None
    assert len(problems) == 1 and problems[0].line == line, problems
    assert named in problems[0].message
    assert str(problems[0]).startswith(f"chain.yaml:{line}: ")


def test_a_billion_laughs_bomb_is_refused_at_its_first_anchor() -> None:
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    bomb += "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
                    for i in range(8))
    document, problems = read(bomb)
    assert document is None
    assert [p.line for p in problems] == [1] and "anchor '&a'" in problems[0].message
    assert "write the value out in full" in (problems[0].hint or "")


def test_deep_nesting_is_refused_not_a_crash() -> None:
    document, problems = read("a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    assert document is None and "nested deeper than" in problems[0].message


def test_non_utf8_names_the_line_and_byte() -> None:
    document, problems = read(b"a: 1\nb: caf\xe9\n")
    assert document is None
    assert problems[0].line == 2 and "not UTF-8 text (byte 0xe9 at offset 11)" in problems[0].message
    assert problems[0].hint == "save the file as UTF-8"


def test_a_utf8_byte_order_mark_is_fine() -> None:
    document, problems = read("\ufeffa: één\n".encode())
    assert not problems and document == {"a": "één"}


def test_environment_variables_are_expanded_in_values_only_and_unset_ones_are_named() -> None:
    document, problems = read('url: "${BASE:-http://localhost}/x"\n"${KEY}": 1\nother: ${MISSING}\n',
                              environ={"KEY": "no"})
    assert document["url"] == "http://localhost/x" and "${KEY}" in document
    assert [(p.line, p.message) for p in problems] == [(3, "environment variable MISSING is not set")]


def test_a_huge_file_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("idbroker.policy.source.MAX_FILE_BYTES", 100)
    document, problems = read("a: " + "x" * 200)
    assert document is None and "larger than" in problems[0].message
