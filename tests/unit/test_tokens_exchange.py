"""Token exchange (RFC 8693), resource indicators (RFC 8707), pairwise subjects, and the
policy fields behind them: every refusal with its RFC error code."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from idbroker.assurance.levels import Level
from idbroker.keys import KeyRing
from idbroker.policy import PersonFacts, Policy, PolicyError, load_policy
from idbroker.policy.load import check_policy
from idbroker.subjects import subject_for
from idbroker.tokens import (
    ExchangeGrant,
    Revocations,
    Target,
    TokenError,
    decide_exchange,
    default_target,
    level_of_acr,
    resolve_resource,
)
from idbroker.tokens.exchange import (
    ExchangeRequest,
    check_subject_token,
    exchange_target,
    read_exchange_request,
)
from tests.support import token_domain
from tests.support.token_domain import CHAIN, write_chain

chain = token_domain.chain
ISSUER = "https://idbroker.example"
NOW = time.time()
SUBSTANTIAL = Level.SUBSTANTIAL.acr


def subject_claims(**overrides: Any) -> dict[str, Any]:
    """A user's access token at the portal, as verify_access_token returns it."""
    base = {"iss": ISSUER, "sub": "s-portal-sub", "aud": "portaal", "client_id": "portaal",
            "azp": "portaal", "iat": int(NOW) - 10, "exp": int(NOW) + 290, "jti": "jti-1",
            "scope": "melding.lezen", "acr": SUBSTANTIAL, "auth_time": int(NOW) - 100,
            "sid": "sid-1", "organisation": "gemeente", "team": "crisis", "roles": ["medewerker"],
            "amr": ["pwd", "hwk"]}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def exchange(policy: Policy, *, claims: dict[str, Any] | None = None, actor: str = "portaal",
             audience: str | None = "casus", scopes: tuple[str, ...] = ("casus.lezen",),
             granted: frozenset[str] = frozenset({"casus.lezen", "casus.bijdragen"}),
             **kwargs: Any) -> ExchangeGrant:
    return decide_exchange(policy, claims or subject_claims(), policy.clients[actor], audience, scopes,
                           granted, issuer=ISSUER, now=NOW, **kwargs)


def refused(error: str, call: Any, *args: Any, **kwargs: Any) -> TokenError:
    with pytest.raises(TokenError) as caught:
        call(*args, **kwargs)
    assert caught.value.error == error, caught.value.description
    return caught.value


# -- allowed exchanges ----------------------------------------------------------------------


def test_the_new_token_keeps_person_team_and_level_and_names_the_caller(chain: Policy) -> None:
    grant = exchange(chain)
    assert grant.target.id == "casus" and grant.aud == "casus" and grant.scope == ("casus.lezen",)
    assert grant.issued_token_type == "urn:ietf:params:oauth:token-type:access_token"
    sub = subject_for("salt", "p-person", grant.target)
    claims = grant.access_token_claims(issuer=ISSUER, subject=sub, now=NOW, lifetime=300, jti="new")
    assert claims == {
        "iss": ISSUER, "sub": sub, "aud": "casus", "client_id": "portaal", "azp": "portaal",
        "iat": int(NOW), "exp": int(NOW) + 290,  # never beyond the subject token's exp
        "jti": "new", "scope": "casus.lezen", "organisation": "gemeente", "team": "crisis",
        "roles": ["medewerker"], "acr": SUBSTANTIAL, "auth_time": int(NOW) - 100, "sid": "sid-1",
        "amr": ["pwd", "hwk"], "act": {"sub": "portaal"}}


def test_earlier_actors_are_nested_in_act(chain: Policy) -> None:
    claims = subject_claims(aud="https://api.portaal.example/", client_id="gastportaal",
                            act={"sub": "gastportaal", "act": {"sub": "eerste"}})
    grant = exchange(chain, claims=claims)  # the portal's API received it, so may exchange it
    assert grant.act == {"sub": "portaal", "act": {"sub": "gastportaal", "act": {"sub": "eerste"}}}


