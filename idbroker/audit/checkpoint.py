"""Signed checkpoints: the broker's own signature over "record ``seq`` has hash ``H``".

The hash chain shows that records fit together; only a signature shows that the chain is
the one the broker wrote. Whoever can write the store could otherwise rebuild the whole
chain. A checkpoint is a compact JWS (``typ: audit-checkpoint+jwt``, signed by the
:class:`~idbroker.keys.KeyRing`, so verifiable with the broker's JWKS)::

    {"seq": 1000, "hash": "<sha256 hex of record 1000>", "time": <its UTC ms>,
     "kind": "periodic" | "manual" | "cut", "iat": <signing time, s>, "iss": "<issuer>"}

and because record ``seq``'s hash covers every record before it, one valid checkpoint
vouches for the whole chain up to ``seq``. The broker writes one every
``audit.checkpoint_every`` events and every ``audit.checkpoint_seconds`` (checked on the
next append) and on ``keys.rotated``; each is also logged as ``audit checkpoint seq=N
hash=H`` so a log collector holds an anchor outside the store (``audit verify --anchors``).

A retention cut leaves a ``cut`` checkpoint at the last removed record: the first kept
record's ``prev`` must equal its hash. That checkpoint must stay verifiable for years while
signing keys rotate and old ones leave the JWKS, so it is re-signed with the active key
whenever a new checkpoint is written and its key is no longer the active one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from idbroker.audit.chain import AuditRecord, ChainHead
from idbroker.keys import KeyRing, TokenInvalid, read_compact

if TYPE_CHECKING:
    from idbroker.audit.log import AuditLog

CHECKPOINT_TYP = "audit-checkpoint+jwt"
KINDS = ("periodic", "manual", "cut")
_HASH = re.compile(r"[0-9a-f]{64}")
log = logging.getLogger("idbroker.audit")


class CheckpointInvalid(ValueError):
    """Not a checkpoint this broker signed (bad signature, wrong type or claims)."""


class CheckpointUnverifiable(CheckpointInvalid):
    """Signed with a key that is no longer in the key ring: neither valid nor forged."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    time_ms: int
    kind: str
    iat: int
    kid: str
    token: str

    @property
    def head(self) -> ChainHead:
        return ChainHead(self.seq, self.hash, self.time_ms)


def sign_checkpoint(keys: KeyRing, at: ChainHead, *, kind: str, issuer: str | None = None,
                    alg: str = "ES256") -> str:
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}")
    claims: dict[str, Any] = {"seq": at.seq, "hash": at.hash, "time": at.time_ms, "kind": kind,
                              "iat": int(time.time())}
    if issuer:
        claims["iss"] = issuer
    return keys.sign(claims, alg=alg, typ=CHECKPOINT_TYP)


def read_checkpoint(keys: KeyRing, token: str, *, issuer: str | None = None) -> Checkpoint:
    """The checkpoint in ``token`` once its signature verifies against ``keys``."""
    try:
        _, header = read_compact(token)
    except TokenInvalid:
        raise CheckpointInvalid("not a compact JWS") from None
    kid = str(header.get("kid"))
    if kid not in {jwk.get("kid") for jwk in keys.public_jwks()["keys"]}:
        raise CheckpointUnverifiable(f"signed with key {kid}, which is no longer in the key ring")
    try:
        claims = keys.verify(token, typ=CHECKPOINT_TYP)
    except TokenInvalid as exc:
        raise CheckpointInvalid(f"signature or type does not verify ({exc})") from None
    seq, record_hash, time_ms, kind, iat = (claims.get(name) for name in ("seq", "hash", "time", "kind",
                                                                            "iat"))
    if not (isinstance(seq, int) and seq > 0 and isinstance(record_hash, str) and _HASH.fullmatch(record_hash)
            and isinstance(time_ms, int) and kind in KINDS and isinstance(iat, int)):
        raise CheckpointInvalid("claims are not those of an audit checkpoint")
    if issuer is not None and claims.get("iss") not in (None, issuer):
        raise CheckpointInvalid(f"issued by {claims.get('iss')!r}, not {issuer!r}")
    return Checkpoint(seq, record_hash, time_ms, str(kind), iat, kid, token)


class Checkpointer:
    """When and how a log writes checkpoints; attached as ``log.checkpointer``."""

    def __init__(self, keys: KeyRing, *, issuer: str | None = None, every_events: int = 1000,
                 every_seconds: float = 300.0, alg: str = "ES256") -> None:
        self.keys = keys
        self.issuer = issuer
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.alg = alg
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def after_record(self, audit: AuditLog, record: AuditRecord) -> None:
        """Write a checkpoint when one is due. Never raises: the record is already durable,
        a missed checkpoint only leaves a longer unsigned tail (logged as a warning)."""
        with self._lock:
            due = (record.seq % self.every_events == 0
                   or time.monotonic() - self._last >= self.every_seconds
                   or record.event.get("type") == "keys.rotated")
            if due:
                self._last = time.monotonic()
        if not due:
            return
        try:
            self.write(audit, record.head, kind="periodic")
        except Exception as exc:  # the event is stored; the request must not fail on this
            log.warning("audit checkpoint at seq %d failed: %s", record.seq, exc)

    def checkpoint(self, audit: AuditLog, *, kind: str = "manual") -> Checkpoint | None:
        """A checkpoint at the current head now (``idbroker audit checkpoint``); None if empty."""
        head = audit.head()
        if head.seq == 0:
            return None
        token = self.write(audit, head, kind=kind)
        return read_checkpoint(self.keys, token)

    def write(self, audit: AuditLog, at: ChainHead, *, kind: str) -> str:
        if kind != "cut" and self._is_cut(audit.checkpoint(at.seq)):
            kind = "cut"  # a manual checkpoint of a head left by a prune stays its retention anchor
        token = sign_checkpoint(self.keys, at, kind=kind, issuer=self.issuer, alg=self.alg)
        audit.put_checkpoint(at.seq, token)
        log.info("audit checkpoint seq=%d hash=%s kind=%s", at.seq, at.hash, kind)
        self.refresh_anchor(audit)
        return token

    def _is_cut(self, token: str | None) -> bool:
        try:
            return token is not None and read_checkpoint(self.keys, token, issuer=self.issuer).kind == "cut"
        except (CheckpointInvalid, CheckpointUnverifiable):
            return False

    def sign_cut(self, at: ChainHead) -> str:
        return sign_checkpoint(self.keys, at, kind="cut", issuer=self.issuer, alg=self.alg)

    def refresh_anchor(self, audit: AuditLog) -> bool:
        """Re-sign the retention anchor with the active key if an older key signed it (while
        that key still verifies it). True if it was re-signed."""
        first = audit.first_seq()
        anchor_seq = (first - 1) if first is not None else audit.head().seq
        if anchor_seq <= 0:
            return False
        token = audit.checkpoint(anchor_seq)
        if token is None:
            return False
        current = read_checkpoint(self.keys, token, issuer=self.issuer)
        if current.kind != "cut" or current.kid == self.keys.active_key(self.alg).kid:
            return False
        audit.put_checkpoint(anchor_seq, sign_checkpoint(self.keys, current.head, kind="cut",
                                                         issuer=self.issuer, alg=self.alg))
        log.info("audit retention anchor at seq %d re-signed with the active key", anchor_seq)
        return True
