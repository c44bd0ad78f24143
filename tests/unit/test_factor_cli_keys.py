"""``idbroker enrol issue|list`` and the local ``factor_key`` secret."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from idbroker.assurance.activation import ActivationCodes
from idbroker.cli import main
from idbroker.keys import KeyRing
from idbroker.store.sqlite import SqliteStore

PERSON = "p-" + "a2" * 16


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "idbroker.yaml"
    path.write_text(f"issuer: http://localhost:8080\nkeys_dir: keys\nstore:\n  url: sqlite:///{tmp_path}/s.db\n")
    return path


def test_issue_prints_the_code_once_and_the_store_keeps_its_hash(config: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "enrol", "issue", "--person", PERSON, "--ttl", "2h"]) == 0
    out = capsys.readouterr().out
    code = re.search(r"activation code for p-\w+: ([0-9A-Z-]{19})", out).group(1)
    assert "single use" in out
    dump = "\n".join(str(row) for row in sqlite3.connect(tmp_path / "s.db").execute("SELECT * FROM entries"))
    assert code not in dump and code.replace("-", "") not in dump
    store = SqliteStore(tmp_path / "s.db")
    activation = ActivationCodes(store).verify(PERSON, code)
    assert 7190 <= activation.expires_at - activation.issued_at <= 7200

    assert main(["--config", str(config), "enrol", "list", "--person", PERSON]) == 0
    listing = capsys.readouterr().out
    assert f"person {PERSON}: 0 factor(s)" in listing
    assert f"outstanding activation code {activation.id}" in listing
    assert code not in listing


@pytest.mark.parametrize("argv", [["--person", "alice"], ["--person", PERSON, "--ttl", "soon"]])
def test_bad_arguments_are_refused(config: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), "enrol", "issue", *argv])
    assert exited.value.code == 2


def test_a_lifetime_out_of_bounds_is_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "enrol", "issue", "--person", PERSON, "--ttl", "60d"]) == 2
    assert "between" in capsys.readouterr().err


def test_factor_key_is_added_to_an_existing_secrets_file(tmp_path: Path) -> None:
    (tmp_path / "secrets.json").write_text(json.dumps({"subject_salt": "s" * 64, "csrf_key": "c" * 64}))
    (tmp_path / "secrets.json").chmod(0o600)
    ring = KeyRing(tmp_path)
    assert ring.secrets["subject_salt"] == "s" * 64 and ring.secrets["csrf_key"] == "c" * 64
    assert len(ring.secrets["factor_key"]) == 64
    on_disk = json.loads((tmp_path / "secrets.json").read_text())
    assert on_disk["factor_key"] == ring.secrets["factor_key"]
    assert KeyRing(tmp_path).secrets["factor_key"] == ring.secrets["factor_key"]  # stable
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600


def _audit_events(tmp_path: Path) -> list[dict]:
    from idbroker.audit import open_audit_log
    from idbroker.audit.log import records

    return [record.event for record in records(open_audit_log(f"sqlite:///{tmp_path}/s-audit.db"))]


def test_an_issued_code_and_a_key_rotation_are_in_the_audit_trail(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", str(config), "enrol", "issue", "--person", PERSON, "--issued-by", "fb-beheer"]
    assert main(argv) == 0
    code = re.search(r"activation code for p-\w+: ([0-9A-Z-]{19})", capsys.readouterr().out).group(1)
    assert main(["--config", str(config), "keys", "rotate"]) == 0
    events = _audit_events(tmp_path)
    issued = next(e for e in events if e["type"] == "activation.issued")
    assert issued["person"] == PERSON and issued["detail"]["issued_by"] == "fb-beheer"
    assert code not in json.dumps(events) and code.replace("-", "") not in json.dumps(events)
    rotated = next(e for e in events if e["type"] == "keys.rotated")
    assert len(rotated["detail"]["kids"]) == 3


def test_no_code_is_issued_and_no_key_rotated_when_the_audit_trail_is_unavailable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "idbroker.yaml"
    config.write_text(f"issuer: http://localhost:8080\nkeys_dir: keys\n"
                      f"store:\n  url: sqlite:///{tmp_path}/s.db\naudit:\n  url: redis://127.0.0.1:1/0\n")
    assert main(["--config", str(config), "enrol", "issue", "--person", PERSON]) == 2
    captured = capsys.readouterr()
    assert "audit trail is unavailable" in captured.err and "activation code for" not in captured.out
    assert ActivationCodes(SqliteStore(tmp_path / "s.db")).outstanding(PERSON) is None
    kids_before = [k["kid"] for k in KeyRing(tmp_path / "keys").public_jwks()["keys"]]
    assert main(["--config", str(config), "keys", "rotate"]) == 2
    assert [k["kid"] for k in KeyRing(tmp_path / "keys").public_jwks()["keys"]] == kids_before
