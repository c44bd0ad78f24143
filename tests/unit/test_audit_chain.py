"""The hash chain and the signed checkpoints, without any store."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from idbroker.audit.chain import (
    GENESIS,
    GENESIS_HASH,
    ChainHead,
    MalformedRecord,
    canonical_json,
    parse_record,
    seal,
)
from idbroker.audit.checkpoint import (
    CHECKPOINT_TYP,
    CheckpointInvalid,
    CheckpointUnverifiable,
    read_checkpoint,
    sign_checkpoint,
)
from idbroker.keys import KeyRing

EVENT = {"type": "token.issued", "outcome": "success", "person": "p-x", "detail": {"naïve": "ü"}}


def test_a_sealed_record_is_the_sha256_of_its_canonical_body() -> None:
    record = seal(GENESIS, "a" * 32, EVENT, 1_700_000_000_123)
    assert record.seq == 1 and record.prev == GENESIS_HASH and record.time_ms == 1_700_000_000_123
    assert record.hash == hashlib.sha256(record.body.encode("utf-8")).hexdigest()
    assert json.loads(record.body) == {"v": 1, "seq": 1, "id": "a" * 32, "time": 1_700_000_000_123,
                                       "prev": GENESIS_HASH, "event": EVENT}
    assert record.body == canonical_json(json.loads(record.body))
    assert "ü" in record.body  # UTF-8, not \\u escapes: one form per content
    assert record.time.isoformat() == "2023-11-14T22:13:20.123000+00:00"


def test_records_link_and_time_never_runs_backwards() -> None:
    first = seal(GENESIS, "a" * 32, EVENT, 2_000)
    second = seal(first.head, "b" * 32, EVENT, 1_000)  # this host's clock is behind
    assert second.seq == 2 and second.prev == first.hash
    assert second.time_ms == 2_000


def test_the_same_content_always_hashes_the_same() -> None:
    one = seal(ChainHead(4, "c" * 64, 5), "d" * 32, {"b": 1, "a": [1, 2]}, 9)
    two = seal(ChainHead(4, "c" * 64, 5), "d" * 32, {"a": [1, 2], "b": 1}, 9)
    assert one.body == two.body and one.hash == two.hash


def test_parse_gives_back_the_record() -> None:
    record = seal(GENESIS, "a" * 32, EVENT, 7)
    assert parse_record(record.body, record.hash) == record


@pytest.mark.parametrize(("body", "why"), [
    ("not json", "not JSON"),
    ('{"v":2,"seq":1}', "version"),
    ('{"v":1,"seq":1}', "missing"),
    ('{"event":{},"id":"a","prev":"0","seq":"1","time":1,"v":1}', "types"),
    ('{"event":{},"extra":1,"id":"a","prev":"0","seq":1,"time":1,"v":1}', "extra"),
    ('{"v":1,"seq":1,"id":"a","time":1,"prev":"0","event":{}}', "canonical"),
    ('{"event":{},"id":"a","prev":"0","seq":1,"time":1,"v":1} ', "canonical"),
])
def test_parse_refuses_what_is_not_a_canonical_record(body: str, why: str) -> None:
    with pytest.raises(MalformedRecord, match=why):
        parse_record(body, "")


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return KeyRing(tmp_path_factory.mktemp("keys"))


def test_a_checkpoint_is_a_typed_jws_verifiable_with_the_jwks(ring: KeyRing) -> None:
    head = ChainHead(42, "ab" * 32, 1_700_000_000_000)
    token = sign_checkpoint(ring, head, kind="periodic", issuer="https://idbroker.test")
    checkpoint = read_checkpoint(ring, token, issuer="https://idbroker.test")
    assert checkpoint.head == head and checkpoint.kind == "periodic"
    assert checkpoint.kid == ring.active_key("ES256").kid
    assert abs(checkpoint.iat - time.time()) < 5
    assert ring.verify(token, typ=CHECKPOINT_TYP)["seq"] == 42


def test_another_token_of_the_broker_is_not_a_checkpoint(ring: KeyRing) -> None:
    """An access token signed by the same key must not pass as a checkpoint (typ)."""
    token = ring.sign({"seq": 1, "hash": "ab" * 32, "time": 1, "kind": "manual", "iat": 1}, typ="at+jwt")
    with pytest.raises(CheckpointInvalid, match="type"):
        read_checkpoint(ring, token)


@pytest.mark.parametrize("claims", [
    {"seq": 0, "hash": "ab" * 32, "time": 1, "kind": "manual", "iat": 1},
    {"seq": 1, "hash": "AB" * 32, "time": 1, "kind": "manual", "iat": 1},
    {"seq": 1, "hash": "ab" * 32, "time": 1, "kind": "whenever", "iat": 1},
    {"seq": "1", "hash": "ab" * 32, "time": 1, "kind": "manual", "iat": 1},
])
def test_checkpoint_claims_are_checked(ring: KeyRing, claims: dict) -> None:
    with pytest.raises(CheckpointInvalid, match="claims"):
        read_checkpoint(ring, ring.sign(claims, typ=CHECKPOINT_TYP))


def test_a_checkpoint_from_another_issuer_is_refused(ring: KeyRing) -> None:
    token = sign_checkpoint(ring, ChainHead(1, "ab" * 32, 1), kind="manual", issuer="https://other.test")
    with pytest.raises(CheckpointInvalid, match="issued by"):
        read_checkpoint(ring, token, issuer="https://idbroker.test")


def test_a_checkpoint_from_an_unknown_key_is_unverifiable(ring: KeyRing, tmp_path: Path) -> None:
    token = sign_checkpoint(KeyRing(tmp_path / "other"), ChainHead(1, "ab" * 32, 1), kind="manual")
    with pytest.raises(CheckpointUnverifiable):
        read_checkpoint(ring, token)
    with pytest.raises(CheckpointInvalid, match="compact JWS"):
        read_checkpoint(ring, "not-a-token")


def test_sign_refuses_an_unknown_kind(ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="kind"):
        sign_checkpoint(ring, GENESIS, kind="daily")
