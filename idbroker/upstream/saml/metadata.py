"""An IdP's SAML metadata: read from a file, or fetched, checked and cached.

Fetched metadata is trusted only when its root carries an enveloped signature by the
certificate the policy names, when it is still valid (``validUntil``), and when it
describes the configured entity. It is kept in the store (shared by every broker instance)
until the earliest of ``validUntil``, ``cacheDuration`` and the policy's cap; when a refresh
fails, the copy in hand serves on while its ``validUntil`` allows — and not a moment longer.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from lxml import etree

from idbroker.policy.idp import SamlMetadataSource
from idbroker.store import Store
from idbroker.upstream.base import UpstreamError
from idbroker.upstream.saml.crypto import InProcessXmlSec, parse_xml

_MD = "urn:oasis:names:tc:SAML:2.0:metadata"
_NAMESPACE = "saml-metadata"
_MAX_BYTES = 2 * 1024 * 1024
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
#: How often a file is looked at again, or a cached copy in the store re-read.
_RECHECK_SECONDS = 30.0


class MetadataError(ValueError):
    """The metadata is not usable; the message says why (for the log and ``check``)."""


@dataclass(frozen=True)
class IdpMetadata:
    xml: str
    #: Unix time after which this copy must not be used (validUntil), or None.
    valid_until: float | None
    #: Unix time after which it should be fetched again.
    refresh_at: float

    @functools.cached_property
    def digest(self) -> str:
        """Which pysaml2 client belongs to this metadata (asked at every login step)."""
        return hashlib.sha256(self.xml.encode("utf-8")).hexdigest()


def parse_duration(value: str) -> float:
    """An ``xs:duration`` without years or months (as ``cacheDuration`` is written), in seconds."""
    match = _DURATION.match(value.strip())
    if not match or value.strip() in {"P", "PT"}:
        raise MetadataError(f"cacheDuration {value!r} is not a duration in days/hours/minutes/seconds")
    days, hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _parse_instant(value: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise MetadataError(f"validUntil {value!r} is not a date-time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def check_metadata(xml: bytes | str, *, entity_id: str, certificate_file: str | None,
                   max_cache_seconds: float, now: float | None = None) -> IdpMetadata:
    """Validate one metadata document; signature required when ``certificate_file`` is given."""
    now = time.time() if now is None else now
    try:
        root = parse_xml(xml)
    except ValueError as exc:
        raise MetadataError(str(exc)) from exc
    if root.tag not in {f"{{{_MD}}}EntityDescriptor", f"{{{_MD}}}EntitiesDescriptor"}:
        raise MetadataError("not SAML metadata (no EntityDescriptor or EntitiesDescriptor)")
    if certificate_file is not None:
        node_name = f"{_MD}:{etree.QName(root).localname}"
        identifier = root.get("ID")
        if not identifier:
            raise MetadataError("signed metadata needs an ID on its root element")
        if not InProcessXmlSec().validate_signature(etree.tostring(root), certificate_file, "pem",
                                                    node_name, identifier):
            raise MetadataError("metadata signature does not verify with the configured certificate")
    entities = [root] if root.get("entityID") else list(root.iter(f"{{{_MD}}}EntityDescriptor"))
    if not any(entity.get("entityID") == entity_id for entity in entities):
        raise MetadataError(f"metadata does not describe entity {entity_id}")
    valid_until = None
    limits = [now + max_cache_seconds]
    for element in (root, *[e for e in entities if e.get("entityID") == entity_id]):
        if element.get("validUntil"):
            until = _parse_instant(element.get("validUntil"))
            valid_until = until if valid_until is None else min(valid_until, until)
        if element.get("cacheDuration"):
            limits.append(now + parse_duration(element.get("cacheDuration")))
    if valid_until is not None:
        if valid_until <= now:
            raise MetadataError("metadata has expired (validUntil is in the past)")
        limits.append(valid_until)
    text = xml.decode("utf-8") if isinstance(xml, bytes) else xml
    return IdpMetadata(text, valid_until, min(limits))


class MetadataSource:
    """The current metadata of one IdP, as its policy entry says where to get it."""

    def __init__(self, source: SamlMetadataSource, *, entity_id: str, policy_dir: Path, store: Store,
                 timeout: float = 5.0) -> None:
        self.source = source
        self.entity_id = entity_id
        self.policy_dir = Path(policy_dir)
        self.store = store
        self.timeout = timeout
        self._lock = threading.Lock()
        self._current: IdpMetadata | None = None
        self._checked_at = 0.0

    def current(self) -> IdpMetadata:
        """Metadata valid now; raises ``UpstreamError`` (unreachable/invalid) when there is none."""
        now = time.time()
        with self._lock:
            current, checked_at = self._current, self._checked_at
        if current is not None and now - checked_at < _RECHECK_SECONDS and now < current.refresh_at:
            return current
        fresh = self._read_file(now) if self.source.file else self._from_url(now, current)
        with self._lock:
            self._current, self._checked_at = fresh, now
        return fresh

    def _path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.policy_dir / path

    def _certificate_file(self) -> str | None:
        return str(self._path(self.source.certificate)) if self.source.certificate else None

    def _read_file(self, now: float) -> IdpMetadata:
        try:
            data = self._path(self.source.file or "").read_bytes()
            return check_metadata(data, entity_id=self.entity_id, certificate_file=self._certificate_file(),
                                  max_cache_seconds=_RECHECK_SECONDS, now=now)
        except OSError as exc:
            raise UpstreamError("invalid", f"metadata file: {exc.strerror}") from exc
        except MetadataError as exc:
            raise UpstreamError("invalid", f"metadata file: {exc}") from exc

    def _from_url(self, now: float, in_hand: IdpMetadata | None) -> IdpMetadata:
        url = self.source.url or ""
        cached = self.store.get(_NAMESPACE, url)
        if cached is not None and cached["refresh_at"] > now and cached.get("valid_until", now + 1) > now:
            return IdpMetadata(cached["xml"], cached.get("valid_until"), cached["refresh_at"])
        try:
            fetched = self._fetch(url, now)
        except (UpstreamError, MetadataError) as exc:
            fallback = in_hand or (IdpMetadata(cached["xml"], cached.get("valid_until"), now)
                                   if cached is not None else None)
            if fallback is not None and (fallback.valid_until is None or fallback.valid_until > now):
                # Serve the copy in hand while it is valid; try again shortly.
                return IdpMetadata(fallback.xml, fallback.valid_until, now + _RECHECK_SECONDS)
            if isinstance(exc, UpstreamError):
                raise
            raise UpstreamError("invalid", f"metadata from {url}: {exc}") from exc
        ttl = max(fetched.refresh_at - now, 1.0)
        self.store.put(_NAMESPACE, url, {"xml": fetched.xml, "valid_until": fetched.valid_until,
                                         "refresh_at": fetched.refresh_at}, ttl)
        return fetched

    def _fetch(self, url: str, now: float) -> IdpMetadata:
        try:
            with requests.get(url, timeout=self.timeout, stream=True,
                              headers={"Accept": "application/samlmetadata+xml, application/xml"}) as reply:
                reply.raise_for_status()
                data = reply.raw.read(_MAX_BYTES + 1, decode_content=True)
        except requests.RequestException as exc:
            raise UpstreamError("unreachable", f"metadata {url}: {type(exc).__name__}") from exc
        if len(data) > _MAX_BYTES:
            raise MetadataError("metadata larger than 2 MiB")
        return check_metadata(data, entity_id=self.entity_id, certificate_file=self._certificate_file(),
                              max_cache_seconds=self.source.max_cache_seconds, now=now)
