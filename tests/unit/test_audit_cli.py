"""``idbroker audit ...`` as an operator and a privacy officer use it (SQLite backend), and the
``audit`` settings section."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from pathlib import Path

import pytest

from idbroker.audit import AuditEvent, AuditLog, EventType, open_for_settings
from idbroker.audit.chain import now_ms
from idbroker.audit.cli import parse_time
from idbroker.audit.log import records
from idbroker.cli import main
from idbroker.config import ConfigError, Settings, default_audit_url, load_settings
from idbroker.keys import KeyRing

SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"
HIGH = "http://eidas.europa.eu/LoA/high"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "idbroker.yaml"
    path.write_text("issuer: https://idbroker.test\nstore:\n  url: sqlite:///var/store.sqlite3\n"
                    "audit:\n  checkpoint_every: 5\n")
    return path


@pytest.fixture
def settings(config: Path) -> Settings:
    return load_settings(config, environ={})


def open_log(settings: Settings) -> AuditLog:
    return open_for_settings(settings, KeyRing(settings.keys_dir))


def populate(settings: Settings) -> None:
    audit = open_log(settings)
    for n in range(6):
        audit.record(AuditEvent(type=EventType.TOKEN_ISSUED, person=f"p-{n % 2}", organisation="ggz-centraal",
                                team="piket", client="wvggz-portaal", acr=SUBSTANTIAL, scopes=("openid",),
                                source_ip="192.0.2.1", user_agent="=HYPERLINK(\"http://evil\")"))
    audit.record(AuditEvent(type=EventType.REFUSAL, outcome="refused", reason="loa_too_low", person="p-1",
                            organisation="gemeente-utrecht", client="zvh-casus", acr=HIGH))
    audit.record(AuditEvent(type=EventType.STEPUP_COMPLETED, outcome="failure", reason="totp_wrong",
                            person="p-0", organisation="ggz-centraal", factors=("otp",)))
    audit.close()


def run(config: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["--config", str(config), "audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("where", ["body", "checkpoint"])
def test_verify_names_a_value_stored_as_bytes(config: Path, settings: Settings, where: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite keeps whatever type it is given: bytes where text belongs is a changed record."""
    populate(settings)
    with sqlite3.connect(settings.audit_url.removeprefix("sqlite:///")) as db:
        if where == "body":
            db.execute("UPDATE audit_events SET body = CAST(body AS BLOB) WHERE seq = 3")
        else:
            db.execute("UPDATE audit_checkpoints SET token = CAST(token AS BLOB) WHERE seq = 5")
    code, out, err = run(config, "verify", capsys=capsys)
    assert code == 1 and "Traceback" not in err
    assert ("seq 3" if where == "body" else "seq 5") in out


# --- settings ------------------------------------------------------------------------------------


def test_the_audit_log_lives_beside_the_store_by_default(settings: Settings, config: Path) -> None:
    assert settings.audit_url == f"sqlite:///{config.parent / 'var/store-audit.sqlite3'}"
    assert settings.audit.retention_days == 1825 and settings.audit.checkpoint_every == 5
    assert default_audit_url("redis://r:6379/0") == "redis://r:6379/0"
    assert default_audit_url("sqlite:///:memory:") == "sqlite:///:memory:"


def test_the_audit_url_and_retention_come_from_file_or_environment(config: Path) -> None:
    settings = load_settings(config, environ={"IDBROKER_AUDIT__URL": "sqlite:///audit/trail.db",
                                              "IDBROKER_AUDIT__RETENTION_DAYS": "3650"})
    assert settings.audit_url == f"sqlite:///{config.parent / 'audit/trail.db'}"
    assert settings.audit.retention_days == 3650