def test_scope_is_requested_and_allowed_and_granted_by_the_team(chain: Policy) -> None:
    # casus.regie is allowed by the exchange rule but no role of the team grants it.
    assert exchange(chain, scopes=("casus.lezen", "casus.regie")).scope == ("casus.lezen",)
    # Nothing requested: everything the rule allows that the team has.
    assert exchange(chain, scopes=()).scope == ("casus.lezen",)


def test_an_exchange_by_resource_carries_the_resource_as_aud(chain: Policy) -> None:
    target = resolve_resource(chain, chain.clients["portaal"], "https://api.casus.example/v2", exchange=True)
    assert target == Target("casus", "https://api.casus.example/v2")
    grant = exchange(chain, audience=target.client, aud=target.aud)
    assert grant.aud == "https://api.casus.example/v2"


def test_the_subjects_roles_for_the_target_may_be_given(chain: Policy) -> None:
    assert exchange(chain, roles=("beoordelaar",)).roles == ("beoordelaar",)


# -- refusals ---------------------------------------------------------------------------


def test_towards_an_audience_the_policy_does_not_list_invalid_target(chain: Policy) -> None:
    refused("invalid_target", exchange, chain, audience="om", scopes=("zaak.lezen",))


def test_a_client_without_exchange_rights_is_refused_invalid_target(chain: Policy) -> None:
    # The Keycloak bug class: the permission check for the calling client is never skipped.
    claims = subject_claims(aud="casus", client_id="casus")
    refused("invalid_target", exchange, chain, claims=claims, actor="casus", audience="portaal",
            scopes=("melding.lezen",), granted=frozenset({"melding.lezen"}))


def test_towards_an_unknown_audience_invalid_target(chain: Policy) -> None:
    refused("invalid_target", exchange, chain, audience="nobody")


def test_a_resource_of_another_audience_invalid_target(chain: Policy) -> None:
    refused("invalid_target", exchange, chain, audience="casus", aud="https://api.portaal.example/")


def test_no_audience_at_all_invalid_request(chain: Policy) -> None:
    refused("invalid_request", exchange, chain, audience=None)


def test_a_scope_the_rule_does_not_allow_invalid_scope(chain: Policy) -> None:
    # The team has casus.bijdragen, but the portal may not exchange towards it.
    error = refused("invalid_scope", exchange, chain, scopes=("casus.lezen", "casus.bijdragen"))
    assert "casus.bijdragen" in error.description


#: RFC 6749 §5.2: what an error_description may hold.
_DESCRIPTION_CHARACTERS = frozenset(chr(c) for c in (0x20, 0x21, *range(0x23, 0x5C), *range(0x5D, 0x7F)))


@pytest.mark.parametrize("scopes", [("api.lezen", '"evil\\', "é"), ("x" * 30_000,),
                                    ("casus.bijdragen", "z<b>")])
def test_the_scope_refusal_never_echoes_the_callers_text(chain: Policy, scopes: tuple[str, ...]) -> None:
    error = refused("invalid_scope", exchange, chain, scopes=scopes)
    assert set(error.description) <= _DESCRIPTION_CHARACTERS and len(error.description) < 200
    assert not any(scope in error.description for scope in scopes if scope != "casus.bijdragen")
    assert "casus does not define" in error.description


def test_nothing_granted_by_the_team_invalid_scope(chain: Policy) -> None:
    refused("invalid_scope", exchange, chain, scopes=("casus.regie",))
    refused("invalid_scope", exchange, chain, granted=frozenset())


