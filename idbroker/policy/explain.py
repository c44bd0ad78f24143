"""``policy explain``: why a person gets each scope of a client, and why not each other one.

Not on the login path: it may look at the whole policy. Every granted scope is shown with
its chain (scope <- role <- member rule, each with its file and line); every scope the
client declares but the person does not get is shown with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from idbroker.policy.evaluate import CompiledRole, Decision, PersonFacts, UnknownClient
from idbroker.policy.model import Policy
from idbroker.policy.rota import AMSTERDAM, describe_minute, minute_of_week
from idbroker.upstream.base import UpstreamError, UpstreamIdentity, mapped_attributes


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    #: audience -> scope -> the chains that grant it
    granted: Mapping[str, Mapping[str, tuple[str, ...]]]
    #: audience -> scope -> why the person does not get it
    missing: Mapping[str, Mapping[str, tuple[str, ...]]]
    text: str


def person_from_mapping(data: Mapping[str, Any]) -> PersonFacts:
    """A person as written in a person file, a test file or a population file."""
    allowed = {"organisation", "subject", "email", "groups", "attributes", "person_id", "name"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    for key in ("organisation", "subject"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"'{key}' is required (text)")
    groups = data.get("groups") or ()
    attributes = data.get("attributes") or {}
    if isinstance(groups, str) or not all(isinstance(group, str) for group in groups):
        raise ValueError("'groups' must be a list of names")
    if not isinstance(attributes, Mapping):
        raise ValueError("'attributes' must be a mapping")
    email = data.get("email")
    if email is not None and not isinstance(email, str):
        raise ValueError("'email' must be text")
    return PersonFacts(organisation=data["organisation"], subject=data["subject"], email=email,
                       groups=frozenset(groups), attributes=dict(attributes),
                       person_id=str(data.get("person_id") or ""))


def person_from_claims(policy: Policy, claims: Mapping[str, Any],
                       organisation: str | None = None) -> PersonFacts:
    """A person from the claims an organisation's IdP sends, mapped as that IdP's policy says
    (``idp.attributes``), exactly as a login would: claims the mapping does not name are
    not seen by the policy (:func:`unmapped_claims` lists them)."""
    org_id = organisation or claims.get("organisation")
    if not org_id and isinstance(claims.get("email"), str) and "@" in claims["email"]:
        found = policy.organisation_for_domain(claims["email"].rsplit("@", 1)[1])
        org_id = found.id if found else None
    if not org_id or org_id not in policy.organisations:
        raise ValueError("say which organisation's IdP sent these claims: add \"organisation\": \"<id>\" "
                         "(or an e-mail in one of its domains)")
    mapping = policy.organisations[org_id].idp.attributes
    subject_claim = "sub" if mapping.subject == "name_id" else mapping.subject
    subject = claims.get(subject_claim) or claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise ValueError(f"the claims have no subject ('{subject_claim}')")
    try:  # the connectors' own reading: a group 4711 is "4711", a group 47.5 refuses the login
        attributes = mapped_attributes({field: claims[source] for field, source in mapping.fields().items()
                                        if source in claims})
    except UpstreamError as refused:
        raise ValueError(f"a login with these claims is refused: {refused.detail}") from None
    return PersonFacts.from_identity(UpstreamIdentity(organisation=org_id, issuer="", subject=subject,
                                                      attributes=attributes))


#: Protocol claims that never describe the person; not worth a note when unmapped.
_PROTOCOL_CLAIMS = frozenset({"iss", "aud", "exp", "iat", "nbf", "nonce", "azp", "at_hash", "c_hash", "sid",
                              "auth_time", "acr", "amr", "jti", "organisation"})


def unmapped_claims(policy: Policy, claims: Mapping[str, Any], organisation: str) -> tuple[str, ...]:
    """Claims the organisation's IdP mapping ignores: the policy never sees them at login."""
    mapping = policy.organisations[organisation].idp.attributes
    used = set(mapping.fields().values()) | {mapping.subject, "sub"}
    return tuple(sorted(set(claims) - used - _PROTOCOL_CLAIMS))


