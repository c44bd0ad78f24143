"""The administrator's tools: ``idbroker policy check | explain | test | diff``."""

from __future__ import annotations

import json
import shutil
import textwrap
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from idbroker.cli import main
from idbroker.policy import PersonFacts, load_policy
from idbroker.policy.diff import diff_policies
from idbroker.policy.explain import explain, person_from_claims
from idbroker.upstream.base import UpstreamIdentity, mapped_attributes

REPO = Path(__file__).resolve().parents[2]
AMS = ZoneInfo("Europe/Amsterdam")


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A copy of the example chain, to change."""
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    return target


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- check ---------------------------------------------------------------------------------

def test_check_passes_the_example_chain(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "--dir", str(REPO / "policies"))
    assert code == 0
    assert "policy in" in out and "6 organisations, 13 teams" in out and "3 clients" in out


def test_check_names_each_problem_and_exits_1(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teams = policies / "teams-woonstichting-domstad.yaml"
    teams.write_text(teams.read_text().replace("zvh-gastportaal: [", "zvh-casus: [zvh.casus.lezen]\n"
                                               "          zvh-gastportaal: ["))
    clients = policies / "clients.yaml"
    clients.write_text(clients.read_text().replace("    availability: 24x7\n", "    availability: 24/7\n"))
    code, out, _ = run(capsys, "check", "--dir", str(policies))
    assert code == 1
    assert "2 problem(s)" in out
    assert ("clients.yaml:24: clients[0].availability: Input should be '24x7' or 'office-hours' "
            "(got '24/7')") in out
    assert ("teams-woonstichting-domstad.yaml:11: team 'domstad-casus-2026-0412' roles[0].grants.zvh-casus: "
            "organisation 'woonstichting-domstad' is an incidental third party") in out


def test_commands_need_a_policy_that_passes_check(policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (policies / "rotas.yaml").write_text(
        "rotas: [{id: x, name: X, windows: [{days: [mon], from: a, until: b}]}]")
    code, _, err = run(capsys, "test", "--dir", str(policies))
    assert code == 2 and "does not pass check" in err and "rotas.yaml:1:" in err


# --- explain -------------------------------------------------------------------------------

def test_explain_names_the_rule_chain_and_why_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    person = tmp_path / "pieter.yaml"
    person.write_text("organisation: ggz-centraal\nsubject: g-5521\nemail: p.devries@ggzcentraal.demo\n"
                      "groups: [crisisdienst]\n")
    code, out, _ = run(capsys, "explain", "--dir", str(REPO / "policies"), "--person", str(person),
                       "--client", "wvggz-portaal", "--at", "2026-11-24T12:00")
    assert code == 0
    assert "at        2026-11-24T12:00+01:00 (Tuesday 12:00 Europe/Amsterdam, CET)" in out
    assert ("  + wvggz.melding.lezen\n"
            "      <- role 'crisisbeoordelaar' (min substantial) of team 'ggz-crisisdienst'  "
            "[teams-ggz-centraal.yaml:7]\n"
            "        <- member rule #1: upstream group 'crisisdienst'  [teams-ggz-centraal.yaml:12]") in out
    assert ("  - wvggz.medische-verklaring.opstellen\n"
            "      role 'psychiater' of team 'ggz-psychiater-achterwacht'  [teams-ggz-centraal.yaml:21] "
            "grants it; the person is named by member rule #1, which does not hold now: off duty per rota "
            "'avond-nacht-weekend'") in out
    assert ("  - wvggz.crisismaatregel.besluiten\n      role 'burgemeester' of team 'utrecht-burgemeester'  "
            "[teams-gemeente-utrecht.yaml:11] grants it, but that team belongs to organisation "
            "'gemeente-utrecht' and the person logs in for 'ggz-centraal'") in out
    # At night the same person is on call: the scope is granted, with its chain.
    code, out, _ = run(capsys, "explain", "--dir", str(REPO / "policies"), "--person", str(person),
                       "--client", "wvggz-portaal", "--at", "2026-11-24T23:00")
    assert "  + wvggz.medische-verklaring.opstellen\n      <- role 'psychiater'" in out
    assert "member rule #1: listed by name (1 person), on duty per rota 'avond-nacht-weekend'" in out
    assert "teams now (2): the person chooses one per session" in out


def test_explain_from_upstream_claims_uses_the_idps_attribute_mapping(
        capsys: pytest.CaptureFixture[str]) -> None:
    claims = json.dumps({"sub": "u-10234", "email": "a.jansen@utrecht.demo", "groups": ["bgz-ondersteuning"],
                         "kamernummer": "2.14", "iss": "https://idp", "nonce": "n"})
    code, out, _ = run(capsys, "explain", "--dir", str(REPO / "policies"), "--claims", claims,
                       "--client", "zvh-casus", "--at", "2026-12-01T10:00")
    assert code == 0
    # The organisation comes from the e-mail domain; a claim the IdP mapping leaves out is
    # ignored, as it would be at login (and said so).
    assert ("note: the attribute mapping of gemeente-utrecht's IdP does not map kamernummer: ignored, as at "
            "login") in out
    assert "person    gemeente-utrecht/u-10234" in out
    assert "member by rule #2: listed by name (1 person)" in out
    assert "  + zvh.casus.regie" in out
    assert "not granted on zvh-casus: nothing" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--claims", "{not json", "--client", "zvh-casus"], "--claims is not JSON"),
    (["--claims", '{"sub": "x"}', "--client", "zvh-casus"], "say which organisation's IdP sent these claims"),
    (["--claims", '{"sub": "x", "organisation": "ggz-centraal"}', "--client", "nope"], "no client 'nope'"),
    (["--claims", '{"sub": "x", "organisation": "ggz-centraal"}', "--client", "zvh-casus",
      "--at", "gisteren"], "--at: 'gisteren' is not a date"),
    (["--person", "/nonexistent/person.yaml", "--client", "zvh-casus"], "No such file or directory"),
    (["--claims", '{"sub": "x", "organisation": "politie-midden-nederland", "groups": [4.5]}',
      "--client", "zvh-casus"],
     "a login with these claims is refused: the mapped attribute 'groups' is not text"),
    (["--claims", '{"sub": "x", "organisation": "politie-midden-nederland", "groups": ["\\ud800"]}',
      "--client", "zvh-casus"],  # a lone surrogate: JSON reads it, no store or page can hold it
     "a login with these claims is refused: the mapped attribute 'groups' is not text"),
])
def test_explain_refuses_bad_input_with_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                               message: str) -> None:
    code, _, err = run(capsys, "explain", "--dir", str(REPO / "policies"), *argv)
    assert code == 2 and message in err


def test_explain_reads_claims_as_a_login_does() -> None:
    """A group sent as a JSON number is its decimal text for both (explain used to match it
    where the login did not)."""
    policy = load_policy(REPO / "policies", environ={})
    claims = {"sub": "p-1", "organisation": "politie-midden-nederland",
              "groups": [4711, "wijkteam-binnenstad"]}
    person = person_from_claims(policy, claims)
    login = PersonFacts.from_identity(UpstreamIdentity(
        organisation="politie-midden-nederland", issuer="https://idp.example", subject="p-1",
        attributes=mapped_attributes({"groups": claims["groups"]})))
    assert person.groups == login.groups == frozenset({"4711", "wijkteam-binnenstad"})
    assert person.attributes == login.attributes


def test_explain_api_lists_granted_and_missing() -> None:
    policy = load_policy(REPO / "policies", environ={})
    person = person_from_claims(policy, {"sub": "d-17", "email": "r.dekker@domstad.demo"})
    result = explain(policy, person, "zvh-casus", datetime(2026, 12, 1, 10, 0, tzinfo=AMS))
    assert result.granted.get("zvh-casus") is None
    assert set(result.missing["zvh-casus"]) == {
        "zvh.casus.lezen", "zvh.casus.bijdragen", "zvh.casusoverleg.deelnemen", "zvh.casus.regie",
        "zvh.agenda.lezen"}
    assert set(result.granted["zvh-gastportaal"]) == {"gast.casus.inbrengen", "gast.casus.ontvangen"}


# --- test ----------------------------------------------------------------------------------

def test_the_example_expectations_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "test", "--dir", str(REPO / "policies"), "-v")
    assert code == 0
    assert "18 passed, 0 failed" in out
    assert "PASS example-chain.yaml:" in out


def test_a_failing_expectation_says_why_and_exits_1(policies: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (policies / "tests" / "extra.yaml").write_text(textwrap.dedent("""\
        expectations:
          - name: the mayor may prepare a crisis measure too
            person: {organisation: gemeente-utrecht, subject: u-10877, groups: [burgemeester-en-locos]}
            client: wvggz-portaal
            at: 2026-11-24T10:00
            gets: [wvggz.crisismaatregel.voorbereiden]
          - name: the mayor may not decide
            person: {organisation: gemeente-utrecht, subject: u-10877, groups: [burgemeester-en-locos]}
            client: wvggz-portaal
            at: 2026-11-24T10:00
            does_not_get: [wvggz.crisismaatregel.besluiten]
            level: high
        """))
    code, out, _ = run(capsys, "test", "--dir", str(policies))
    assert code == 1
    assert "18 passed, 2 failed" in out
    assert "FAIL extra.yaml:2 the mayor may prepare a crisis measure too" in out
    assert ("expected to get wvggz.crisismaatregel.voorbereiden, but does not: role 'wvggz-medewerker' "
            "of team 'utrecht-wvggz'") in out
    assert "the person is not a member (members by: upstream group 'bgz-ondersteuning')" in out
    assert "FAIL extra.yaml:7 the mayor may not decide" in out
    assert ("expected not to get wvggz.crisismaatregel.besluiten, but does: role 'burgemeester' "
            "(min substantial) of team 'utrecht-burgemeester'") in out
    assert "level: expected high, the policy requires substantial" in out


def test_a_typo_in_an_expectation_is_an_error_not_a_pass(policies: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (policies / "tests" / "typo.yaml").write_text(textwrap.dedent("""\
        expectations:
          - name: typo
            person: {organisation: gemeente-utrecht, subject: u-1}
            client: wvggz-portaal
            at: 2026-11-24T10:00
            does_not_get: [wvggz.crisismaatregel.besluit]
          - name: unknown key
            person: {organisation: gemeente-utrecht, subject: u-1}
            client: wvggz-portaal
            at: 2026-11-24T10:00
            get: [wvggz.melding.lezen]
        """))
    code, out, err = run(capsys, "test", "--dir", str(policies))
    assert code == 2
    assert ("typo.yaml:2: expectation 'typo': 'wvggz.crisismaatregel.besluit' is not an application "
            "scope") in err
    assert "typo.yaml:11: expectations[1].get: Extra inputs are not permitted" in err
    assert "broken" in out


# --- diff ----------------------------------------------------------------------------------

POPULATION = """\
persons:
  b.bakker: {organisation: gemeente-utrecht, subject: u-10877, groups: [burgemeester-en-locos]}
  s.elmaci: {organisation: ggz-centraal, subject: g-6610, email: s.elmaci@ggzcentraal.demo,
             groups: [crisisdienst, fact-team-oost]}
  p.devries: {organisation: ggz-centraal, subject: g-5521, groups: [crisisdienst]}
  a.jansen: {organisation: gemeente-utrecht, subject: u-10234, groups: [bgz-ondersteuning]}
