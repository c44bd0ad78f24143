"""Loading the role policy: every broken input named with file, line and a fix; the WGS
and assurance invariants refused with their reason; the example chain valid."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from idbroker.assurance.levels import Level
from idbroker.policy import CheckReport, PolicyError, check_policy, load_policy

REPO = Path(__file__).resolve().parents[2]

CHAIN = """\
organisations:
  - id: gemeente
    name: Gemeente
    kind: government
    idp: {protocol: oidc, issuer: "https://idp.gemeente.example", client_id: idbroker}
  - id: ggz
    name: GGZ-instelling
    kind: private
    idp: {protocol: oidc, issuer: "https://idp.ggz.example", client_id: idbroker}
  - id: woningcorporatie
    name: Woningcorporatie
    kind: incidental
    idp: {protocol: oidc, issuer: "https://idp.woon.example", client_id: idbroker}
clients:
  - id: casus
    name: Casussysteem
    redirect_uris: ["https://casus.example/cb"]
    jwks_uri: https://casus.example/jwks
    scopes: [openid, profile]
    partnership_system: true
    application_scopes:
      - casus.lezen
      - {name: agenda.lezen, personal_data: false}
  - id: gast
    name: Gastportaal
    redirect_uris: ["https://gast.example/cb"]
    jwks_uri: https://gast.example/jwks
    application_scopes: [gast.inbrengen]
rotas:
  - id: nacht
    name: Nacht
    windows: [{days: [mon-sun], from: "22:00", until: "07:00"}]
"""


def chain(tmp_path: Path, teams: str = "", extra: str = "") -> Path:
    (tmp_path / "chain.yaml").write_text(CHAIN + extra, encoding="utf-8")
    if teams:
        (tmp_path / "teams.yaml").write_text(textwrap.dedent(teams), encoding="utf-8")
    return tmp_path


def problems_of(directory: Path) -> list[str]:
    report = check_policy(directory, environ={})
    assert report.policy is None, "the policy should have been refused"
    return [str(problem) for problem in report.problems]


def one_problem(directory: Path) -> str:
    found = problems_of(directory)
    assert len(found) == 1, found
    return found[0]


def test_a_policy_without_teams_is_valid_and_grants_nothing(tmp_path: Path) -> None:
    report = check_policy(chain(tmp_path), environ={})
    assert report.ok and report.policy is not None
    assert report.policy.teams == {} and report.policy.rotas["nacht"].windows


def test_the_example_chain_passes_check() -> None:
    report = check_policy(REPO / "policies", environ={}, now=datetime(2026, 11, 23, tzinfo=UTC))
    assert report.ok, [str(p) for p in report.problems]
    # The only warnings: attribute rules on attributes the demo IdPs do not map (yet).
    assert all("is not among the attributes the IdP of" in str(w) for w in report.warnings), report.warnings
    policy = report.policy
    assert {o.kind for o in policy.organisations.values()} == {"government", "private", "incidental"}
    assert policy.clients["zvh-casus"].partnership_system
    assert policy.clients["wvggz-portaal"].availability == "24x7"
    assert policy.clients["wvggz-portaal"].sector_id == "wvggz-keten"
    assert policy.clients["zvh-casus"].received_claims == {
        "name", "organisation", "team", "roles", "person", "acr"}


def test_identity_scopes_and_application_scopes_are_kept_apart(tmp_path: Path) -> None:
    policy = load_policy(chain(tmp_path), environ={})
    casus = policy.clients["casus"]
    assert casus.scopes == ("openid", "profile")
    assert casus.application_scope_names == {"casus.lezen", "agenda.lezen"}
    assert casus.personal_data_scopes == {"casus.lezen"}  # personal data unless marked otherwise
    assert casus.allowed_scopes == ("openid", "profile", "casus.lezen", "agenda.lezen")
    # Without a claims list: who acts for whom plus what the identity scopes allow (no e-mail here).
    assert casus.received_claims >= {"organisation", "team", "roles", "person", "name"}
    assert "email" not in casus.received_claims
    assert casus.minimum_level is Level.SUBSTANTIAL and casus.subject_type == "pairwise"


GOOD_TEAM = """\
teams:
  - id: crisisdienst
    organisation: ggz
    name: Crisisdienst
    roles:
      - id: beoordelaar
        grants:
          casus: [casus.lezen]
    members:
      - group: crisisdienst
