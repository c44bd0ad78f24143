"""The policy model: pure data, validated on load, no web framework in sight.

This is the small first shape (organisations with their IdP, and chain applications);
teams, roles, grants and assurance requirements grow from here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from idbroker.policy.common import Identifier, OwnSigningAlg, StrictModel, check_web_url
from idbroker.policy.idp import OidcIdp, SamlIdp


class Organisation(StrictModel):
    id: str = Identifier
    name: str = Field(min_length=1)
    kind: Literal["government", "private", "incidental"] = "private"
    #: E-mail domains that send a ``login_hint`` straight to this organisation.
    domains: tuple[str, ...] = ()
    idp: OidcIdp | SamlIdp = Field(discriminator="protocol")

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for domain in value:
            if not re.fullmatch(r"[a-z0-9.-]+\.[a-z]{2,}", domain):
                raise ValueError(f"'{domain}' is not a lower-case domain name")
        return value


class ClientPolicy(StrictModel):
    """A chain application: an OpenID Connect client of the broker."""

    id: str = Identifier
    name: str = Field(min_length=1)
    redirect_uris: tuple[str, ...] = Field(min_length=1)
    post_logout_redirect_uris: tuple[str, ...] = ()
    auth_method: Literal["private_key_jwt", "client_secret_basic"] = "private_key_jwt"
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    #: SHA-256 (hex) of the client secret; the secret itself is never stored.
    client_secret_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    id_token_signed_response_alg: OwnSigningAlg = "ES256"
    #: The ``aud`` of this client's access tokens when it asks for no resource.
    default_audience: str | None = None

    @field_validator("redirect_uris", "post_logout_redirect_uris")
    @classmethod
    def _uris(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for uri in value:
            check_web_url(uri, what="redirect URI")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> ClientPolicy:
        if self.auth_method == "private_key_jwt":
            if (self.jwks is None) == (self.jwks_uri is None):
                raise ValueError("private_key_jwt needs exactly one of jwks or jwks_uri")
            if self.jwks_uri is not None:
                check_web_url(self.jwks_uri, what="jwks_uri")
            if self.client_secret_sha256:
                raise ValueError("client_secret_sha256 is only for client_secret_basic")
        elif not self.client_secret_sha256:
            raise ValueError("client_secret_basic needs client_secret_sha256")
        if "openid" not in self.scopes:
            raise ValueError("scopes must include 'openid'")
        return self

    @property
    def audience(self) -> str:
        return self.default_audience or self.id


class Policy(StrictModel):
    """Everything the broker enforces, loaded as one consistent, immutable whole."""

    organisations: dict[str, Organisation]
    clients: dict[str, ClientPolicy]

    def organisation_for_domain(self, domain: str) -> Organisation | None:
        domain = domain.lower()
        for organisation in self.organisations.values():
            if domain in organisation.domains:
                return organisation
        return None
