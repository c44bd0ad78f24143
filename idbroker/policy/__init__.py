"""Role policies: the chain's organisations, identity providers and applications, as code."""

from idbroker.policy.idp import OidcIdp
from idbroker.policy.load import PolicyError, load_policy
from idbroker.policy.model import ClientPolicy, Organisation, Policy

__all__ = ["ClientPolicy", "OidcIdp", "Organisation", "Policy", "PolicyError", "load_policy"]