"""


def test_diff_shows_who_gains_loses_and_keeps_under_other_conditions(
        policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    population = tmp_path / "population.yaml"
    population.write_text(POPULATION)
    code, out, _ = run(capsys, "diff", str(REPO / "policies"), str(policies), "--population", str(population))
    assert code == 0 and "4 persons compared: 0 gain access, 0 lose access" in out and "no differences" in out

    ggz = policies / "teams-ggz-centraal.yaml"
    text = ggz.read_text()
    text = text.replace(
        "zvh-casus: [zvh.casus.lezen, zvh.casus.bijdragen, zvh.casusoverleg.deelnemen, zvh.agenda.lezen]",
        "zvh-casus: [zvh.casus.lezen, zvh.casusoverleg.deelnemen, zvh.agenda.lezen, zvh.casus.regie]")
    text = text.replace("        rota: avond-nacht-weekend", "        rota: kantooruren")
    ggz.write_text(text)
    code, out, _ = run(capsys, "diff", str(REPO / "policies"), str(policies), "--population", str(population))
    assert code == 1
    assert "s.elmaci (ggz-centraal/g-6610)\n" in out
    assert ("  + zvh-casus: zvh.casus.regie  (team ggz-fact-oost; by upstream group 'fact-team-oost', "
            "role ") in out
    assert ("  - zvh-casus: zvh.casus.bijdragen  (team ggz-fact-oost; was by upstream group "
            "'fact-team-oost'") in out
    assert ("  ~ wvggz-portaal: wvggz.medische-verklaring.opstellen  (team ggz-psychiater-achterwacht): "
            "was by being listed by name, on duty per rota 'avond-nacht-weekend'") in out
    assert "now by being listed by name, on duty per rota 'kantooruren' (mon-fri 08:00-17:00)" in out
    assert "b.bakker" not in out and "a.jansen" not in out
    assert "4 persons compared: 1 gain access, 1 lose access, 1 keep access under changed conditions" in out


def test_diff_api_levels_count_as_conditions(policies: Path) -> None:
    old = load_policy(REPO / "policies", environ={})
    burgemeester = policies / "teams-gemeente-utrecht.yaml"
    burgemeester.write_text(burgemeester.read_text().replace(
        "        name: Burgemeester of loco-burgemeester\n        min_level: substantial",
        "        name: Burgemeester of loco-burgemeester\n        min_level: high"))
    new = load_policy(policies, environ={})
    mayor = PersonFacts("gemeente-utrecht", "u-10877", groups=frozenset({"burgemeester-en-locos"}))
    result = diff_policies(old, new, [("mayor", mayor)])
    (changes,) = result.changed
    assert not changes.gained and not changes.lost
    old_conditions, new_conditions = changes.changed[("utrecht-burgemeester", "wvggz-portaal",
                                                      "wvggz.crisismaatregel.besluiten")]
    assert any("needs substantial" in c for c in old_conditions)
    assert any("needs high" in c for c in new_conditions)


def test_diff_refuses_a_broken_population(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    population = tmp_path / "population.yaml"
    population.write_text("persons:\n  - {organisation: ggz-centraal}\n")
    code, _, err = run(capsys, "diff", str(REPO / "policies"), str(REPO / "policies"), "--population",
                       str(population))
    assert code == 2 and "population.yaml:2: 'subject' is required" in err


def test_the_example_population_file_reads(capsys: pytest.CaptureFixture[str]) -> None:
    population = REPO / "policies" / "tests" / "population" / "example-chain.yaml"
    code, out, _ = run(capsys, "diff", str(REPO / "policies"), str(REPO / "policies"), "--population",
                       str(population))
    assert code == 0 and "12 persons compared" in out and "no differences" in out
