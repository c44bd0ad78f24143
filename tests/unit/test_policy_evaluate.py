"""Evaluating a login: teams (and the rule behind each), roles, scopes per audience, the
level required, acting for one team, and the refusals."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from idbroker.assurance.levels import Level
from idbroker.policy import NotAMember, PersonFacts, Policy, UnknownClient, load_policy
from idbroker.upstream.base import UpstreamIdentity

REPO = Path(__file__).resolve().parents[2]
AMS = ZoneInfo("Europe/Amsterdam")
TUESDAY_NOON = datetime(2026, 11, 24, 12, 0, tzinfo=AMS)
TUESDAY_NIGHT = datetime(2026, 11, 24, 23, 0, tzinfo=AMS)

CHAIN = """\
organisations:
  - id: ggz
    name: GGZ
    idp: {protocol: oidc, issuer: "https://idp.ggz.example", client_id: idbroker}
  - id: gemeente
    name: Gemeente
    kind: government
    idp: {protocol: oidc, issuer: "https://idp.gemeente.example", client_id: idbroker}
clients:
  - id: portaal
    name: Portaal
    redirect_uris: ["https://portaal.example/cb"]
    jwks_uri: https://portaal.example/jwks
    min_level: substantial
    application_scopes: [melding.lezen, melding.indienen, verklaring.opstellen,
                         {name: cijfers, personal_data: false}]
  - id: casus
    name: Casus
    redirect_uris: ["https://casus.example/cb"]
    jwks_uri: https://casus.example/jwks
    min_level: low
    application_scopes: [casus.lezen, {name: agenda, personal_data: false}]
rotas:
  - id: avond
    name: Avond en nacht
    windows: [{days: [mon-fri], from: "17:00", until: "08:00"}]
teams:
  - id: crisisdienst
    organisation: ggz
    name: Crisisdienst
    roles:
      - id: beoordelaar
        grants: {portaal: [melding.lezen, melding.indienen]}
      - id: psychiater
        min_level: high
        grants: {portaal: [verklaring.opstellen]}
    members:
      - group: crisisdienst
        roles: [beoordelaar]
      - attribute: {name: functie, equals: psychiater}
      - subjects: [g-1]
        rota: avond
        roles: [psychiater]
  - id: fact
    organisation: ggz
    name: FACT
    roles:
      - id: zorgverlener
        grants: {casus: [casus.lezen, agenda]}
      - id: statisticus
        min_level: low
        grants: {portaal: [cijfers], casus: [agenda]}
    members:
      - emails: [s.elmaci@ggz.example]
        valid_from: 2026-11-01
        valid_until: 2026-11-30
  - id: gemeente-crisis
    organisation: gemeente
    name: Gemeente crisisteam
    roles:
      - id: medewerker
        grants: {portaal: [melding.lezen]}
    members:
      - group: crisisdienst
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    directory = tmp_path_factory.mktemp("policy")
    (directory / "chain.yaml").write_text(CHAIN)
    return load_policy(directory, environ={})


def person(**facts: object) -> PersonFacts:
    base: dict = {"organisation": "ggz", "subject": "g-9"}
    return PersonFacts(**(base | facts))


def test_a_group_makes_a_member_with_the_rules_roles(policy: Policy) -> None:
    decision = policy.evaluate(person(groups={"crisisdienst", "onbekend"}), "portaal", TUESDAY_NOON)
    assert decision.team_ids == ("crisisdienst",)
    team = decision.for_team("crisisdienst")
    assert team.roles == ("beoordelaar",)  # the rule names only this role
    assert team.scopes_for("portaal") == {"melding.lezen", "melding.indienen"}
    assert [rule.description for rule in team.rules] == ["upstream group 'crisisdienst'"]
    assert team.required_level is Level.SUBSTANTIAL
    assert decision.person.person_id == "ggz/g-9"


def test_another_organisations_idp_cannot_make_anyone_a_member(policy: Policy) -> None:
    """The gemeente has a group with the same name: it makes members of the gemeente's team only."""
    official = person(organisation="gemeente", groups={"crisisdienst"})
    decision = policy.evaluate(official, "portaal", TUESDAY_NOON)
    assert decision.team_ids == ("gemeente-crisis",)
    decision = policy.evaluate(person(organisation="elders", subject="g-1", groups={"crisisdienst"}),
                               "portaal", TUESDAY_NIGHT)
    assert decision.teams == {} and decision.scopes == {}