def test_an_incidental_party_never_reaches_the_partnership_system(chain: Policy) -> None:
    # gastportaal may exchange towards casus, but the guests' roles grant nothing there
    # (the WGS invariant keeps it so), so the team's scopes on casus are empty.
    person = PersonFacts(organisation="corporatie", subject="g-1", groups=frozenset({"gasten"}))
    decision = chain.evaluate(person, "gastportaal", datetime.fromtimestamp(NOW, UTC)).for_team("gasten")
    claims = subject_claims(aud="gastportaal", client_id="gastportaal", organisation="corporatie",
                            team="gasten", roles=["gast"])
    refused("invalid_scope", exchange, chain, claims=claims, actor="gastportaal", scopes=("casus.lezen",),
            granted=decision.scopes_at(Level.SUBSTANTIAL, "casus"))


def test_an_expired_subject_token_invalid_grant(chain: Policy) -> None:
    refused("invalid_grant", exchange, chain, claims=subject_claims(exp=int(NOW)))


def test_a_foreign_issuers_token_invalid_grant(chain: Policy) -> None:
    refused("invalid_grant", exchange, chain, claims=subject_claims(iss="https://elsewhere.example"))


def test_another_clients_token_invalid_grant(chain: Policy) -> None:
    claims = subject_claims(aud="casus", client_id="gastportaal")  # neither issued to nor meant for portaal
    refused("invalid_grant", exchange, chain, claims=claims)


def test_a_token_without_acting_team_invalid_grant(chain: Policy) -> None:
    refused("invalid_grant", exchange, chain, claims=subject_claims(team=None))


def test_a_level_below_the_targets_minimum_invalid_grant(chain: Policy) -> None:
    refused("invalid_grant", exchange, chain, claims=subject_claims(acr=Level.LOW.acr))


# -- the request's shape ----------------------------------------------------------------------

ACCESS = "urn:ietf:params:oauth:token-type:access_token"
REQUEST = {"subject_token": ["a.b.c"], "subject_token_type": [ACCESS], "audience": ["casus"]}


def test_a_plain_request_is_read() -> None:
    assert read_exchange_request(REQUEST | {"scope": ["casus.lezen casus.regie"]}) == ExchangeRequest(
        subject_token="a.b.c", subject_token_type=ACCESS, audience="casus", resource=None,
        scopes=("casus.lezen", "casus.regie"))
    assert read_exchange_request(REQUEST | {"requested_token_type": [ACCESS]}).audience == "casus"


@pytest.mark.parametrize(("extra", "error"), [
    # the actor is the authenticated client: an actor token is never taken, nor ignored
    ({"actor_token": ["garbage"], "actor_token_type": [ACCESS]}, "invalid_request"),
    ({"actor_token": ["a.b.c"]}, "invalid_request"),
    ({"actor_token_type": [ACCESS]}, "invalid_request"),  # RFC 8693 §2.1: without actor_token
    # only access tokens are issued (":jwt" is a bare JWT, RFC 8693 §3)
    ({"requested_token_type": ["urn:ietf:params:oauth:token-type:refresh_token"]}, "invalid_request"),
    ({"requested_token_type": ["urn:ietf:params:oauth:token-type:id_token"]}, "invalid_request"),
    ({"requested_token_type": ["urn:ietf:params:oauth:token-type:jwt"]}, "invalid_request"),
    # one audience per token
    ({"audience": ["casus", "om"]}, "invalid_target"),
    ({"audience": ["casus", "casus"]}, "invalid_target"),
    ({"resource": ["https://api.casus.example/v1", "https://api.casus.example/v2"]}, "invalid_target"),
    # RFC 6749 §5.2 (a repeated subject_token or scope is refused by the token endpoint,
    # for every grant: tests/integration/test_tokens.py)
    ({"subject_token": []}, "invalid_request"),
    ({"subject_token": [""]}, "invalid_request"),
    ({"subject_token_type": []}, "invalid_request"),
])
def test_what_the_broker_would_not_act_on_is_refused(extra: dict[str, list[str]], error: str) -> None:
    params = {name: values for name, values in (REQUEST | extra).items() if values}
    description = refused(error, read_exchange_request, params).description
    if "actor_token" in extra or "actor_token_type" in extra:
        assert description == "actor tokens are not supported: the authenticated client is the actor"
    if "requested_token_type" in extra:
        assert ACCESS in description


