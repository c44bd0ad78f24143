"""Rules across policy entries, each explained: what is wrong, why it matters, how to fix it.

Each entry (an organisation, client, rota or team) is valid on its own once pydantic has
read it; here the entries are checked against each other: references that must resolve,
the WGS and assurance invariants, and time windows that must make sense. Findings carry
the entry and a path inside it, so the loader can name the file and line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from idbroker.assurance.levels import Level
from idbroker.policy.model import (
    CLAIM_SCOPES,
    IDENTITY_SCOPES,
    ClientPolicy,
    MemberRule,
    Organisation,
    Rota,
    Team,
    moment_end,
    moment_start,
)
from idbroker.policy.rota import describe_minute, first_overlap


@dataclass(frozen=True)
class Finding:
    """One invariant broken (or, with ``warning``, a smell) in entry ``section``/``entry``."""

    section: str
    entry: str
    loc: tuple[Any, ...]
    message: str
    hint: str | None = None
    warning: bool = False
    #: The entry a dangling reference names: not reported when that entry exists but is invalid.
    refers: tuple[str, str] | None = None


def check_invariants(organisations: Mapping[str, Organisation], clients: Mapping[str, ClientPolicy],
                     rotas: Mapping[str, Rota], teams: Mapping[str, Team], *,
                     now: datetime | None = None) -> list[Finding]:
    findings: list[Finding] = []
    findings += _domains(organisations)
    for client in clients.values():
        findings += _client(client)
        findings += _token_exchange(client, clients)
    findings += _audience_values(clients)
    for rota in rotas.values():
        findings += _rota(rota)
    for team in teams.values():
        findings += _team(team, organisations, clients, rotas, now)
    return findings


def _domains(organisations: Mapping[str, Organisation]) -> Iterator[Finding]:
    owner: dict[str, str] = {}
    for organisation in organisations.values():
        for position, domain in enumerate(organisation.domains):
            if domain in owner:
                yield Finding("organisations", organisation.id, ("domains", position),
                              f"domain '{domain}' is also claimed by organisation '{owner[domain]}'",
                              "an e-mail domain can lead to one organisation only; remove it from one")
            owner.setdefault(domain, organisation.id)


def _client(client: ClientPolicy) -> Iterator[Finding]:
    seen: set[str] = set()
    for position, scope in enumerate(client.application_scopes):
        if scope.name in seen:
            yield Finding("clients", client.id, ("application_scopes", position),
                          f"application scope '{scope.name}' is declared twice", "remove the duplicate")
        seen.add(scope.name)
        if scope.name in IDENTITY_SCOPES or scope.name in client.scopes:
            yield Finding("clients", client.id, ("application_scopes", position),
                          f"'{scope.name}' is an identity scope, not an application scope",
                          "identity scopes (openid, profile, email) go under 'scopes'; roles grant "
                          "only application scopes")
    for position, claim in enumerate(client.claims or ()):
        needed = CLAIM_SCOPES[claim]
        if needed not in client.scopes:
            yield Finding("clients", client.id, ("claims", position),
                          f"claim '{claim}' needs identity scope '{needed}', which the client may not "
                          f"ask for", f"add '{needed}' to scopes, or remove the claim")


def _token_exchange(client: ClientPolicy, clients: Mapping[str, ClientPolicy]) -> Iterator[Finding]:
    """Each RFC 8693 rule names an existing client and only scopes it declares."""
    for position, rule in enumerate(client.token_exchange):
        where = ("token_exchange", position)
        target = clients.get(rule.audience)
        if target is None:
            yield Finding("clients", client.id, (*where, "audience"),
                          f"token_exchange names audience '{rule.audience}', which is not a client",
                          _known("clients", clients), refers=("clients", rule.audience))
            continue
        for index, scope in enumerate(rule.scopes):
            if scope not in target.application_scope_names:
                yield Finding("clients", client.id, (*where, "scopes", index),
                              f"client '{rule.audience}' declares no application scope '{scope}': it "
                              f"cannot be exchanged towards",
                              _known(f"application scopes of '{rule.audience}'",
                                     target.application_scope_names))


def _audience_values(clients: Mapping[str, ClientPolicy]) -> Iterator[Finding]:
    """Every ``aud`` value (a client id, a ``default_audience``, an RFC 8707 resource) must
    lead to one application only, or a token meant for one API would be accepted by another
    (at its introspection, and as its token exchange's subject)."""
    owner = {client.id: client.id for client in clients.values()}
    for client in clients.values():
        named = [(("resource_uris", position), "resource URI", uri)
                 for position, uri in enumerate(client.resource_uris)]
        if client.default_audience:
            named.insert(0, (("default_audience",), "default audience", client.default_audience))
        for where, what, value in named:
            other = owner.setdefault(value, client.id)
            if other != client.id:
                yield Finding("clients", client.id, where, f"{what} '{value}' already names client '{other}'",
                              "an audience identifies one application's API: give each its own")


def _rota(rota: Rota) -> Iterator[Finding]:
    if not rota.windows:
        yield Finding("rotas", rota.id, ("windows",), "the rota has no windows: nobody would ever be on duty",
                      "add a window such as {days: [mon-fri], from: \"17:00\", until: \"08:00\"}")
    for position, window in enumerate(rota.windows):
        minute = first_overlap((w.weekly for w in rota.windows[:position]), window.weekly)
        if minute is not None:
            yield Finding("rotas", rota.id, ("windows", position),
                          f"window {window.weekly.describe()} overlaps an earlier window of this rota "
                          f"(both cover {describe_minute(minute)})",
                          "make the windows disjoint: each minute of the week belongs to at most one")


def _team(team: Team, organisations: Mapping[str, Organisation], clients: Mapping[str, ClientPolicy],
          rotas: Mapping[str, Rota], now: datetime | None) -> Iterator[Finding]:
    organisation = organisations.get(team.organisation)
    if organisation is None:
        yield Finding("teams", team.id, ("organisation",),
                      f"organisation '{team.organisation}' does not exist",
                      _known("organisations", organisations), refers=("organisations", team.organisation))
    role_ids: set[str] = set()
    for position, role in enumerate(team.roles):
        if role.id in role_ids:
            yield Finding("teams", team.id, ("roles", position, "id"),
                          f"role '{role.id}' is declared twice in this team", "give each role its own id")
        role_ids.add(role.id)
        yield from _grants(team, position, organisation, clients)
        if not any(role.grants.values()):
            yield Finding("teams", team.id, ("roles", position),
                          f"role '{role.id}' grants nothing", "add grants, or remove the role",
                          warning=True)
    provided = set(organisation.idp.attributes.fields()) if organisation is not None else None
    for position, rule in enumerate(team.members):
        yield from _rule(team, position, rule, role_ids, rotas, now)
        if provided is not None and rule.attribute is not None and rule.attribute.name not in provided:
            yield Finding(
                "teams", team.id, ("members", position, "attribute", "name"),
                f"attribute '{rule.attribute.name}' is not among the attributes the IdP of "
                f"'{team.organisation}' provides ({', '.join(sorted(provided))}): the rule cannot match",
                "map the attribute in the organisation's idp.attributes, or match on a provided one",
                warning=True)
    yield from _overlapping_rules(team)


def _grants(team: Team, position: int, organisation: Organisation | None,
            clients: Mapping[str, ClientPolicy]) -> Iterator[Finding]:
    role = team.roles[position]
    level = role.minimum_level
    for audience, scopes in role.grants.items():
        where = ("roles", position, "grants", audience)
        client = clients.get(audience)
        if client is None:
            yield Finding("teams", team.id, where, f"role '{role.id}' grants scopes on '{audience}', which "
                          f"is not a client", _known("clients", clients), refers=("clients", audience))
            continue
        if organisation is not None and organisation.kind == "incidental" and client.partnership_system \
                and scopes:
            yield Finding(
                "teams", team.id, where,
                f"organisation '{organisation.id}' is an incidental third party, and '{audience}' is a "
                f"partnership system: role '{role.id}' may not be granted its scopes (WGS: invited third "
                f"parties take part in one case but get no access to the partnership's systems)",
                "remove this grant (share the case's data through a fixed participant instead), or, if "
                "the organisation became a fixed participant, change its kind")
        declared = client.application_scope_names
        seen: set[str] = set()
        for index, scope in enumerate(scopes):
            if scope in seen:
                yield Finding("teams", team.id, (*where, index), f"scope '{scope}' is granted twice",
                              "remove the duplicate")
            seen.add(scope)
            if scope not in declared:
                if scope in IDENTITY_SCOPES or scope in client.scopes:
                    yield Finding("teams", team.id, (*where, index),
                                  f"'{scope}' is an identity scope: every person who may log in gets it, "
                                  f"roles do not grant it", "remove it from the grant")
                else:
                    yield Finding("teams", team.id, (*where, index),
                                  f"client '{audience}' declares no application scope '{scope}'",
                                  _known(f"application scopes of '{audience}'", declared))
            elif scope in client.personal_data_scopes and level < Level.SUBSTANTIAL:
                yield Finding(
                    "teams", team.id, ("roles", position, "min_level"),
                    f"role '{role.id}' grants '{scope}' on '{audience}', a scope on personal data, but "
                    f"its min_level is {role.min_level} (agreed minimum for this data: substantial)",
                    "set min_level: substantial (or high); or, if the scope touches no personal data, "
                    "mark it personal_data: false at the client")


def _rule(team: Team, position: int, rule: MemberRule, role_ids: set[str], rotas: Mapping[str, Rota],
          now: datetime | None) -> Iterator[Finding]:
    where: tuple[Any, ...] = ("members", position)
    if rule.rota is not None and rule.rota not in rotas:
        yield Finding("teams", team.id, (*where, "rota"), f"rota '{rule.rota}' does not exist",
                      _known("rotas", rotas), refers=("rotas", rule.rota))
    for index, role_id in enumerate(rule.roles or ()):
        if role_id not in role_ids:
            yield Finding("teams", team.id, (*where, "roles", index),
                          f"role '{role_id}' is not a role of team '{team.id}'", _known("roles", role_ids))
    if rule.roles is not None and not rule.roles:
        yield Finding("teams", team.id, (*where, "roles"), "the rule gives no roles",
                      "leave 'roles' out to give all of the team's roles, or name some")
    if rule.valid_from is not None and rule.valid_until is not None \
            and moment_end(rule.valid_until) <= moment_start(rule.valid_from):
        yield Finding("teams", team.id, (*where, "valid_until"),
                      f"valid_until ({rule.valid_until}) is not after valid_from ({rule.valid_from}): the "
                      f"rule could never hold", "correct the dates (a valid_until date includes that day)")
    elif now is not None and rule.valid_until is not None and moment_end(rule.valid_until) <= now.timestamp():
        yield Finding("teams", team.id, (*where, "valid_until"),
                      f"the rule expired ({rule.valid_until})", "remove it", warning=True)
    for field in ("subjects", "emails"):
        seen: set[str] = set()
        for index, value in enumerate(getattr(rule, field)):
            if value in seen:
                yield Finding("teams", team.id, (*where, field, index),
                              f"'{value}' is listed twice in this rule", "remove the duplicate")
            seen.add(value)


def _overlapping_rules(team: Team) -> Iterator[Finding]:
    """The same person (or group, or attribute) twice in one team, with the same roles and
    rota and overlapping validity: one of them is a mistake, and which is unclear."""
    by_criterion: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for position, rule in enumerate(team.members):
        shape = (rule.rota, rule.roles)
        keys: list[tuple[Any, ...]]
        if rule.group is not None:
            keys = [("group", rule.group)]
        elif rule.attribute is not None:
            keys = [("attribute", rule.attribute.name, rule.attribute.equals)]
        else:
            keys = [("subject", s) for s in dict.fromkeys(rule.subjects)]
            keys += [("email", e) for e in dict.fromkeys(rule.emails)]
        for key in keys:
            by_criterion[(*key, shape)].append(position)
    for key, positions in by_criterion.items():
        if len(positions) < 2:
            continue
        for later_index, later in enumerate(positions[1:], start=1):
            for earlier in positions[:later_index]:
                if _validity_overlaps(team.members[earlier], team.members[later]):
                    what = {"group": "group", "attribute": "attribute", "subject": "subject",
                            "email": "e-mail"}[key[0]]
                    yield Finding(
                        "teams", team.id, ("members", later),
                        f"{what} '{key[-2]}' is already a member by rule #{earlier + 1}, with the same "
                        f"roles and rota and an overlapping validity period",
                        "merge the rules, or make their valid_from/valid_until periods not overlap")
                    break


def _validity_overlaps(first: MemberRule, second: MemberRule) -> bool:
    def bounds(rule: MemberRule) -> tuple[float, float]:
        start = moment_start(rule.valid_from) if rule.valid_from is not None else float("-inf")
        end = moment_end(rule.valid_until) if rule.valid_until is not None else float("inf")
        return start, end

    (a_start, a_end), (b_start, b_end) = bounds(first), bounds(second)
    return a_start < b_end and b_start < a_end


def _known(what: str, names: Any) -> str:
    listed = sorted(names)
    if not listed:
        return f"there are no {what}: declare it first"
    shown = ", ".join(listed[:12]) + (", ..." if len(listed) > 12 else "")
    return f"known {what}: {shown}"
