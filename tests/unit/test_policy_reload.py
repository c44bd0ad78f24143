"""The running broker's policy: reloaded when the files change, never replaced by one that
fails check, and every refusal logged loudly."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from idbroker.policy import PolicyError
from idbroker.policy.reload import PolicyHolder

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    return target


def write(path: Path, text: str) -> None:
    """Write atomically (as deploy tools should), and make sure the mtime moves."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def rename_team(policies: Path) -> None:
    teams = policies / "teams-politie.yaml"
    write(teams, teams.read_text().replace("Wijkteam Utrecht-Binnenstad", "Wijkteam Binnenstad"))


def test_a_valid_change_is_put_in_force_once_it_has_stayed_for_an_interval(policies: Path) -> None:
    clock = Clock()
    holder = PolicyHolder(policies, interval=5, environ={}, clock=clock)
    first, version = holder.current(), holder.version
    rename_team(policies)
    clock.now += 4
    assert holder.current() is first  # not looked at yet
    clock.now += 1
    assert holder.current() is first  # seen changed: still being written?
    clock.now += 5
    second = holder.current()
    assert second is not first and holder.version != version
    assert second.teams["politie-wijkteam-binnenstad"].name == "Wijkteam Binnenstad"
    assert holder.policy is second


def test_a_broken_change_keeps_the_old_policy_and_is_logged_at_error_once(
        policies: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    holder = PolicyHolder(policies, interval=1, environ={}, clock=clock)
    good, version = holder.current(), holder.version
    teams = policies / "teams-woonstichting-domstad.yaml"
    write(teams, teams.read_text().replace("zvh-gastportaal: [", "zvh-casus: [zvh.casus.lezen]\n"
                                           "          zvh-gastportaal: ["))
    write(policies / "rotas.yaml", (policies / "rotas.yaml").read_text().replace('"08:00"}', '"8 uur"}', 1))
    caplog.set_level(logging.INFO, logger="idbroker.policy")
    clock.now += 1
    holder.current()  # seen changed
    clock.now += 1
    assert holder.current() is good and holder.version == version
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert f"policy NOT reloaded: {policies} version" in message
    assert f"still enforcing version {version}" in message
    assert "2 problem(s)" in message
    assert "teams-woonstichting-domstad.yaml:11: team 'domstad-casus-2026-0412'" in message
    assert "rotas.yaml:9: rotas[0].windows[0].until: '8 uur' is not a time of day" in message
    assert {str(problem).split(":")[0] for problem in holder.refused_problems} == {
        "teams-woonstichting-domstad.yaml", "rotas.yaml"}
    # The same broken version is not logged again at every look ...
    clock.now += 1
    holder.current()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    # ... and once fixed, the fixed version is put in force.
    write(policies / "rotas.yaml", (REPO / "policies" / "rotas.yaml").read_text())
    write(teams, (REPO / "policies" / "teams-woonstichting-domstad.yaml").read_text())
    rename_team(policies)
    clock.now += 1
    holder.current()
    clock.now += 1
    assert holder.current() is not good and holder.refused_problems == ()
    assert any(r.levelno == logging.WARNING and "policy reloaded" in r.getMessage() for r in caplog.records)


def test_removing_a_file_that_others_refer_to_is_refused(policies: Path) -> None:
    clock = Clock()
    holder = PolicyHolder(policies, interval=1, environ={}, clock=clock)
    good = holder.current()
    (policies / "rotas.yaml").unlink()
    assert holder.refresh(force=True) is False
    assert holder.current() is good
    assert any("rota 'avond-nacht-weekend' does not exist" in str(p) for p in holder.refused_problems)


def test_touching_files_without_changing_them_does_not_reload(policies: Path) -> None:
    clock = Clock()
    holder = PolicyHolder(policies, interval=1, environ={}, clock=clock)
    first = holder.current()
    path = policies / "clients.yaml"
    write(path, path.read_text())
    clock.now += 1
    assert holder.current() is first


def test_the_broker_never_starts_on_a_broken_policy(policies: Path) -> None:
    (policies / "clients.yaml").write_bytes(b"clients: [\xff]\n")
    with pytest.raises(PolicyError, match=r"clients.yaml:1: not UTF-8"):
        PolicyHolder(policies, environ={})


def test_readers_always_see_a_whole_policy_while_it_is_replaced(policies: Path) -> None:
    clock = Clock()
    holder = PolicyHolder(policies, interval=3600, environ={}, clock=clock)
    names = {"Wijkteam Utrecht-Binnenstad", "Wijkteam Binnenstad"}
    seen: set[str] = set()
    failures: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                policy = holder.current()
                seen.add(policy.teams["politie-wijkteam-binnenstad"].name)
                assert "zvh-casus" in policy.clients
                time.sleep(0.001)  # a request's own work
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    teams = policies / "teams-politie.yaml"
    original = teams.read_text()
    renamed = original.replace("Wijkteam Utrecht-Binnenstad", "Wijkteam Binnenstad")
    for round_ in range(4):
        write(teams, original if round_ % 2 else renamed)
        assert holder.refresh(force=True)
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures
    assert seen <= names and seen


def test_a_background_watcher_reloads_without_any_request(policies: Path) -> None:
    holder = PolicyHolder(policies, interval=0.02, environ={})
    first = holder.current()
    holder.start()
    try:
        rename_team(policies)
        deadline = time.monotonic() + 10
        while holder.current() is first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert holder.current().teams["politie-wijkteam-binnenstad"].name == "Wijkteam Binnenstad"
    finally:
        holder.stop()


def test_a_file_still_being_written_is_not_read(policies: Path) -> None:
    """Copied in place (not renamed), a teams file can be cut off after a member rule's
    ``subjects:``: valid YAML whose rule then holds for ever and round the clock. A change is
    read only once it has stayed for a whole interval, so the finished file is what counts."""
    clock = Clock()
    holder = PolicyHolder(policies, interval=5, environ={}, clock=clock)
    first = holder.current()
    teams = policies / "teams-om.yaml"
    full = teams.read_bytes()
    rule = b"      - subjects: [om-2310, om-2417]\n"
    teams.write_bytes(full[:full.index(rule) + len(rule)])  # the writer is half-way
    clock.now += 5
    assert holder.current() is first
    teams.write_bytes(full.replace(b"Parket Midden-Nederland piket", b"Piket"))  # ... and done
    clock.now += 5
    assert holder.current() is first  # changed again since the last look
    clock.now += 5
    finished = holder.current()
    assert finished is not first and finished.teams["om-parket-piket"].name == "Piket"
    member = finished.teams["om-parket-piket"].members[1]
    assert member.valid_until is not None and member.rota == "avond-nacht-weekend"


def test_a_policy_that_cannot_even_be_checked_is_refused_and_told(
        policies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker's own failure keeps the old policy, like a policy with problems, and the
    listener (the broker's audit trail) hears of it."""
    told: list[tuple[str, str, int]] = []
    holder = PolicyHolder(policies, interval=5, environ={}, listener=lambda *args: told.append(args))
    good, version = holder.current(), holder.version
    rename_team(policies)
    monkeypatch.setattr("idbroker.policy.reload.check_policy", lambda *args, **kwargs: 1 / 0)
    assert holder.refresh(force=True) is False
    assert holder.current() is good and holder.version == version
    assert len(told) == 1 and told[0][0] == version and told[0][2] == 1
    assert "could not be checked (ZeroDivisionError)" in str(holder.refused_problems[0])