@pytest.mark.parametrize(("environ", "named"), [
    ({"IDBROKER_AUDIT__RETENTION_DAYS": "0"}, "audit.retention_days"),
    ({"IDBROKER_AUDIT__CHECKPOINT_EVERY": "-1"}, "audit.checkpoint_every"),
    ({"IDBROKER_AUDIT__RETENTON_DAYS": "30"}, "audit.retenton_days: unknown setting"),
])
def test_a_bad_audit_setting_is_named(config: Path, environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(config, environ=environ)


@pytest.mark.parametrize(("value", "end", "expected"), [
    ("2025-03-01", False, "2025-03-01T00:00:00+00:00"),
    ("2025-03-01", True, "2025-03-02T00:00:00+00:00"),
    ("2025-03-01T08:00:00+01:00", True, "2025-03-01T07:00:00+00:00"),
    ("2025-03-01T08:00:00Z", False, "2025-03-01T08:00:00+00:00"),
    ("2025-03-01T08:00:00", False, "2025-03-01T08:00:00+00:00"),
])
def test_dates_are_utc(value: str, end: bool, expected: str) -> None:
    from datetime import UTC, datetime

    expected_ms = int(datetime.fromisoformat(expected).astimezone(UTC).timestamp() * 1000)
    assert parse_time(value, end=end) == expected_ms
    with pytest.raises(ValueError, match="not a date"):
        parse_time("yesterday")


# --- verify --------------------------------------------------------------------------------------


def test_verify_passes_an_intact_log(config: Path, settings: Settings,
        capsys: pytest.CaptureFixture[str]) -> None:
    populate(settings)
    code, out, _ = run(config, "verify", capsys=capsys)
    assert code == 0
    assert out.startswith("audit log OK: 8 events (seq 1..8), 1 valid signed checkpoints, last at seq 5")
    assert "6..8 are not yet covered" in out


def test_verify_fails_and_says_where(config: Path, settings: Settings,
        capsys: pytest.CaptureFixture[str]) -> None:
    populate(settings)
    with sqlite3.connect(settings.audit_url.removeprefix("sqlite:///")) as db:
        body = db.execute("SELECT body FROM audit_events WHERE seq = 3").fetchone()[0]
        db.execute("UPDATE audit_events SET body = ? WHERE seq = 3", (body.replace("p-0", "p-9"),))
    code, out, _ = run(config, "verify", capsys=capsys)
    assert code == 1
    assert "FAILED: 2 problems" in out
    assert "PROBLEM seq 3 (event " in out and "the event was changed" in out
    assert "checkpoint" in out  # the signed checkpoint at seq 5 no longer matches either
    code, out, _ = run(config, "verify", "--json", capsys=capsys)
    result = json.loads(out)
    assert code == 1 and result["ok"] is False and result["problems"][0]["seq"] == 3


def test_verify_with_outside_anchors_finds_a_cut_off_tail(config: Path, settings: Settings,
                                                         capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    populate(settings)
    code, out, _ = run(config, "checkpoint", capsys=capsys)
    assert code == 0 and out.startswith("audit checkpoint seq=8 hash=")
    anchors = tmp_path / "anchors.log"
    anchors.write_text(f"2025-03-01 10:00:00 INFO idbroker.audit {out.strip()}\n")
    path = settings.audit_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:  # an insider removes the last two events, head and checkpoints
        db.execute("DELETE FROM audit_events WHERE seq > 6")
        db.execute("DELETE FROM audit_checkpoints")
        seq, hash_, time_ms = db.execute("SELECT seq, hash, time_ms FROM audit_events"
                                         " WHERE seq = 6").fetchone()
        db.execute("UPDATE audit_head SET seq = ?, hash = ?, time_ms = ?", (seq, hash_, time_ms))
    assert run(config, "verify", capsys=capsys)[0] == 0
    code, out, _ = run(config, "verify", "--anchors", str(anchors), capsys=capsys)
    assert code == 1 and "seq 8: removed" in out


# --- export --------------------------------------------------------------------------------------


def test_export_one_person_as_jsonl_and_record_the_export_first(
        config: Path, settings: Settings,
        capsys: pytest.CaptureFixture[str]) -> None:
    populate(settings)
    code, out, _ = run(config, "export", "--person", "p-1", "--purpose", "AVG-inzage 2025-17", capsys=capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["seq"], r["type"], r["outcome"]) for r in rows] == [
        (2, "token.issued", "success"), (4, "token.issued", "success"), (6, "token.issued", "success"),
        (7, "refusal", "refused")]
    assert rows[3]["reason"] == "loa_too_low" and rows[3]["acr"] == HIGH
    assert rows[0]["time"].endswith("Z") and len(rows[0]["hash"]) == 64 and rows[0]["scopes"] == ["openid"]
    exported = [r for r in records(open_log(settings)) if r.event["type"] == "audit.exported"]
    assert len(exported) == 1 and exported[0].seq == 9
    assert exported[0].event["detail"]["filter"] == {"person": "p-1"}
    assert exported[0].event["detail"]["purpose"] == "AVG-inzage 2025-17"
    assert exported[0].event["detail"]["operator"]


def test_export_csv_for_a_client_in_a_period_defuses_formulas(
        config: Path, settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    populate(settings)
    output = tmp_path / "out" / "export.csv"
    today = time.strftime("%Y-%m-%d", time.gmtime(now_ms() / 1000))
    code, _, err = run(config, "export", "--client", "wvggz-portaal", "--from", today, "--to", today,
                       "--format", "csv", "--output", str(output), capsys=capsys)
    assert code == 0 and "exported 6 events" in err
    assert output.stat().st_mode & 0o077 == 0
    table = list(csv.DictReader(io.StringIO(output.read_text())))
    assert len(table) == 6 and {row["client"] for row in table} == {"wvggz-portaal"}
    assert table[0]["user_agent"] == "'=HYPERLINK(\"http://evil\")"
    assert table[0]["scopes"] == "openid" and table[0]["team"] == "piket"
    code, out, _ = run(config, "export", "--client", "wvggz-portaal", "--to", "2000-01-01", capsys=capsys)
    assert code == 0 and out == ""


def test_export_needs_a_filter_or_all(config: Path, settings: Settings,
        capsys: pytest.CaptureFixture[str]) -> None:
    populate(settings)
    code, out, err = run(config, "export", capsys=capsys)
    assert code == 2 and out == "" and "--person, --client, --team or --subject" in err
    assert open_log(settings).head().seq == 8  # nothing recorded, nothing exported
    code, out, _ = run(config, "export", "--all", "--format", "jsonl", capsys=capsys)
    assert code == 0 and len(out.splitlines()) == 9  # the export itself is the 9th event


def test_export_by_subject_finds_the_person_behind_a_pairwise_sub(
        config: Path, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    audit = open_log(settings)
    for person, client, sub in (("p-anna", "portaal", "s-anna-keten"), ("p-anna", "casus", "s-anna-zorg"),
                                ("p-bert", "portaal", "s-bert-keten")):
        audit.record(AuditEvent(type=EventType.TOKEN_ISSUED, person=person, client=client,
                                detail={"jti": f"j-{sub}", "subject": sub}))
    audit.close()
    code, out, _ = run(config, "export", "--subject", "s-anna-zorg", "--purpose", "case 12", capsys=capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(r["person"], r["client"]) for r in rows] == [("p-anna", "casus")]
    code, out, _ = run(config, "export", "--subject", "s-anna-keten", "--client", "casus", capsys=capsys)
    assert code == 0 and out == ""  # filters combine
    exported = [r for r in records(open_log(settings)) if r.event["type"] == "audit.exported"]
    assert exported[0].event["detail"]["filter"] == {"subject": "s-anna-zorg"}


def test_no_export_leaves_when_the_export_cannot_be_recorded(
        config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the audit directory should be")
    config.write_text(config.read_text() + "  url: sqlite:///blocked/audit.sqlite3\n")
    code, out, err = run(config, "export", "--person", "p-1", capsys=capsys)
    assert code == 2 and out == "" and "unavailable" in err


# --- report --------------------------------------------------------------------------------------


def test_report_counts_per_organisation_client_level_and_reason(
        config: Path, settings: Settings,
        capsys: pytest.CaptureFixture[str]) -> None:
    populate(settings)
    code, out, _ = run(config, "report", "--format", "json", capsys=capsys)
    assert code == 0
    report = json.loads(out)
    assert report["total"] == 8  # the report's own audit.reported event comes after
    assert report["organisation"] == {"ggz-centraal": 7, "gemeente-utrecht": 1}
    assert report["client"] == {"wvggz-portaal": 6, "zvh-casus": 1, "(none)": 1}
    assert report["level"] == {SUBSTANTIAL: 6, HIGH: 1}
    assert report["refused_by_reason"] == {"loa_too_low": 1}
    assert report["failed_by_reason"] == {"totp_wrong": 1}
    assert report["type"] == {"token.issued": 6, "refusal": 1, "stepup.completed": 1}
    code, out, _ = run(config, "report", capsys=capsys)
    assert code == 0 and "by refused by reason:" in out and "loa_too_low" in out
    assert [r.event["type"] for r in records(open_log(settings))][-2:] == ["audit.reported"] * 2


# --- prune and checkpoint --------------------------------------------------------------------------


def test_prune_removes_old_events_and_verification_still_passes(
        config: Path, settings: Settings,
        capsys: pytest.CaptureFixture[str]) -> None:
    populate(settings)
    code, out, _ = run(config, "prune", capsys=capsys)  # retention 1825 days: nothing is that old
    assert code == 0 and out.startswith("nothing to prune")
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    code, out, _ = run(config, "prune", "--before", tomorrow, capsys=capsys)
    assert code == 0 and out.startswith("pruned 8 events") and "checkpoint at seq 8" in out
    remaining = list(records(open_log(settings)))
    assert [(r.seq, r.event["type"]) for r in remaining] == [(9, "audit.pruned")]
    assert remaining[0].event["detail"]["removed"] == 8
    code, out, _ = run(config, "verify", capsys=capsys)
    assert code == 0, out


def test_prune_refuses_a_tampered_log(config: Path, settings: Settings,
        capsys: pytest.CaptureFixture[str]) -> None:
    populate(settings)
    with sqlite3.connect(settings.audit_url.removeprefix("sqlite:///")) as db:
        db.execute("DELETE FROM audit_events WHERE seq = 2")
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    code, _, err = run(config, "prune", "--before", tomorrow, capsys=capsys)
    assert code == 1 and "nothing was pruned" in err
    assert "PROBLEM seq 3 (event" in err and "removed: event seq 2 is missing" in err
    assert open_log(settings).first_seq() == 1


def test_checkpoint_on_an_empty_log(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(config, "checkpoint", capsys=capsys)
    assert code == 0 and "empty" in out

