"""The audit log on Redis (>= 6.2): one chain for every broker instance sharing the server.

Keys (one hash tag, so a cluster keeps them in one slot)::

    {<prefix>:audit}:head         HASH   seq, hash, time       the chain head
    {<prefix>:audit}:events       STREAM id "<time_ms>-<seq>", fields h (hash), b (body)
    {<prefix>:audit}:checkpoints  HASH   seq -> signed checkpoint (compact JWS)
    {<prefix>:audit}:claim        STRING "<seq>|<writer>", PX 100   fairness under contention

**One chain, many writers.** Redis Lua has no SHA-256, so the hash is computed here and
the append is a compare-and-set in one script: it adds the record only if the head is
still the (seq, hash) the record was built on, else returns the current head and the
caller rebuilds and retries. A writer that loses twice for one record is granted a short
claim on the next seq, so none can be starved (measured: at most 2 lost races per append).
Appends from threads of one process queue on a lock (no wasted round trips); processes and
hosts race through the CAS, so with several instances writing in turn about half the
appends cost a second round trip. The stream ID ``<time>-<seq>`` must grow, so even a
buggy caller cannot append behind the head, and time ranges are ``XRANGE`` ranges.

**Durability.** The script is atomic, but Redis acknowledges before fsync unless the
server runs with ``appendonly yes`` + ``appendfsync always``: configure that for the
audit trail (``everysec`` may lose the last second on a power cut). With replicas, set
``audit.redis_wait_replicas`` (>= 1): each append then waits for ``WAIT n timeout`` and
fails closed when fewer replicas confirmed it, so a failover cannot lose a record whose
token was handed out. (An unconfirmed record stays on the primary: the trail may then
show an event for a token that was refused, never the reverse.) ``durable=False`` skips the
wait; AOF ``always`` fsyncs every write regardless.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from redis import Redis
from redis import exceptions as redis_errors
from redis.sentinel import Sentinel

from idbroker.audit.chain import GENESIS, GENESIS_HASH, AuditRecord, ChainHead
from idbroker.audit.log import AuditUnavailable, ChainedLog, CutRefused, RawEntry
from idbroker.store.redis import SENTINEL_SCHEME, _connection_options, parse_sentinel_url

PAGE = 1000
CLAIM_MS = 100  # how long a race loser's claim on the next seq holds others back
MAX_WAIT = 2.0  # seconds of lost races before failing closed (the socket timeout, too)

# KEYS: head, events, checkpoints, claim. ARGV: expected seq, expected hash, new seq, new hash,
# time, body, genesis, writer id, claim ms, races this writer already lost for this record.
# * A missing head with records or checkpoints present is lost state, not a new chain:
#   refuse rather than start a second chain beside the first.
# * Fairness: a writer that loses a second time for the same record gets (if nobody holds
#   one) a claim on the next seq for CLAIM_MS; meanwhile only it may append that seq.
#   Without this, a writer whose cached head is always right can win every race and starve
#   the others. A first loss (a stale cached head, the common case with several instances)
#   just retries, so it never makes the other writers wait.
# Reply: {1} appended; {0, seq, hash, time, mine} not appended, the current head, and
# whether the next seq is claimed for this writer.
_APPEND = """
local head = redis.call('HMGET', KEYS[1], 'seq', 'hash', 'time')
if not head[1] and redis.call('EXISTS', KEYS[2], KEYS[3]) > 0 then
    return redis.error_reply('HEADLOST the audit chain head is missing but records exist')
end
local seq, hash, time = head[1] or '0', head[2] or ARGV[7], head[3] or '0'
local claim, owner = redis.call('GET', KEYS[4]), nil
if claim then
    local bar = string.find(claim, '|', 1, true)
    if tonumber(string.sub(claim, 1, bar - 1)) <= tonumber(seq) then
        claim = nil
    else
        owner = string.sub(claim, bar + 1)
    end
end
if seq ~= ARGV[1] or hash ~= ARGV[2] then
    if not claim and tonumber(ARGV[10]) > 0 then
        redis.call('SET', KEYS[4], (tonumber(seq) + 1) .. '|' .. ARGV[8], 'PX', ARGV[9])
        return {0, seq, hash, time, 1}
    end
    return {0, seq, hash, time, owner == ARGV[8] and 1 or 0}
end
if claim and owner ~= ARGV[8] then
    return {0, seq, hash, time, 0}