def test_an_attribute_match_gives_all_roles_of_the_team_and_the_highest_level(policy: Policy) -> None:
    decision = policy.evaluate(person(attributes={"functie": ["verpleegkundige", "psychiater"]}), "portaal",
                               TUESDAY_NOON)
    team = decision.for_team("crisisdienst")
    assert team.roles == ("beoordelaar", "psychiater")
    assert team.scopes_for("portaal") == {"melding.lezen", "melding.indienen", "verklaring.opstellen"}
    assert team.required_level is Level.HIGH  # psychiater needs high and grants on portaal
    assert team.roles_for("portaal") == ("beoordelaar", "psychiater")
    # What a person who reached only substantial may use:
    assert team.scopes_at(Level.SUBSTANTIAL, "portaal") == {"melding.lezen", "melding.indienen"}


def test_an_on_call_member_holds_the_role_only_while_on_duty(policy: Policy) -> None:
    on_call = person(subject="g-1", groups={"crisisdienst"})
    day = policy.evaluate(on_call, "portaal", TUESDAY_NOON)
    assert day.for_team("crisisdienst").roles == ("beoordelaar",)
    assert [item.reason for item in day.inactive] == [
        "off duty per rota 'avond' (mon-fri 17:00-08:00 next day)"]
    night = policy.evaluate(on_call, "portaal", TUESDAY_NIGHT)
    team = night.for_team("crisisdienst")
    assert team.roles == ("beoordelaar", "psychiater")  # two rules at once: the union, in the team's order
    assert len(team.rules) == 2 and night.inactive == ()
    assert "verklaring.opstellen" in team.scopes_for("portaal") and team.required_level is Level.HIGH


def test_explicit_e_mail_members_are_matched_without_case_and_only_while_valid(policy: Policy) -> None:
    elmaci = person(subject="g-6610", email="S.Elmaci@GGZ.example")
    assert policy.evaluate(elmaci, "casus", datetime(2026, 11, 1, 0, 0, tzinfo=AMS)).team_ids == ("fact",)
    # valid_until 2026-11-30 includes that whole day (Amsterdam time) ...
    assert policy.evaluate(elmaci, "casus", datetime(2026, 11, 30, 23, 59, tzinfo=AMS)).team_ids == ("fact",)
    # ... and ends at midnight.
    after = policy.evaluate(elmaci, "casus", datetime(2026, 11, 30, 23, 0, tzinfo=UTC))
    assert after.teams == {}
    assert after.inactive[0].reason == "no longer valid (until 2026-12-01T00:00+01:00)"
    before = policy.evaluate(elmaci, "casus", datetime(2026, 10, 31, 22, 59, tzinfo=UTC))
    assert before.inactive[0].reason == "not yet valid (from 2026-11-01T00:00+01:00)"


def test_required_level_is_the_clients_minimum_and_the_roles_that_grant_on_it(policy: Policy) -> None:
    elmaci = person(subject="g-6610", email="s.elmaci@ggz.example")
    on_casus = policy.evaluate(elmaci, "casus", TUESDAY_NOON)
    # casus asks for low; zorgverlener (substantial) grants on casus: substantial.
    assert on_casus.for_team("fact").required_level is Level.SUBSTANTIAL
    on_portaal = policy.evaluate(elmaci, "portaal", TUESDAY_NOON)
    # On portaal only statisticus (low) grants; the portal's own minimum (substantial) decides.
    assert on_portaal.for_team("fact").required_level is Level.SUBSTANTIAL
    assert on_portaal.client_level is Level.SUBSTANTIAL


def test_a_person_in_two_teams_chooses_and_gets_exactly_that_teams_scopes(policy: Policy) -> None:
    both = person(subject="g-6610", email="s.elmaci@ggz.example", groups={"crisisdienst"})
    decision = policy.evaluate(both, "portaal", TUESDAY_NOON)
    assert set(decision.team_ids) == {"crisisdienst", "fact"}
    assert set(decision.teams_for_client) == {"crisisdienst", "fact"}
    assert decision.for_team("fact").scopes_for("portaal") == {"cijfers"}
    assert decision.for_team("crisisdienst").scopes_for("portaal") == {"melding.lezen", "melding.indienen"}
    assert decision.scopes["portaal"] == {"cijfers", "melding.lezen", "melding.indienen"}
    # On casus only one of the two teams grants anything: nothing to choose.
    assert policy.evaluate(both, "casus", TUESDAY_NOON).teams_for_client == ("fact",)