def explain(policy: Policy, person: PersonFacts, client_id: str, now: datetime) -> Explanation:
    if client_id not in policy.clients:
        raise UnknownClient(client_id)
    client = policy.clients[client_id]
    decision = policy.evaluate(person, client_id, now)
    index = policy.index
    granted: dict[str, dict[str, list[str]]] = {}
    for team in decision.teams.values():
        for grant in team.grants():
            granted.setdefault(grant.audience, {}).setdefault(grant.scope, []).append(
                f"role '{grant.role.id}' (min {grant.role.min_level.name.lower()}) of team '{grant.team}'"
                f"{_at(grant.role.source)}\n        <- member rule #{grant.rule.index + 1}: "
                f"{grant.rule.description}{_at(grant.rule.source)}")
    missing: dict[str, dict[str, list[str]]] = {}
    for scope in client.application_scopes:
        if scope.name in granted.get(client_id, {}):
            continue
        roles = index.granted_by.get((client_id, scope.name), ())
        missing.setdefault(client_id, {})[scope.name] = _why_not(policy, decision, scope.name, roles)

    lines: list[str] = []
    groups = ", ".join(sorted(person.groups)) or "none"
    lines.append(f"person    {person.person_id} (organisation {person.organisation}, "
                 f"subject {person.subject}, e-mail {person.email or '-'}, groups: {groups})")
    organisation = policy.organisations.get(person.organisation)
    if organisation is None:
        lines.append(f"          organisation '{person.organisation}' is not in the policy: "
                     "nothing is granted")
    lines.append(f"client    {client.id} ({client.name}): min level {client.min_level}, availability "
                 f"{client.availability}, {'a' if client.partnership_system else 'not a'} partnership system")
    local = now.astimezone(AMSTERDAM)
    lines.append(f"at        {now.isoformat(timespec='minutes')} ({describe_minute(minute_of_week(now))} "
                 f"Europe/Amsterdam, {local.tzname()})")
    lines.append("")
    if decision.teams:
        lines.append(f"teams now ({len(decision.teams)})" + (": the person chooses one per session"
                                                             if len(decision.teams) > 1 else ""))
        for team in decision.teams.values():
            lines.append(f"  {team.team}  {team.team_name}{_at(policy.sources.get(f'teams/{team.team}'))}")
            for rule in team.rules:
                lines.append(f"    member by rule #{rule.index + 1}: {rule.description}{_at(rule.source)}")
            lines.append(f"    roles: {', '.join(team.roles) or 'none'}; acting for this team, everything "
                         f"they grant on {client.id} needs level {team.required_level.name.lower()}")
    else:
        lines.append("teams now: none")
    if decision.inactive:
        lines.append("rules that name the person but do not hold now")
        for item in decision.inactive:
            lines.append(f"  {item.rule.label}{_at(item.rule.source)}: {item.reason}")
    lines.append("")
    lines.append(f"required level for {client.id}: {decision.required_level.name.lower()}")
    lines.append("")
    lines.append(f"granted on {client.id}:" + ("" if granted.get(client_id) else " nothing"))
    for scope, chains in sorted(granted.get(client_id, {}).items()):
        lines.append(f"  + {scope}")
        lines += [f"      <- {chain}" for chain in chains]
    lines.append(f"not granted on {client.id}:" + ("" if missing.get(client_id) else " nothing"))
    for scope, reasons in sorted(missing.get(client_id, {}).items()):
        lines.append(f"  - {scope}")
        lines += [f"      {reason}" for reason in reasons]
    others = {audience: scopes for audience, scopes in granted.items() if audience != client_id}
    if others:
        lines.append("also granted (other applications): " + "; ".join(
            f"{audience}: {', '.join(sorted(scopes))}" for audience, scopes in sorted(others.items())))
    return Explanation(decision, {a: {s: tuple(c) for s, c in v.items()} for a, v in granted.items()},
                       {a: {s: tuple(r) for s, r in v.items()} for a, v in missing.items()}, "\n".join(lines))


def _why_not(policy: Policy, decision: Decision, scope: str, roles: tuple[CompiledRole, ...]) -> list[str]:
    if not roles:
        return ["no role in the policy grants it"]
    person = decision.person
    index = policy.index
    reasons: list[str] = []
    for role in roles:
        team = policy.teams[role.team]
        label = f"role '{role.id}' of team '{team.id}'{_at(role.source)}"
        if team.organisation != person.organisation:
            reasons.append(f"{label} grants it, but that team belongs to organisation '{team.organisation}' "
                           f"and the person logs in for '{person.organisation}'")
            continue
        current = decision.teams.get(team.id)
        if current is not None:
            if role not in current.role_objects:
                reasons.append(f"{label} grants it; the person is in the team, but their member rule(s) "
                               f"give only: {', '.join(current.roles) or 'no roles'}")
            continue
        inactive = [item for item in decision.inactive
                    if item.rule.team == team.id and role in item.rule.roles]
        if inactive:
            reasons += [f"{label} grants it; the person is named by member rule #{item.rule.index + 1}, "
                        f"which does not hold now: {item.reason}" for item in inactive]
            continue
        rules = index.rules_by_team.get(team.id, ())
        how = "; ".join(rule.description for rule in rules[:4]) + ("; ..." if len(rules) > 4 else "")
        reasons.append(f"{label} grants it; the person is not a member (members by: {how or 'no rules'})")
    return reasons


def _at(source: str | None) -> str:
    return f"  [{source}]" if source else ""