"""


@pytest.mark.parametrize(("teams", "line", "expected", "hint"), [
    # unknown keys, with the allowed ones as the hint
    (GOOD_TEAM.replace("      - group: crisisdienst", "      - group: crisisdienst\n        rotta: nacht"),
     11, "teams[0].members[0].rotta: unknown key 'rotta'", "allowed here: group, attribute, subjects"),
    (GOOD_TEAM.replace("    name: Crisisdienst", "    name: Crisisdienst\n    colour: red"),
     5, "teams[0].colour: unknown key 'colour'", "allowed here: id, organisation, name"),
    # wrong types
    (GOOD_TEAM.replace("      - id: beoordelaar", "      - id: beoordelaar\n        min_level: 3"),
     7, "teams[0].roles[0].min_level: Input should be 'low', 'substantial' or 'high' (got 3)", None),
    (GOOD_TEAM.replace("          casus: [casus.lezen]", "          casus: casus.lezen"),
     8, "teams[0].roles[0].grants.casus: Input should be a valid tuple", None),
    (GOOD_TEAM.replace("  - id: crisisdienst\n", "  - id: Crisis Dienst\n"),
     2, "teams[0].id: String should match pattern", None),
    # a missing key
    (GOOD_TEAM.replace("    name: Crisisdienst\n", ""), 2,
     "teams[0].name: required key 'name' is missing", None),
    # dangling references
    (GOOD_TEAM.replace("organisation: ggz", "organisation: ggz-nergens"),
     3, "team 'crisisdienst' organisation: organisation 'ggz-nergens' does not exist",
     "known organisations: gemeente, ggz, woningcorporatie"),
    (GOOD_TEAM.replace("          casus: [casus.lezen]", "          kasus: [casus.lezen]"),
     8, "grants scopes on 'kasus', which is not a client", "known clients: casus, gast"),
    (GOOD_TEAM.replace("          casus: [casus.lezen]", "          casus: [casus.schrijven]"),
     8, "client 'casus' declares no application scope 'casus.schrijven'",
     "known application scopes of 'casus': agenda.lezen, casus.lezen"),
    (GOOD_TEAM.replace("      - group: crisisdienst", "      - group: crisisdienst\n        rota: dag"),
     11, "rota 'dag' does not exist", "known rotas: nacht"),
    (GOOD_TEAM.replace("      - group: crisisdienst", "      - group: crisisdienst\n        roles: [baas]"),
     11, "role 'baas' is not a role of team 'crisisdienst'", "known roles: beoordelaar"),
    # identity scopes are not granted by roles
    (GOOD_TEAM.replace("          casus: [casus.lezen]", "          casus: [casus.lezen, profile]"),
     8, "'profile' is an identity scope", "remove it from the grant"),
    # impossible time windows
    (GOOD_TEAM.replace("      - group: crisisdienst", "      - group: crisisdienst\n"
                       "        valid_from: 2026-05-01\n        valid_until: 2026-04-30"),
     12, "valid_until (2026-04-30) is not after valid_from (2026-05-01): the rule could never hold", None),
    (GOOD_TEAM.replace("      - group: crisisdienst",
                       "      - group: crisisdienst\n        valid_from: 1 mei"),
     11, "'1 mei' is not a date (2025-03-01) or a date-time", None),
    # moments past what a calendar in Amsterdam can hold: a message, not a crash (9999-12-31
    # overflowed at its end of day, 23:30-12:00 in Amsterdam at every explanation)
    (GOOD_TEAM.replace("      - group: crisisdienst",
                       "      - group: crisisdienst\n        valid_until: 9999-12-31"),
     11, "'9999-12-31' is too far off (before 0001-01-02 or after 9999-12-30); for a rule without end, "
         "leave valid_until out", None),
    (GOOD_TEAM.replace("      - group: crisisdienst",
                       "      - group: crisisdienst\n        valid_from: 9999-12-31T23:30-12:00"),
     11, "'9999-12-31T23:30-12:00' is too far off", None),
    # a number longer than Python reads (over 4,300 digits)
    (GOOD_TEAM.replace("  - id: crisisdienst\n", "  - id: 1" + "0" * 5000 + "\n"),
     2, "the number 100000000000... (5001 digits) is too long", "quote it if it is text"),
    # overlapping time windows: the same person twice, same roles, overlapping validity
    (GOOD_TEAM.replace("      - group: crisisdienst",
                       "      - subjects: [g-1, g-2]\n        valid_until: 2026-06-30\n"
                       "      - subjects: [g-3, g-2]\n        valid_from: 2026-06-30"),
     12, "subject 'g-2' is already a member by rule #1, with the same roles and rota and an overlapping "
         "validity",
     "merge the rules"),
    (GOOD_TEAM.replace("      - group: crisisdienst", "      - emails: [a@ggz.example, A@ggz.example]"),
     10, "'a@ggz.example' is listed twice in this rule", None),
    (GOOD_TEAM.replace("      - group: crisisdienst", "      - group: crisisdienst\n        subjects: [x]"),
     10, "needs exactly one of: group, attribute, or subjects/emails", None),
])
def test_each_bad_input_is_named_with_file_line_and_fix(tmp_path: Path, teams: str, line: int, expected: str,
                                                        hint: str | None) -> None:
    problem = one_problem(chain(tmp_path, teams))
    assert problem.startswith(f"teams.yaml:{line}: "), problem
    assert expected in problem
    if hint:
        assert f"fix: check the spelling; {hint}" in problem or hint in problem.split("fix: ", 1)[1]


def test_duplicate_ids_name_both_places(tmp_path: Path) -> None:
    duplicate = GOOD_TEAM + GOOD_TEAM.removeprefix("teams:\n")
    problem = one_problem(chain(tmp_path, duplicate))
    assert problem.startswith("teams.yaml:11: teams[1]: duplicate id 'crisisdienst' (first in teams.yaml:2)")
    # ... also across files
    (tmp_path / "teams.yaml").write_text(GOOD_TEAM)
    (tmp_path / "more.yaml").write_text(GOOD_TEAM)
    problem = one_problem(tmp_path)
    assert problem.startswith("teams.yaml:2: teams[0]: duplicate id 'crisisdienst' (first in more.yaml:2)")


@pytest.mark.parametrize(("windows", "expected"), [
    ('[{days: [mon], from: "08:00", until: "08:00"}]', "'from' equals 'until': the window would be empty"),
    ('[{days: [mon], from: "25:00", until: "08:00"}]', "'25:00' is not a time of day"),
    ('[{days: [mon], from: "24:00", until: "08:00"}]', "24:00 only as 'until'"),
    ("[{days: [mon], from: 8, until: 9}]", "8 is a number: write the time of day as text"),
    ('[{days: [maandag], from: "08:00", until: "09:00"}]', "'maandag' is not a day"),
    ('[{days: [mon-fri, wed], from: "08:00", until: "09:00"}]', "wed is named twice"),
    ('[{days: [], from: "08:00", until: "09:00"}]', "name at least one day"),
    ("[]", "the rota has no windows: nobody would ever be on duty"),
    ('[{days: [mon-fri], from: "17:00", until: "08:00"}, {days: [sat], from: "07:00", until: "12:00"}]',
     "window sat 07:00-12:00 overlaps an earlier window of this rota (both cover Saturday 07:00)"),
])
def test_impossible_and_overlapping_rota_windows_are_named(tmp_path: Path, windows: str,
                                                           expected: str) -> None:
    extra = f"  - id: piket\n    name: Piket\n    windows: {windows}\n"
    found = problems_of(chain(tmp_path, extra=extra))
    windows_line = CHAIN.count("\n") + 3
    assert all(problem.startswith(f"chain.yaml:{windows_line}: ") for problem in found), found
    assert any(expected in problem for problem in found), found


def test_an_incidental_party_is_never_granted_a_partnership_system(tmp_path: Path) -> None:
    teams = """\
    teams:
      - id: corporatie-casus-12
        organisation: woningcorporatie
        name: Uitgenodigd voor casus 12
        roles:
          - id: derde
            grants:
              gast: [gast.inbrengen]
              casus: [agenda.lezen]
    """
    problem = one_problem(chain(tmp_path, teams))
    assert problem.startswith("teams.yaml:9: team 'corporatie-casus-12' roles[0].grants.casus: ")
    assert ("organisation 'woningcorporatie' is an incidental third party, and 'casus' is a partnership "
            "system") in problem
    assert "get no access to the partnership's systems" in problem
    assert "fix: remove this grant" in problem
    # The same grant for a fixed (private) participant is fine.
    (tmp_path / "teams.yaml").write_text(textwrap.dedent(teams).replace("woningcorporatie", "ggz"))
    assert check_policy(tmp_path, environ={}).ok


def test_a_personal_data_scope_needs_at_least_substantial(tmp_path: Path) -> None:
    teams = GOOD_TEAM.replace("      - id: beoordelaar", "      - id: beoordelaar\n        min_level: low")
    problem = one_problem(chain(tmp_path, teams))
    assert problem.startswith("teams.yaml:7: team 'crisisdienst' roles[0].min_level: ")
    assert "grants 'casus.lezen' on 'casus', a scope on personal data, but its min_level is low" in problem
    assert "fix: set min_level: substantial" in problem
    # A scope marked as touching no personal data may be granted at low.
    (tmp_path / "teams.yaml").write_text(teams.replace("casus: [casus.lezen]", "casus: [agenda.lezen]"))
    assert check_policy(tmp_path, environ={}).ok


def test_client_level_problems_are_named(tmp_path: Path) -> None:
    extra = """\
  - id: slordig
    name: Slordig
    redirect_uris: ["https://s.example/cb"]
    jwks_uri: https://s.example/jwks
    scopes: [openid]
    claims: [email, team]
    subject_type: public
    partnership_system: "yes"
    application_scopes: [s.lezen, s.lezen, openid]
