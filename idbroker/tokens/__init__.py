"""The token domain: refresh rotation, revocation, introspection, token exchange.

Pure and store-backed (no Flask, no authlib server code), so the token endpoint calls it
and every broker instance sees the same state through the shared store.
"""

from idbroker.tokens.errors import RefreshReuse, TokenError
from idbroker.tokens.exchange import (
    ACCESS_TOKEN_TYPE,
    GRANT_TYPE,
    ExchangeGrant,
    Target,
    audience_allowed,
    check_token_resource,
    decide_exchange,
    default_target,
    level_of_acr,
    resolve_resource,
)
from idbroker.tokens.introspection import InactiveToken, introspect, verify_access_token
from idbroker.tokens.refresh import IDLE_TIMEOUT, RefreshGrant, RefreshTokens, new_family
from idbroker.tokens.revocation import Revocations

__all__ = [
    "ACCESS_TOKEN_TYPE", "GRANT_TYPE", "IDLE_TIMEOUT", "ExchangeGrant", "InactiveToken", "RefreshGrant",
    "RefreshReuse", "RefreshTokens", "Revocations", "Target", "TokenError", "audience_allowed",
    "check_token_resource", "decide_exchange",
    "default_target", "introspect", "level_of_acr", "new_family", "resolve_resource", "verify_access_token",
]
