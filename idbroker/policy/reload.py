"""The running broker's policy: reloaded when its files change, never replaced by a bad one.

:class:`PolicyHolder` keeps the current :class:`Policy`. At most every ``interval`` seconds
(or when asked) it compares the files' names, sizes and modification times with what it
saw last. A change is taken up once the files have stayed as they are for one more look:
a file still being written in place can be valid YAML that grants more (a member rule cut
off before its ``valid_until`` or ``rota`` holds for ever), so it is never read while it
is still changing. Then it reads one snapshot of the bytes, and when those differ from
the policy in use it checks them exactly as ``idbroker policy check`` does. A policy that
passes replaces the old one in a single reference swap (readers see the old or the new
policy, never a mix); one that fails is refused, logged at ERROR with every problem (once
per broken version), audited, and the old policy stays in force. Writing files atomically
(write, then rename) is still the way to deploy: a writer that stalls for a whole interval
half-way through a file would otherwise be read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from idbroker.policy.load import PolicyError, check_policy, read_policy_files
from idbroker.policy.model import Policy
from idbroker.policy.source import Problem

_log = logging.getLogger("idbroker.policy")

Fingerprint = tuple[tuple[str, int, int, int], ...]


class PolicyHolder:
    """Thread-safe holder of the current policy version of one broker process."""

    def __init__(self, directory: Path, *, interval: float = 5.0, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = None,
                 listener: Callable[[str, str, int], None] | None = None) -> None:
        """Load the policy now; a broken policy raises :class:`PolicyError` (the broker must
        not start on it)."""
        self.directory = Path(directory)
        self.interval = interval
        self._environ = environ
        self._clock = clock
        self._log = logger or _log
        #: Told of every reload after the first load: (version in force before, the new
        #: version, its number of problems; > 0: refused, the old one stays in force).
        self._listener = listener
        self._lock = threading.Lock()
        fingerprint = _fingerprint(self.directory)
        snapshot = read_policy_files(self.directory)
        report = check_policy(self.directory, environ=environ, snapshot=snapshot)
        if report.policy is None:
            raise PolicyError(list(report.problems))
        self._policy: Policy = report.policy
        self._version = _version(snapshot[0])
        self._fingerprint = fingerprint
        #: A change seen at the last look, taken up if the files are still so at the next.
        self._settling: Fingerprint | None = None
        self._refused_version: str | None = None
        self._problems: tuple[Problem, ...] = ()
        self._next_check = clock() + interval
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def policy(self) -> Policy:
        """The policy to use for this request (looks at the files when ``interval`` has passed)."""
        return self.current()

    def current(self) -> Policy:
        if self._watcher is None and self._clock() >= self._next_check:
            self.refresh()
        return self._policy

    def start(self) -> None:
        """Look at the files from a daemon thread every ``interval`` seconds instead of in the
        requests, so that no request waits for a reload. Call it in each process (after a
        fork: threads do not survive one)."""
        if self._watcher is not None:
            return
        self._stopped.clear()
        self._watcher = threading.Thread(target=self._watch, name="idbroker-policy-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        self._stopped.set()
        if watcher is not None:
            watcher.join()

    def _watch(self) -> None:
        while not self._stopped.wait(self.interval):
            self.refresh()

    @property
    def version(self) -> str:
        """Short SHA-256 over the policy files in force (names and bytes)."""
        return self._version

    @property
    def refused_problems(self) -> tuple[Problem, ...]:
        """The problems of the newest version on disk, when that one was refused; else empty."""
        return self._problems

    def refresh(self, *, force: bool = False) -> bool:
        """Look at the files now; ``True`` when a new policy was put in force.

        Without ``force``, a thread that finds another one already refreshing returns at
        once (it keeps using the current policy) instead of waiting.
        """
        if not self._lock.acquire(blocking=force):
            return False
        version: str | None = None
        try:
            self._next_check = self._clock() + self.interval
            fingerprint = _fingerprint(self.directory)
            if fingerprint == self._fingerprint and not force:
                return False
            if fingerprint != self._settling and not force:
                self._settling = fingerprint  # still being written? look again next time
                return False
            snapshot = read_policy_files(self.directory)
            version = _version(snapshot[0])
            self._fingerprint = fingerprint
            if version == self._version and not snapshot[1]:
                self._problems = ()
                return False
            if version == self._refused_version and not force:
                return False
            report = check_policy(self.directory, environ=self._environ, snapshot=snapshot)
            if report.policy is None:
                self._refused_version, self._problems = version, report.problems
                self._log.error(
                    "policy NOT reloaded: %s version %s has %d problem(s); still enforcing version %s\n  %s",
                    self.directory, version, len(report.problems), self._version,
                    "\n  ".join(str(problem) for problem in report.problems))
                self._tell(self._version, version, len(report.problems))
                return False
            previous = self._version
            self._policy, self._version = report.policy, version
            self._refused_version, self._problems = None, ()
            self._log.warning("policy reloaded: %s version %s replaces %s (%d organisations, %d teams, "
                              "%d clients)", self.directory, version, previous,
                              len(report.policy.organisations), len(report.policy.teams),
                              len(report.policy.clients))
            self._tell(previous, version, 0)
            return True
        except Exception as exc:
            self._log.exception("policy NOT reloaded: %s could not be checked; still enforcing version %s",
                                self.directory, self._version)
            # Refused like a policy with problems: kept in refused_problems and audited.
            self._refused_version = version
            self._problems = (Problem(str(self.directory), None,
                                      f"the policy could not be checked ({type(exc).__name__})",
                                      "see the broker's log; run idbroker policy check"),)
            self._tell(self._version, version or "unreadable", 1)
            return False
        finally:
            self._lock.release()


    def _tell(self, previous: str, version: str, problems: int) -> None:
        if self._listener is not None:
            try:
                self._listener(previous, version, problems)
            except Exception:  # a listener's failure never undoes or blocks a reload
                self._log.exception("policy reload listener failed")


def _fingerprint(directory: Path) -> Fingerprint:
    """What changes when any policy file is added, removed, replaced or written."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return ()
    for entry in entries:
        if entry.name.endswith((".yaml", ".yml")):
            try:
                info = entry.stat()
            except OSError:
                continue
            found.append((entry.name, info.st_size, info.st_mtime_ns, info.st_ino))
    return tuple(sorted(found))


def _version(contents: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(contents):
        digest.update(name.encode() + b"\0" + hashlib.sha256(contents[name]).digest())
    return digest.hexdigest()[:16]