"""
    (tmp_path / "chain.yaml").write_text(CHAIN.replace("rotas:\n", extra + "rotas:\n"))
    problems = problems_of(tmp_path)
    assert any("clients[2].partnership_system: Input should be a valid boolean" in p
               for p in problems), problems
    fixed = extra.replace('"yes"', "true")
    (tmp_path / "chain.yaml").write_text(CHAIN.replace("rotas:\n", fixed + "rotas:\n"))
    problems = problems_of(tmp_path)
    assert any(p.startswith("chain.yaml:37: client 'slordig' application_scopes[1]: "
                            "application scope 's.lezen' is declared twice") for p in problems), problems
    assert any("chain.yaml:37: client 'slordig' application_scopes[2]: 'openid' is an identity scope" in p
               for p in problems), problems
    assert any(p.startswith("chain.yaml:34: client 'slordig' claims[0]: claim 'email' needs identity scope "
                            "'email'") for p in problems), problems


def test_a_team_of_a_broken_organisation_is_not_also_called_dangling(tmp_path: Path) -> None:
    (tmp_path / "chain.yaml").write_text(CHAIN.replace("    name: GGZ-instelling\n", ""))
    (tmp_path / "teams.yaml").write_text(GOOD_TEAM)
    assert problems_of(tmp_path) == ["chain.yaml:6: organisations[1].name: required key 'name' is missing"]


def test_file_level_problems(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == [f"{tmp_path}: no *.yaml policy files"]
    chain(tmp_path)
    (tmp_path / "old.yml").write_text("teams: []\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "section.yaml").write_text("teams: {a: 1}\nteam: []\n")
    assert problems_of(tmp_path) == [
        "old.yml: ignored: policy files end in .yaml\n      fix: rename it to old.yaml",
        "list.yaml:1: must be a mapping of sections\n      fix: start with one of: organisations:, clients:, "
        "rotas:, teams:",
        "section.yaml:1: 'teams' must be a list\n      fix: write each entry as an item starting with '- '",
        "section.yaml:2: unknown section 'team'\n"
        "      fix: expected one of organisations, clients, rotas, teams",
    ]


def test_load_policy_raises_with_every_problem(tmp_path: Path) -> None:
    broken = GOOD_TEAM.replace("organisation: ggz", "organisation: nergens").replace("casus.lezen", "x.y")
    chain(tmp_path, broken)
    with pytest.raises(PolicyError) as error:
        load_policy(tmp_path, environ={})
    assert len(error.value.problems) == 2
    assert "teams.yaml:3:" in str(error.value) and "teams.yaml:8:" in str(error.value)


def test_warnings_do_not_fail_check(tmp_path: Path) -> None:
    teams = GOOD_TEAM.replace("      - group: crisisdienst",
                              "      - group: crisisdienst\n        valid_until: 2025-12-31") + """\
  - id: leeg
    organisation: ggz
    name: Leeg
    roles: [{id: niets}]
"""
    report: CheckReport = check_policy(chain(tmp_path, teams), environ={},
                                       now=datetime(2026, 1, 2, tzinfo=UTC))
    assert report.ok
    assert [str(w).split("\n")[0] for w in report.warnings] == [
        "teams.yaml:11: team 'crisisdienst' members[0].valid_until: the rule expired (2025-12-31)",
        "teams.yaml:15: team 'leeg' roles[0]: role 'niets' grants nothing",
    ]


def test_an_attribute_the_idp_does_not_provide_is_a_warning(tmp_path: Path) -> None:
    teams = GOOD_TEAM.replace("      - group: crisisdienst",
                              "      - attribute: {name: functie, equals: arts}\n"
                              "      - attribute: {name: employee_number, equals: '1234'}")
    report = check_policy(chain(tmp_path, teams), environ={})
    assert report.ok
    assert [str(w).split("\n")[0] for w in report.warnings] == [
        "teams.yaml:10: team 'crisisdienst' members[0].attribute.name: attribute 'functie' is not among "
        "the attributes the IdP of 'ggz' provides (email, employee_number, family_name, given_name, groups, "
        "name): the rule cannot match"]
