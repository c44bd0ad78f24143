"""The policy model: pure data, validated on load, no web framework in sight.

The chain as code: organisations (WGS participant kinds) with their IdP; teams inside an
organisation, whose members come from upstream claims or explicit lists, optionally only
between two moments and only while on duty per a rota; roles per team with a minimum
level of assurance and grants (per chain application: the application scopes the role may
get); and the chain applications (OIDC clients) with what they may receive.

Two kinds of scope, kept apart on purpose:

- **identity scopes** (``ClientPolicy.scopes``: ``openid``, ``profile``, ``email``) say
  which identity claims a client may ask for. Every person who may log in gets them;
  no role grants them.
- **application scopes** (``ClientPolicy.application_scopes``) are permissions in the
  chain application's own API (``casus.lezen``). Only roles grant them, each marked
  whether it touches personal data (the default: it does), which sets the level needed.

Cross-entry rules (references, WGS invariants, overlapping windows) live in
:mod:`idbroker.policy.invariants`, so that the loader can place each finding at its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, PlainValidator, PrivateAttr, StrictBool, field_validator, model_validator

from idbroker.assurance.levels import Level
from idbroker.policy.common import Identifier, OwnSigningAlg, StrictModel, check_web_url
from idbroker.policy.idp import OidcIdp, SamlIdp
from idbroker.policy.rota import AMSTERDAM, WeeklyWindow, parse_clock, parse_days

if TYPE_CHECKING:
    from idbroker.policy.evaluate import Decision, PersonFacts, PolicyIndex

LevelName = Literal["low", "substantial", "high"]
_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
_SCOPE_PATTERN = r"^[a-z][a-z0-9_.:-]{0,99}$"
_EMAIL = re.compile(r"^[^@\s]+@[a-z0-9.-]+\.[a-z]{2,}$")

#: Claims a client may be given (``claims:``), and the identity scope each one needs.
#: ``sub`` is always there; ``person`` is the stable pseudonymous person identifier.
CLAIM_SCOPES: Mapping[str, str] = {
    "name": "profile", "given_name": "profile", "family_name": "profile", "employee_number": "profile",
    "email": "email",
    "organisation": "openid", "organisation_kind": "openid", "team": "openid", "roles": "openid",
    "person": "openid", "acr": "openid", "amr": "openid", "auth_time": "openid",
}
ClaimName = Literal["name", "given_name", "family_name", "employee_number", "email", "organisation",
                    "organisation_kind", "team", "roles", "person", "acr", "amr", "auth_time"]
#: What a client receives when its policy does not list ``claims``: who acts for whom, plus
#: the identity claims its scopes allow.
DEFAULT_CLAIMS = ("organisation", "team", "roles", "person", "acr")
IDENTITY_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})


#: The moments a rule may name: every one of them, and the day after a date, is a time in
#: Amsterdam too (9999-12-31, a common "no end", is not: leave ``valid_until`` out instead).
_EARLIEST, _LATEST = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)


def parse_moment(value: Any) -> date | datetime:
    """A date (whole days, Europe/Amsterdam) or a date-time; without an offset it is
    Amsterdam wall-clock time."""
    return _in_range(value, _moment(value))


def _moment(value: Any) -> date | datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=AMSTERDAM)
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                return date.fromisoformat(text)
            parsed = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=AMSTERDAM)
    raise ValueError(f"'{value}' is not a date (2025-03-01) or a date-time (2025-03-01T08:00, "
                     f"Europe/Amsterdam unless it names an offset such as +01:00 or Z)")


def _in_range(value: Any, moment: date | datetime) -> date | datetime:
    instant = moment if isinstance(moment, datetime) else datetime.combine(moment, time(0), UTC)
    if not _EARLIEST <= instant <= _LATEST:
        raise ValueError(f"'{value}' is too far off (before 0001-01-02 or after 9999-12-30); "
                         "for a rule without end, leave valid_until out")
    return moment


Moment = Annotated[date | datetime, PlainValidator(parse_moment)]


def moment_start(value: date | datetime) -> float:
    """The first instant (epoch seconds) a ``valid_from`` covers."""
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.combine(value, time(0), AMSTERDAM).timestamp()


def moment_end(value: date | datetime) -> float:
    """The first instant a ``valid_until`` no longer covers: a date includes that whole day."""
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.combine(value + timedelta(days=1), time(0), AMSTERDAM).timestamp()


class AuthenticatorPolicy(StrictModel):
    """Which WebAuthn authenticators the organisation's staff may enrol.

    ``none`` (the default): any authenticator with user verification. ``allow-list``: only the
    listed AAGUIDs, each proven by an attestation chaining to one of its vendor's root
    certificates (PEM files, relative paths read from the policy directory) — an AAGUID an
    authenticator merely claims proves nothing.
    """

    attestation: Literal["none", "allow-list"] = "none"
    allowed: dict[str, tuple[str, ...]] = {}

    @model_validator(mode="after")
    def _consistent(self) -> AuthenticatorPolicy:
        if self.attestation == "allow-list" and not self.allowed:
            raise ValueError("attestation allow-list needs 'allowed': AAGUID -> vendor root PEM files")
        if self.attestation == "none" and self.allowed:
            raise ValueError("'allowed' is used only with attestation: allow-list")
        for aaguid, roots in self.allowed.items():
            if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", aaguid):
                raise ValueError(f"'{aaguid}' is not a lower-case AAGUID (UUID)")
            if not roots:
                raise ValueError(f"AAGUID {aaguid} needs at least one root certificate file")
        return self


class Organisation(StrictModel):
    id: str = Identifier
    name: str = Field(min_length=1)
    #: WGS participant kind: fixed ``government`` or ``private`` participants, or an
    #: ``incidental`` third party invited for one case (no access to partnership systems).
    kind: Literal["government", "private", "incidental"] = "private"
    #: E-mail domains that send a ``login_hint`` straight to this organisation.
    domains: tuple[str, ...] = ()
    idp: OidcIdp | SamlIdp = Field(discriminator="protocol")
    authenticators: AuthenticatorPolicy = AuthenticatorPolicy()

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for domain in value:
            if not re.fullmatch(r"[a-z0-9.-]+\.[a-z]{2,}", domain):
                raise ValueError(f"'{domain}' is not a lower-case domain name")
        return value


class ApplicationScope(StrictModel):
    """A permission in a chain application's API, granted only through roles."""

    name: str = Field(pattern=_SCOPE_PATTERN)
    description: str | None = None
    #: Fail closed: a scope is taken to touch personal data unless marked otherwise.
    personal_data: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class TokenExchangeRule(StrictModel):
    """RFC 8693: one audience (a client id) this client may exchange a user's access token
    towards, and the most it may get there. What the person's team roles grant on that
    audience at the token's level still limits it: the rule never adds a permission."""

    audience: str = Identifier
    scopes: tuple[str, ...] = Field(min_length=1)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for scope in value:
            if not re.fullmatch(_SCOPE_PATTERN, scope):
                raise ValueError(f"'{scope}' is not a scope name")
        if len(set(value)) != len(value):
            raise ValueError("a scope is listed twice")
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
    #: Identity scopes the client may ask for (see the module docstring).
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    id_token_signed_response_alg: OwnSigningAlg = "ES256"
    #: The ``aud`` of this client's access tokens when it asks for no resource.
    default_audience: str | None = None
    #: Application scopes: granted by roles only.
    application_scopes: tuple[ApplicationScope, ...] = ()
    #: Nobody reaches this application below this level, whatever their roles.
    min_level: LevelName = "substantial"
    #: The claims this client receives (data minimisation); unset: ``DEFAULT_CLAIMS`` plus
    #: the identity claims its scopes allow.
    claims: tuple[ClaimName, ...] | None = None
    #: ``pairwise``: each sector sees its own stable ``sub`` per person; ``public``: one for all.
    subject_type: Literal["pairwise", "public"] = "pairwise"
    #: Clients in one sector share pairwise subjects; unset: the client is its own sector.
    sector: str | None = Field(None, pattern=_ID_PATTERN)
    #: ``24x7`` for the crisis-measure processes; ``office-hours`` for everything else.
    availability: Literal["24x7", "office-hours"] = "office-hours"
    #: A WGS partnership system: incidental third parties may never be granted its scopes.
    partnership_system: StrictBool = False
    #: RFC 8707 ``resource`` values that name this application's API(s): absolute http(s)
    #: URIs without query or fragment, each naming one client only (checked across clients).
    resource_uris: tuple[str, ...] = ()
    #: RFC 8693: towards which audiences this client may exchange a user's token, with at
    #: most which scopes (``[{audience: zvh-casus, scopes: [zvh.casus.lezen]}]``).
    token_exchange: tuple[TokenExchangeRule, ...] = ()

    @field_validator("redirect_uris", "post_logout_redirect_uris")
    @classmethod
    def _uris(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for uri in value:
            check_web_url(uri, what="redirect URI")
        return value

    @field_validator("resource_uris")
    @classmethod
    def _resource_uris(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for uri in value:
            check_web_url(uri, what="resource URI")
            if "?" in uri:
                raise ValueError("a resource URI must not contain a query (RFC 8707)")
        if len(set(value)) != len(value):
            raise ValueError("a resource URI is listed twice")
        return value

    @field_validator("token_exchange")
    @classmethod
    def _token_exchange(cls, value: tuple[TokenExchangeRule, ...]) -> tuple[TokenExchangeRule, ...]:
        audiences = [rule.audience for rule in value]
        if len(set(audiences)) != len(audiences):
            raise ValueError("an audience is listed twice: merge its scopes into one entry")
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
        if self.subject_type == "public" and self.sector is not None:
            raise ValueError("a sector is only for subject_type pairwise")
        return self

    @property
    def audience(self) -> str:
        return self.default_audience or self.id

    @property
    def minimum_level(self) -> Level:
        return Level.from_name(self.min_level)

    @property
    def refresh_tokens(self) -> bool:
        """Refresh tokens are issued only to clients allowed the ``offline_access`` scope
        (and only when the request asks for it); there is no separate switch."""
        return "offline_access" in self.scopes

    @cached_property
    def audience_values(self) -> frozenset[str]:
        """Every ``aud`` value that names this application: id, default audience, resources."""
        return frozenset((self.id, self.audience, *self.resource_uris))

    def exchange_rule(self, audience: str) -> TokenExchangeRule | None:
        """The RFC 8693 rule that lets this client exchange towards ``audience``, if any."""
        return next((rule for rule in self.token_exchange if rule.audience == audience), None)

    @property
    def sector_id(self) -> str:
        """The pairwise-subject sector: clients that share it see the same ``sub``."""
        return self.sector or self.id

    @cached_property
    def application_scope_names(self) -> frozenset[str]:
        return frozenset(scope.name for scope in self.application_scopes)

    @cached_property
    def personal_data_scopes(self) -> frozenset[str]:
        return frozenset(scope.name for scope in self.application_scopes if scope.personal_data)

    @property
    def allowed_scopes(self) -> tuple[str, ...]:
        """Every scope this client may put in a request: identity, then application scopes."""
        return self.scopes + tuple(scope.name for scope in self.application_scopes)

    @cached_property
    def received_claims(self) -> frozenset[str]:
        """The claims this client may be given, after data minimisation."""
        if self.claims is not None:
            return frozenset(self.claims)
        return frozenset(DEFAULT_CLAIMS) | {claim for claim, scope in CLAIM_SCOPES.items()
                                            if scope != "openid" and scope in self.scopes}


class Window(StrictModel):
    """One recurring weekly window of a rota, e.g. ``{days: [mon-fri], from: "17:00", until: "08:00"}``."""

    days: tuple[str, ...]
    start: str = Field(alias="from")
    end: str = Field(alias="until")
    _weekly: WeeklyWindow = PrivateAttr()

    @field_validator("days")
    @classmethod
    def _days(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_days(value)
        return value

    @field_validator("start", "end", mode="before")
    @classmethod
    def _clock(cls, value: Any, info: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(f"{value} is a number: write the time of day as text, e.g. \"08:00\"")
        parse_clock(value, end=info.field_name == "end")
        return value

    @model_validator(mode="after")
    def _window(self) -> Window:
        self._weekly = WeeklyWindow(parse_days(self.days), parse_clock(self.start, end=False),
                                    parse_clock(self.end, end=True))
        return self

    @property
    def weekly(self) -> WeeklyWindow:
        return self._weekly


class Rota(StrictModel):
    """When the on-call members of a team are on duty (Europe/Amsterdam wall-clock time)."""

    id: str = Identifier
    name: str = Field(min_length=1)
    #: At least one (checked with the invariants, so a broken window is not reported twice).
    windows: tuple[Window, ...]


class AttributeMatch(StrictModel):
    name: str = Field(min_length=1)
    equals: str = Field(min_length=1)


class MemberRule(StrictModel):
    """Who is a member of a team: exactly one of an upstream ``group``, an ``attribute``
    match, or explicit persons (``subjects`` and/or ``emails``); optionally only between
    ``valid_from`` and ``valid_until`` and only while on duty per ``rota``."""

    group: str | None = Field(None, min_length=1)
    attribute: AttributeMatch | None = None
    #: Upstream subjects (the IdP's ``sub`` / persistent NameID) of the persons.
    subjects: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    #: The team roles this rule gives; unset: all of them.
    roles: tuple[str, ...] | None = None
    valid_from: Moment | None = None
    #: A date includes that whole day (Europe/Amsterdam).
    valid_until: Moment | None = None
    rota: str | None = Field(None, pattern=_ID_PATTERN)
    note: str | None = None

    @field_validator("emails")
    @classmethod
    def _emails(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for email in value:
            if not _EMAIL.match(email.lower()):
                raise ValueError(f"'{email}' is not an e-mail address")
        return tuple(email.lower() for email in value)

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not subject.strip() for subject in value):
            raise ValueError("a subject must not be empty")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> MemberRule:
        kinds = [self.group is not None, self.attribute is not None, bool(self.subjects or self.emails)]
        if sum(kinds) != 1:
            raise ValueError("a member rule needs exactly one of: group, attribute, or subjects/emails "
                             "(write one rule per criterion)")
        return self

    @property
    def kind(self) -> Literal["group", "attribute", "persons"]:
        if self.group is not None:
            return "group"
        return "attribute" if self.attribute is not None else "persons"

    def describe(self) -> str:
        if self.group is not None:
            return f"upstream group '{self.group}'"
        if self.attribute is not None:
            return f"upstream attribute {self.attribute.name} = '{self.attribute.equals}'"
        count = len(self.subjects) + len(self.emails)
        return f"listed by name ({count} person{'s' if count != 1 else ''})"


class Role(StrictModel):
    id: str = Identifier
    name: str | None = None
    #: The level a person must have reached to use this role's grants.
    min_level: LevelName = "substantial"
    #: Per chain application (client id): the application scopes this role may get.
    grants: dict[str, tuple[str, ...]] = {}

    @property
    def minimum_level(self) -> Level:
        return Level.from_name(self.min_level)


class Team(StrictModel):
    id: str = Identifier
    organisation: str = Identifier
    name: str = Field(min_length=1)
    description: str | None = None
    roles: tuple[Role, ...] = ()
    members: tuple[MemberRule, ...] = ()

    def role(self, role_id: str) -> Role | None:
        return next((role for role in self.roles if role.id == role_id), None)


class Policy(StrictModel):
    """Everything the broker enforces, loaded as one consistent, immutable whole.

    Build it with :func:`idbroker.policy.load_policy`, which also checks the cross-entry
    invariants; the evaluation index is built once, here, when the policy is made.
    """

    organisations: dict[str, Organisation]
    clients: dict[str, ClientPolicy]
    rotas: dict[str, Rota] = {}
    teams: dict[str, Team] = {}
    #: Where each entry was written (``"teams/<id>"`` -> ``"teams.yaml:12"``), for explain.
    sources: dict[str, str] = {}
    def model_post_init(self, context: Any, /) -> None:
        self.index  # built now, with the policy, not at the first login  # noqa: B018

    @cached_property
    def index(self) -> PolicyIndex:
        """The policy compiled for evaluation (a plain attribute once built: no lookup cost)."""
        from idbroker.policy.evaluate import PolicyIndex

        return PolicyIndex.build(self)

    def evaluate(self, person: PersonFacts, client_id: str, now: datetime) -> Decision:
        """What ``person`` may do in ``client_id``'s application at ``now`` (aware)."""
        return self.index.evaluate(person, client_id, now)

    def organisation_for_domain(self, domain: str) -> Organisation | None:
        return self.index.domains.get(domain.lower())

    def client_for_resource(self, resource: str) -> str | None:
        """The client whose ``resource_uris`` names ``resource`` (RFC 8707), if any."""
        return self.index.resources.get(resource)
