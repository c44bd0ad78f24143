"""Role policies: the chain's organisations, teams, roles and applications, as code."""

from idbroker.policy.evaluate import (
    Decision,
    NotAMember,
    PersonFacts,
    TeamDecision,
    UnknownClient,
    evaluate,
)
from idbroker.policy.idp import OidcIdp, SamlIdp
from idbroker.policy.load import CheckReport, PolicyError, check_policy, load_policy
from idbroker.policy.model import ClientPolicy, Organisation, Policy, Role, Rota, Team
from idbroker.policy.reload import PolicyHolder
from idbroker.policy.source import Problem

__all__ = [
    "CheckReport", "ClientPolicy", "Decision", "NotAMember", "OidcIdp", "Organisation", "PersonFacts",
    "Policy", "PolicyError", "PolicyHolder", "Problem", "Role", "Rota", "SamlIdp", "Team", "TeamDecision",
    "UnknownClient", "check_policy", "evaluate", "load_policy",
]