def test_refusals(policy: Policy) -> None:
    decision = policy.evaluate(person(groups={"crisisdienst"}), "portaal", TUESDAY_NOON)
    with pytest.raises(NotAMember):
        decision.for_team("fact")
    with pytest.raises(UnknownClient):
        policy.evaluate(person(), "onbekend", TUESDAY_NOON)
    with pytest.raises(ValueError, match="aware"):
        policy.evaluate(person(), "portaal", datetime(2026, 11, 24, 12, 0))


def test_nobody_in_no_team_gets_application_scopes(policy: Policy) -> None:
    decision = policy.evaluate(person(groups={"iets-anders"}), "portaal", TUESDAY_NOON)
    assert decision.teams == {} and decision.scopes == {} and decision.teams_for_client == ()
    assert decision.required_level is Level.SUBSTANTIAL  # the client's own minimum


def test_reasons_name_the_chain(policy: Policy) -> None:
    decision = policy.evaluate(person(subject="g-1", groups={"crisisdienst"}), "portaal", TUESDAY_NOON)
    reasons = decision.reasons()
    assert ("portaal:melding.lezen <- role 'beoordelaar' (min substantial) [chain.yaml:32] "
            "<- team 'crisisdienst' member rule #1 (upstream group 'crisisdienst') "
            "[chain.yaml:38]") in reasons
    assert any("member rule #3" in reason and "off duty per rota 'avond'" in reason for reason in reasons)


def test_person_facts_from_an_upstream_identity() -> None:
    identity = UpstreamIdentity(organisation="ggz", issuer="https://idp.ggz.example", subject="g-1",
                                attributes={"email": "p@ggz.example", "groups": ["a", "b"], "functie": "x"})
    facts = PersonFacts.from_identity(identity, person_id="pseudo-123")
    assert facts.groups == {"a", "b"} and facts.email == "p@ggz.example" and facts.person_id == "pseudo-123"
    assert facts.attributes["functie"] == "x"
    single = PersonFacts.from_identity(UpstreamIdentity("ggz", "https://i", "s", {"groups": "one"}))
    assert single.groups == {"one"} and single.person_id == "ggz/s"


def test_the_example_chain_demo_accounts() -> None:
    example = load_policy(REPO / "policies", environ={})
    elmaci = PersonFacts("ggz-centraal", "g-6610", "s.elmaci@ggzcentraal.demo",
                         frozenset({"crisisdienst", "fact-team-oost"}))
    decision = example.evaluate(elmaci, "zvh-casus", TUESDAY_NOON)
    assert set(decision.team_ids) == {"ggz-crisisdienst", "ggz-fact-oost"}
    assert decision.teams_for_client == ("ggz-fact-oost",)
    mayor = PersonFacts("gemeente-utrecht", "u-10877", groups=frozenset({"burgemeester-en-locos"}))
    night = example.evaluate(mayor, "wvggz-portaal", TUESDAY_NIGHT)
    assert "wvggz.crisismaatregel.besluiten" in night.scopes["wvggz-portaal"]


def test_a_big_team_list_costs_nothing_for_someone_else(tmp_path: Path) -> None:
    """Evaluation looks up the person's own keys: 2,000 listed persons in another team do not
    appear as candidates for this one."""
    listed = ", ".join(f"p-{n}" for n in range(2000))
    (tmp_path / "chain.yaml").write_text(CHAIN + textwrap.indent(textwrap.dedent(f"""\
        - id: groot
          organisation: ggz
          name: Groot
          roles: [{{id: r, grants: {{casus: [agenda]}}}}]
          members: [{{subjects: [{listed}]}}]
    """), "  "))
    big = load_policy(tmp_path, environ={})
    assert big.index.candidate_rules(person(groups={"crisisdienst"}))[0].team == "crisisdienst"
    assert len(big.index.candidate_rules(person(groups={"crisisdienst"}))) == 1
    assert big.evaluate(person(subject="p-1999"), "casus", TUESDAY_NOON).team_ids == ("groot",)