def test_an_audience_and_a_resource_must_name_the_same_target(chain: Policy) -> None:
    portal = chain.clients["portaal"]

    def target(audience: str | None, resource: str | None) -> tuple[str | None, str | None]:
        request = ExchangeRequest(subject_token="t", subject_token_type=ACCESS, audience=audience,
                                  resource=resource, scopes=())
        return exchange_target(chain, portal, request)

    assert target("casus", None) == ("casus", None)
    assert target(None, "https://api.casus.example/v1") == ("casus", "https://api.casus.example/v1")
    assert target("casus", "https://api.casus.example/v1") == ("casus", "https://api.casus.example/v1")
    refused("invalid_target", target, "gastportaal", "https://api.casus.example/v1")
    refused("invalid_target", target, "casus", "")


# -- the subject token itself ----------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return KeyRing(tmp_path_factory.mktemp("keys"))


def test_a_live_subject_token_gives_its_claims(keys: KeyRing, store: Any) -> None:
    token = keys.sign(subject_claims(), typ="at+jwt")
    assert check_subject_token(token, "urn:ietf:params:oauth:token-type:access_token", keys, ISSUER,
                               Revocations(store), now=NOW)["team"] == "crisis"


def test_a_revoked_subject_token_invalid_grant(keys: KeyRing, store_factory: Any) -> None:
    token = keys.sign(subject_claims(), typ="at+jwt")
    Revocations(store_factory()).revoke_access_token("jti-1", NOW + 290, now=NOW)
    refused("invalid_grant", check_subject_token, token, "urn:ietf:params:oauth:token-type:access_token",
            keys, ISSUER, Revocations(store_factory()), now=NOW)


@pytest.mark.parametrize("kind", ["id_token", "refresh_token"])
def test_a_subject_token_of_another_type_is_refused(keys: KeyRing, store: Any, kind: str) -> None:
    id_token = keys.sign(subject_claims())  # typ JWT: an ID token is no access token
    refused("invalid_grant", check_subject_token, id_token, "urn:ietf:params:oauth:token-type:access_token",
            keys, ISSUER, Revocations(store), now=NOW)
    refused("invalid_request", check_subject_token, keys.sign(subject_claims(), typ="at+jwt"),
            f"urn:ietf:params:oauth:token-type:{kind}", keys, ISSUER, Revocations(store), now=NOW)


# -- resource indicators -----------------------------------------------------------------------


def test_a_client_gets_its_own_resource_and_its_default_audience(chain: Policy) -> None:
    portal = chain.clients["portaal"]
    assert resolve_resource(chain, portal, "https://api.portaal.example/") == \
        Target("portaal", "https://api.portaal.example/")
    assert default_target(portal) == Target("portaal", "portaal")


@pytest.mark.parametrize("resource", [
    "https://api.casus.example/v1",       # another application's API, outside an exchange
    "https://api.unknown.example/",       # nobody's
    "https://api.portaal.example/#frag",  # a fragment
    "api.portaal.example",                # not absolute
    "",
])
def test_a_resource_not_allowed_for_the_client_invalid_target(chain: Policy, resource: str) -> None:
    refused("invalid_target", resolve_resource, chain, chain.clients["portaal"], resource)


def test_in_an_exchange_only_listed_audiences_resources(chain: Policy) -> None:
    refused("invalid_target", resolve_resource, chain, chain.clients["casus"], "https://api.portaal.example/",
            exchange=True)


def test_the_level_of_an_acr(chain: Policy) -> None:
    assert level_of_acr(Level.HIGH.acr) is Level.HIGH
    assert level_of_acr("urn:etoegang:core:assurance-class:loa4") is Level.LOW  # not ours: fail closed
    assert level_of_acr(None) is Level.LOW


