"""Settings: one YAML file plus ``IDBROKER_*`` environment variables, validated at start.

Environment variables override the file; nested keys use a double underscore:
``IDBROKER_STORE__URL=redis://…`` sets ``store.url``. A bad value stops the broker
with a message that names the key (``session.idle_timeout: …``), never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from idbroker.store import check_store_url
from idbroker.tokens.refresh import IDLE_TIMEOUT as REFRESH_IDLE_LIMIT

ENV_PREFIX = "IDBROKER_"


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the key and says what is expected."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(_Section):
    url: str = "sqlite:///var/idbroker.sqlite3"

    @field_validator("url")
    @classmethod
    def _known_url(cls, value: str) -> str:
        return check_store_url(value)


class SessionSettings(_Section):
    idle_timeout: int = Field(1800, ge=60, description="seconds without activity")
    # Bounded: each is a store entry's lifetime too, and a login is a working day, not a year
    # (a ttl of 1e16 s was a Redis error at every login).
    absolute_timeout: int = Field(36000, ge=300, le=7 * 24 * 3600, description="seconds after login")
    login_timeout: int = Field(900, ge=60, le=3600, description="seconds to finish one login")
    cookie_secure: Literal["auto", "always", "never"] = "auto"

    @model_validator(mode="after")
    def _idle_within_absolute(self) -> SessionSettings:
        if self.idle_timeout > self.absolute_timeout:
            raise ValueError("idle_timeout must not exceed absolute_timeout")
        return self


class TokenSettings(_Section):
    code_lifetime: int = Field(60, ge=1, le=600)
    id_token_lifetime: int = Field(300, ge=60, le=3600)
    access_token_lifetime: int = Field(300, ge=60, le=3600)
    client_assertion_max_age: int = Field(300, ge=30, le=3600)
    clock_skew: int = Field(60, ge=0, le=300)
    refresh_token_idle_timeout: int = Field(REFRESH_IDLE_LIMIT, gt=0,
                                            description="seconds a refresh token may go unused")

    @field_validator("refresh_token_idle_timeout")
    @classmethod
    def _refresh_idle_within_profile(cls, value: int) -> int:
        if value > REFRESH_IDLE_LIMIT:
            raise ValueError(f"must be at most {REFRESH_IDLE_LIMIT} seconds (6 hours, the NL GOV "
                             "Assurance profile's limit for an unused refresh token)")
        return value


class HttpSettings(_Section):
    trusted_proxies: tuple[str, ...] = ()
    upstream_timeout: float = Field(5.0, gt=0, le=60)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value


class ServerSettings(_Section):
    bind: str = "127.0.0.1:8080"
    workers: int = Field(2, ge=1, le=64, description="worker processes (granian)")
    threads: int = Field(8, ge=1, le=256, description="threads per worker process")
    access_log: bool = Field(True, description="one line per request on stdout (costs ~15% throughput)")

    @field_validator("bind")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        parse_bind(value)
        return value


class AuditSettings(_Section):
    """The audit trail (idbroker.audit). ``url`` unset: beside the store, i.e. a
    ``*-audit.sqlite3`` file next to a SQLite store, or the store's own Redis."""

    url: str | None = None
    retention_days: int = Field(1825, ge=1, description="events older than this are pruned")
    checkpoint_every: int = Field(1000, ge=1, description="a signed checkpoint every N events")
    checkpoint_seconds: int = Field(300, ge=1, description="... and at least this often")
    redis_wait_replicas: int = Field(0, ge=0, le=16, description="replicas that must confirm each event")
    redis_wait_timeout_ms: int = Field(100, ge=1, le=10000)

    @field_validator("url")
    @classmethod
    def _known_url(cls, value: str | None) -> str | None:
        return None if value is None else check_store_url(value)


def parse_bind(value: str) -> tuple[str, int]:
    """``host:port`` (``[::]:8080``; no host: 127.0.0.1) as the server binds it."""
    host, colon, port = value.rpartition(":")
    if not colon or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8080 or [::]:8080)")
    return host.strip("[]") or "127.0.0.1", int(port)


def default_audit_url(store_url: str) -> str:
    """The audit log beside the store: ``x.sqlite3`` → ``x-audit.sqlite3``; Redis: the same."""
    prefix = "sqlite:///"
    if not store_url.startswith(prefix) or store_url.endswith(":memory:"):
        return store_url
    path = Path(store_url[len(prefix):])
    return prefix + str(path.with_name(f"{path.stem}-audit{path.suffix or '.sqlite3'}"))


class Settings(_Section):
    issuer: str
    policies_dir: Path = Path("policies")
    keys_dir: Path = Path("keys")
    store: StoreSettings = StoreSettings()
    session: SessionSettings = SessionSettings()
    tokens: TokenSettings = TokenSettings()
    http: HttpSettings = HttpSettings()
    server: ServerSettings = ServerSettings()
    audit: AuditSettings = AuditSettings()
    default_locale: Literal["nl", "en"] = "nl"

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        parts = urlsplit(value)
        local = parts.hostname in {"localhost", "127.0.0.1", "::1"}
        if parts.scheme != "https" and not (parts.scheme == "http" and local):
            raise ValueError("must be an https:// URL (http:// only for localhost)")
        if parts.query or parts.fragment or value.endswith("/"):
            raise ValueError("must have no query, fragment or trailing slash")
        return value

    @property
    def on_localhost(self) -> bool:
        return urlsplit(self.issuer).hostname in {"localhost", "127.0.0.1", "::1"}

    @property
    def audit_url(self) -> str:
        return self.audit.url or default_audit_url(self.store.url)

    @property
    def secure_cookies(self) -> bool:
        if self.session.cookie_secure == "auto":
            return not self.on_localhost
        return self.session.cookie_secure == "always"


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the file (if any), apply the environment, then ``overrides``; validate all."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    for dotted, value in _env_items(os.environ if environ is None else environ):
        _set_dotted(data, dotted, value)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    # Relative directories are relative to the config file, as operators expect.
    return settings.model_copy(
        update={
            "policies_dir": (base / settings.policies_dir).resolve(),
            "keys_dir": (base / settings.keys_dir).resolve(),
            "store": settings.store.model_copy(update={"url": _anchor_sqlite(settings.store.url, base)}),
            "audit": settings.audit.model_copy(
                update={"url": settings.audit.url and _anchor_sqlite(settings.audit.url, base)}),
        }
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return loaded


def _env_items(environ: Mapping[str, str]) -> list[tuple[str, Any]]:
    items = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
        # Lists and numbers are written as YAML so `[10.0.0.0/8]` and `300` work.
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        items.append((dotted, raw if isinstance(value, dict) else value))
    return items


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
        node = child
    node[leaf] = value


def _anchor_sqlite(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str((base / url[len(prefix):]).resolve())
    return url


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling)"
        elif err["type"] == "missing":
            message = "required setting is missing"
        lines.append(f"{key}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