end
redis.call('XADD', KEYS[2], ARGV[5] .. '-' .. ARGV[3], 'h', ARGV[4], 'b', ARGV[6])
redis.call('HSET', KEYS[1], 'seq', ARGV[3], 'hash', ARGV[4], 'time', ARGV[5])
if claim then redis.call('DEL', KEYS[4]) end
return {1}
"""

# KEYS: events, checkpoints. ARGV: cut stream id, cut hash, cut seq, token, first id to keep.
_CUT = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return redis.error_reply('CUTREFUSED record missing') end
local fields, stored = found[1][2], nil
for i = 1, #fields, 2 do
    if fields[i] == 'h' then stored = fields[i + 1] end
end
if stored ~= ARGV[2] then return redis.error_reply('CUTREFUSED record changed') end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
for _, key in ipairs(redis.call('HKEYS', KEYS[2])) do
    if tonumber(key) < tonumber(ARGV[3]) then redis.call('HDEL', KEYS[2], key) end
end
return redis.call('XTRIM', KEYS[1], 'MINID', ARGV[5])
"""


class RedisAuditLog(ChainedLog):
    """:class:`~idbroker.audit.log.AuditLog` on Redis; connects lazily, on first use."""

    def __init__(self, url: str, *, prefix: str = "idbroker", wait_replicas: int = 0,
                 wait_timeout_ms: int = 100, max_wait: float = MAX_WAIT) -> None:
        self._sentinel: Sentinel | None = None
        options = _connection_options() | {"decode_responses": True}
        if url.startswith(SENTINEL_SCHEME + "://"):
            target = parse_sentinel_url(url)
            self._sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=_connection_options(),
                                      **options)
            self._client: Redis = self._sentinel.master_for(
                target.service_name, db=target.db, username=target.username, password=target.password)
        else:
            self._client = Redis.from_url(url, **options)
        tag = f"{{{prefix}:audit}}"
        self._head_key, self._events_key, self._checkpoints_key, self._claim_key = (
            f"{tag}:head", f"{tag}:events", f"{tag}:checkpoints", f"{tag}:claim")
        self._append_script = self._client.register_script(_APPEND)
        self._cut_script = self._client.register_script(_CUT)
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._max_wait = max_wait
        self._writer = uuid.uuid4().hex  # names this object in claims
        self._lock = threading.Lock()
        self._cached_head: ChainHead | None = None  # this process's last known head
        #: Compare-and-set races lost to another writer: in total, and the most for one append.
        self.conflicts = 0
        self.most_conflicts = 0

    # -- writing ---------------------------------------------------------------------------

    def _append(self, build: Callable[[ChainHead], AuditRecord], *, durable: bool) -> AuditRecord:
        with self._lock, _available():
            head = self._cached_head or self._read_head()
            deadline = time.monotonic() + self._max_wait
            lost = 0
            while True:
                record = build(head)
                reply = self._append_script(
                    keys=[self._head_key, self._events_key, self._checkpoints_key, self._claim_key],
                    args=[head.seq, head.hash, record.seq, record.hash, record.time_ms, record.body,
                          GENESIS_HASH, self._writer, CLAIM_MS, lost])
                if int(reply[0]) == 1:
                    break
                current = ChainHead(int(reply[1]), reply[2], int(reply[3]))
                if current.hash == record.hash:
                    head = current
                    break  # our own append, whose reply was lost and the command retried
                if current != head:  # another writer appended first (else: we wait for a claimant)
                    self.conflicts += 1
                    lost += 1
                    self.most_conflicts = max(self.most_conflicts, lost)
                head = current
                if time.monotonic() > deadline:
                    raise AuditUnavailable(f"audit chain head kept moving for {self._max_wait} s")
                if int(reply[4]) != 1:
                    time.sleep(0.0001)  # the next seq is promised to another writer: let it go first
            self._cached_head = record.head
            if durable:
                self._wait()
        return record

    def put_checkpoint(self, seq: int, token: str) -> None:
        with _available():
            self._client.hset(self._checkpoints_key, str(seq), token)
            self._wait()

    def cut(self, at: ChainHead, token: str) -> int:
        with _available():
            try:
                removed = self._cut_script(
                    keys=[self._events_key, self._checkpoints_key],
                    args=[f"{at.time_ms}-{at.seq}", at.hash, at.seq, token, f"{at.time_ms}-{at.seq + 1}"])
            except redis_errors.ResponseError as exc:
                if "CUTREFUSED" in str(exc):
                    raise CutRefused(f"the record at seq {at.seq} is missing or changed since it was "
                                     "verified") from None
                raise
            self._wait()
        return int(removed)

    def _wait(self) -> None:
        """With replicas configured: fail closed unless enough of them have the write."""
        if self._wait_replicas <= 0:
            return
        acked = int(self._client.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms))
        if acked < self._wait_replicas:
            raise AuditUnavailable(f"audit write confirmed by {acked} of {self._wait_replicas} replicas")

    # -- reading ---------------------------------------------------------------------------

    def head(self) -> ChainHead:
        with _available():
            return self._read_head()

    def _read_head(self) -> ChainHead:
        seq, record_hash, time_ms = self._client.hmget(self._head_key, ["seq", "hash", "time"])
        if seq is None:
            return GENESIS
        if not (_whole_number(seq) and _whole_number(time_ms) and isinstance(record_hash, str)):
            # Not written by this broker: neither appended to nor taken as the chain's state.
            raise AuditUnavailable("Redis audit log: the chain head is damaged (seq, hash or time "
                                   "missing or not a number); run `idbroker audit verify` on a copy")
        return ChainHead(int(seq), record_hash, int(time_ms))

    def first_seq(self) -> int | None:
        with _available():
            found = self._client.xrange(self._events_key, "-", "+", count=1)
        return _split_id(found[0][0])[1] if found else None

    def entries(self, *, since_ms: int | None = None, until_ms: int | None = None,
                person: str | None = None, client: str | None = None,
                team: str | None = None) -> Iterator[RawEntry]:
        low = "-" if since_ms is None else str(max(since_ms, 0))
        if until_ms is not None and until_ms <= max(since_ms or 0, 0):
            return
        high = "+" if until_ms is None else str(until_ms - 1)  # "<ms>" means "<ms>-<max seq>"
        wanted = {name: value for name, value in (("person", person), ("client", client), ("team", team))
                  if value is not None}
        while True:
            with _available():
                page = self._client.xrange(self._events_key, low, high, count=PAGE)
            for stream_id, fields in page:
                time_ms, seq = _split_id(stream_id)
                entry = RawEntry(seq, fields.get("h", ""), fields.get("b", ""), {"time_ms": time_ms})
                if not wanted or _matches(entry.body, wanted):
                    yield entry
            if len(page) < PAGE:
                return
            low = "(" + page[-1][0]

    def checkpoints(self) -> dict[int, str]:
        with _available():
            stored = self._client.hgetall(self._checkpoints_key)
        odd = sorted(seq for seq in stored if not _whole_number(seq))
        if odd:
            named = ", ".join(repr(seq[:20]) for seq in odd[:3])
            raise AuditUnavailable(f"Redis audit log: checkpoints stored under keys that are no seq: {named} "
                                   "(changed outside the broker)")
        return {int(seq): token for seq, token in sorted(stored.items(), key=lambda item: int(item[0]))}

    def checkpoint(self, seq: int) -> str | None:
        with _available():
            token = self._client.hget(self._checkpoints_key, str(seq))
        return None if token is None else str(token)

    def durability(self) -> str:
        """What the server promises about a record it acknowledged (best effort: managed
        servers may refuse CONFIG)."""
        try:
            with _available():
                config = self._client.config_get("append*")
                replicas = self._client.info("replication").get("connected_slaves", 0)
        except (AuditUnavailable, redis_errors.ResponseError):
            return "unknown (CONFIG GET refused)"
        aof, fsync = config.get("appendonly"), config.get("appendfsync")
        verdict = "durable" if aof == "yes" and fsync == "always" else "NOT durable on a power cut"
        return (f"{verdict}: appendonly={aof} appendfsync={fsync}, {replicas} replicas connected, "
                f"waiting for {self._wait_replicas}")

    def ping(self) -> None:
        with _available():
            self._client.ping()

    def close(self) -> None:
        self._client.close()
        if self._sentinel is not None:
            self._sentinel.close()


def _whole_number(value: object) -> bool:
    """A stored decimal as this broker writes it (Redis hands back text)."""
    return isinstance(value, str) and value.isascii() and value.isdigit()


def _split_id(stream_id: str) -> tuple[int, int]:
    time_ms, _, seq = stream_id.partition("-")
    return int(time_ms), int(seq)


def _matches(body: str, wanted: dict[str, str]) -> bool:
    try:
        event = json.loads(body).get("event", {})
    except (ValueError, AttributeError, TypeError, RecursionError):
        return True  # let the reader see (and report) a malformed record
    if not isinstance(event, dict):
        return True
    return all(event.get(name) == value for name, value in wanted.items())


@contextmanager
def _available() -> Iterator[None]:
    """Any Redis failure (connection, timeout, read-only replica, OOM, script error) means the
    record may not be stored: AuditUnavailable, so the caller fails closed."""
    try:
        yield
    except redis_errors.RedisError as exc:
        raise AuditUnavailable(f"Redis audit log is unavailable: {exc}") from exc
