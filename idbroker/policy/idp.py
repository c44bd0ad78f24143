"""Upstream identity providers as the policy names them: how to reach them, what to trust."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from idbroker.policy.common import SigningAlg, StrictModel, check_web_url


class OidcIdp(StrictModel):
    """An organisation's OpenID Connect identity provider, as the broker's upstream."""

    protocol: Literal["oidc"]
    issuer: str
    client_id: str
    client_auth: Literal["private_key_jwt", "client_secret_basic"] = "private_key_jwt"
    #: Name of the environment variable that holds the client secret (never in the policy).
    client_secret_env: str | None = None
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    #: Signature algorithms accepted on this IdP's ID tokens; anything else is refused.
    algorithms: tuple[SigningAlg, ...] = ("ES256", "RS256", "PS256")

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return check_web_url(value, what="issuer")

    @model_validator(mode="after")
    def _secret_source(self) -> OidcIdp:
        if self.client_auth == "client_secret_basic" and not self.client_secret_env:
            raise ValueError("client_secret_basic needs client_secret_env (the secret's variable)")
        if "openid" not in self.scopes:
            raise ValueError("scopes must include 'openid'")
        return self