# -- pairwise subjects ---------------------------------------------------------------------------


def test_pairwise_subjects_are_stable_per_sector_and_unlinkable_across(chain: Policy) -> None:
    portal, om, casus = chain.clients["portaal"], chain.clients["om"], chain.clients["casus"]
    assert subject_for("salt", "p-1", portal) == subject_for("salt", "p-1", om)  # both sector keten
    assert subject_for("salt", "p-1", portal) != subject_for("salt", "p-1", casus)
    assert subject_for("salt", "p-1", portal) != subject_for("salt", "p-2", portal)
    assert subject_for("salt", "p-1", portal) != subject_for("other-salt", "p-1", portal)
    assert "p-1" not in subject_for("salt", "p-1", casus)


def test_public_subjects_are_the_person(chain: Policy) -> None:
    assert subject_for("salt", "p-1", chain.clients["openbaar"]) == "p-1"


# -- the policy fields ------------------------------------------------------------------------------


def test_refresh_tokens_follow_offline_access(chain: Policy) -> None:
    assert chain.clients["portaal"].refresh_tokens is True
    assert chain.clients["casus"].refresh_tokens is False


def _problems(tmp_path: Path, text: str) -> list[str]:
    report = check_policy(write_chain(tmp_path / "p", text))
    return [f"{p.line}: {p.message}" for p in report.problems if not getattr(p, "warning", False)]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("      - audience: gastportaal\n", "      - audience: nergens\n", "'nergens', which is not a client"),
    ("        scopes: [gast.ontvangen]\n", "        scopes: [gast.bestaatniet]\n",
     "declares no application scope 'gast.bestaatniet'"),
    ('resource_uris: ["https://api.casus.example/v1", ', 'resource_uris: ["https://api.portaal.example/", ',
     "already names client 'portaal'"),
    ("    sector: keten\n    min_level: high\n",
     "    sector: keten\n    min_level: high\n    default_audience: casus\n",
     "default audience 'casus' already names client 'casus'"),
    ("    sector: keten\n    min_level: high\n",
     "    sector: keten\n    min_level: high\n    default_audience: https://api.casus.example/v2\n",
     "default audience 'https://api.casus.example/v2' already names client 'casus'"),
    ('resource_uris: ["https://api.portaal.example/"]', 'resource_uris: ["http://api.portaal.example/"]',
     "must use https"),
    ('resource_uris: ["https://api.portaal.example/"]', 'resource_uris: ["https://api.portaal.example/?x=1"]',
     "must not contain a query"),
    ('resource_uris: ["https://api.portaal.example/"]',
     'resource_uris: ["https://api.portaal.example/", "https://api.portaal.example/"]', "listed twice"),
    ("      - audience: gastportaal\n", "      - audience: casus\n", "an audience is listed twice"),
])
def test_the_checker_names_each_broken_exchange_or_resource(tmp_path: Path, old: str, new: str,
                                                           expected: str) -> None:
    assert CHAIN.count(old) >= 1
    problems = _problems(tmp_path, CHAIN.replace(old, new, 1))
    assert any(expected in problem for problem in problems), problems
    with pytest.raises(PolicyError):
        load_policy(tmp_path / "p")


def test_two_clients_may_not_share_a_default_audience(tmp_path: Path) -> None:
    """Each would be answered the other's tokens at introspection."""
    shared = "    default_audience: https://shared.example/api\n"
    gast = "    application_scopes: [gast.ontvangen]\n"
    text = CHAIN.replace(gast, gast + shared, 1)
    text = text.replace("    min_level: high\n", f"    min_level: high\n{shared}", 1)
    assert text.count(shared) == 2
    problems = _problems(tmp_path, text)
    assert any("default audience 'https://shared.example/api' already names client 'gastportaal'" in problem
               for problem in problems), problems


def test_the_example_chain_is_clean(tmp_path: Path) -> None:
    assert _problems(tmp_path, CHAIN) == []
