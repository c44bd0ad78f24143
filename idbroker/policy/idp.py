"""Upstream identity providers as the policy names them: how to reach them, what to trust."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, field_validator, model_validator

from idbroker.assurance.levels import Level, request_values
from idbroker.policy.common import SigningAlg, StrictModel, check_web_url

LevelName = Literal["low", "substantial", "high"]


class UpstreamAssurancePolicy(StrictModel):
    """What an IdP's statement about *how* someone logged in is worth to the broker.

    ``mapping`` translates the IdP's own values (OIDC ``acr``, SAML
    ``AuthnContextClassRef``) before the built-in eIDAS / eToegang / DigiD tables;
    ``trusted_up_to`` caps the result (unset: the IdP is trusted for nothing beyond low);
    ``vocabulary`` says which values the broker sends when it asks for a level.
    """

    trusted_up_to: LevelName | None = None
    vocabulary: Literal["eidas", "etoegang", "digid"] | None = None
    mapping: dict[str, LevelName] = {}

    @property
    def trusted_level(self) -> Level | None:
        return Level.from_name(self.trusted_up_to) if self.trusted_up_to else None

    @property
    def table(self) -> Mapping[str, Level]:
        return {raw: Level.from_name(name) for raw, name in self.mapping.items()}

    def values_to_request(self, wanted: Level | None) -> tuple[str, ...]:
        """The values to ask the IdP for, weakest first; none when asking is pointless
        (nothing wanted above low, or the broker would not trust the IdP's answer)."""
        trusted = self.trusted_level
        if wanted is None or wanted <= Level.LOW or trusted is None or trusted < wanted:
            return ()
        return request_values(wanted, vocabulary=self.vocabulary, mapping=self.table)


class AttributeMapping(StrictModel):
    """Which IdP claim (OIDC) or attribute ``Name`` (SAML) fills each normalised field.

    ``subject`` may be ``name_id`` for SAML: the (persistent) NameID.
    """

    subject: str
    name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    email: str | None = None
    employee_number: str | None = None
    groups: str | None = None
    #: More normalised fields for the role policies' attribute rules, e.g.
    #: ``department: urn:oid:2.5.4.11``.
    extra: dict[str, str] = {}

    def fields(self) -> dict[str, str]:
        """Normalised field -> source name, for the fields that have a source."""
        named = {field: source for field, source in self.model_dump(exclude={"subject", "extra"}).items()
                 if source}
        return {**self.extra, **named}


OIDC_ATTRIBUTES = AttributeMapping(
    subject="sub", name="name", given_name="given_name", family_name="family_name", email="email",
    employee_number="employee_number", groups="groups")
#: The usual LDAP/eduPerson attribute OIDs (urn:oid name format), as ADFS and Shibboleth send.
SAML_ATTRIBUTES = AttributeMapping(
    subject="name_id",
    name="urn:oid:2.16.840.1.113730.3.1.241",  # displayName
    given_name="urn:oid:2.5.4.42",  # givenName
    family_name="urn:oid:2.5.4.4",  # sn
    email="urn:oid:0.9.2342.19200300.100.1.3",  # mail
    employee_number="urn:oid:2.16.840.1.113730.3.1.3",  # employeeNumber
    groups="urn:oid:1.3.6.1.4.1.5923.1.5.1.1",  # isMemberOf
)


def _over(defaults: AttributeMapping, value: object) -> object:
    """A policy names only the attributes that differ from the protocol's usual ones; ``null``
    removes one."""
    if isinstance(value, dict):
        return {**defaults.model_dump(), **value}
    return value


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
    assurance: UpstreamAssurancePolicy = UpstreamAssurancePolicy()
    attributes: AttributeMapping = OIDC_ATTRIBUTES

    @field_validator("attributes", mode="before")
    @classmethod
    def _over_defaults(cls, value: object) -> object:
        return _over(OIDC_ATTRIBUTES, value)

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


class SamlMetadataSource(StrictModel):
    """Where the IdP's SAML metadata comes from.

    A ``file`` (relative paths are read from the policy directory), or a ``url`` fetched
    and cached as its ``validUntil`` / ``cacheDuration`` allow (never longer than
    ``max_cache_seconds``), accepted only when signed by ``certificate`` (a PEM file).
    """

    file: str | None = None
    url: str | None = None
    certificate: str | None = None
    max_cache_seconds: int = Field(86400, ge=60)

    @model_validator(mode="after")
    def _one_source(self) -> SamlMetadataSource:
        if (self.file is None) == (self.url is None):
            raise ValueError("metadata needs exactly one of file or url")
        if self.url is not None:
            check_web_url(self.url, what="metadata url")
            if not self.certificate:
                raise ValueError("metadata fetched from a url needs the certificate that signs it")
        return self


class SamlIdp(StrictModel):
    """An organisation's SAML 2.0 identity provider, as the broker's upstream."""

    protocol: Literal["saml"]
    entity_id: str = Field(min_length=1)
    metadata: SamlMetadataSource
    #: Refuse assertions that were not encrypted to the broker.
    require_encrypted_assertions: bool = False
    #: Also require the Response itself to be signed (the assertion always must be).
    require_signed_response: bool = False
    name_id_format: Literal["persistent", "unspecified", "emailAddress", "transient"] = "persistent"
    assurance: UpstreamAssurancePolicy = UpstreamAssurancePolicy()
    attributes: AttributeMapping = SAML_ATTRIBUTES

    @field_validator("attributes", mode="before")
    @classmethod
    def _over_defaults(cls, value: object) -> object:
        return _over(SAML_ATTRIBUTES, value)

    @model_validator(mode="after")
    def _stable_subject(self) -> SamlIdp:
        if self.name_id_format == "transient" and self.attributes.subject == "name_id":
            raise ValueError("a transient NameID changes every login: map 'attributes.subject' to a "
                             "stable attribute")
        return self


UpstreamIdp = OidcIdp | SamlIdp
