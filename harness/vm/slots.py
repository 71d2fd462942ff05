"""Admission: no more guest vCPUs on the host than it has cores, across kitl processes.

Under TCG every guest vCPU is a host thread that runs flat out while the guest boots or
works, so four vCPUs on two cores do not run at half speed: boots stall, RCU complains and
timeouts hit.  Every kitl process that boots a guest first takes one slot per vCPU from a
set of lock files in the cache directory (`<cache>/slots/cpu-N.lock`); a process that
finds none free waits, saying so, until another guest is gone.  The lock files are
flock()ed, so the kernel releases the slots of a process that dies, however it dies.

Two rules keep waiting from turning into a deadlock:
- a process that already holds slots does not wait for more (it could be waiting on a
  process that waits on it): it goes over capacity and logs that it did;
- a guest never asks for more slots than there are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from harness.kernel.cache import Cache

log = logging.getLogger(__name__)

SLOTS_ENV = "KITL_GUEST_SLOTS"  # the capacity, in vCPUs; default: the host's cores
GUEST_MEMORY_GIB = 2  # what one guest costs in memory (the default --memory)
_POLL = 0.5
_HELD: dict[str, int] = {}  # slots this process holds, by slot directory
_HELD_LOCK = threading.Lock()


def capacity(cores: int | None = None, memory_gib: float | None = None) -> int:
    """vCPU slots on this host: its cores, fewer if memory holds fewer 2 GiB guests;
    KITL_GUEST_SLOTS overrides (a positive integer)."""
    env = env_capacity()
    if env is not None:
        return env
    cores = cores if cores is not None else (os.cpu_count() or 1)
    memory_gib = memory_gib if memory_gib is not None else _memory_gib()
    return max(1, min(cores, int(memory_gib // GUEST_MEMORY_GIB)))


def env_capacity() -> int | None:
    """KITL_GUEST_SLOTS when it is set to a positive integer (anything else is said and
    ignored)."""
    env = os.environ.get(SLOTS_ENV, "").strip()
    if not env:
        return None
    if env.isdigit() and int(env) > 0:
        return int(env)
    log.warning("%s=%r is not a positive integer: ignored", SLOTS_ENV, env)
    return None


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float(GUEST_MEMORY_GIB)


@dataclass
class Admission:
    """The slots one guest holds; `release` gives them back (idempotent)."""

    locks: list[FileLock] = field(default_factory=list)
    directory: str = ""
    waited_s: float = 0.0
    over_capacity: bool = False

    def release(self) -> None:
        for lock in self.locks:
            with contextlib.suppress(OSError):
                lock.release(force=True)
        if self.locks:
            with _HELD_LOCK:
                _HELD[self.directory] = max(0, _HELD.get(self.directory, 0) - len(self.locks))
        self.locks = []


@dataclass(frozen=True)
class GuestSlots:
    directory: Path
    size: int

    @classmethod
    def for_cache(cls, cache: Cache) -> GuestSlots:
        return cls(cache.root / "slots", capacity())

    def _try(self, want: int) -> list[FileLock]:
        """Take up to `want` free slots now; fewer (maybe none) when they are taken."""
        got: list[FileLock] = []
        for n in range(self.size):
            if len(got) == want:
                break
            lock = FileLock(str(self.directory / f"cpu-{n}.lock"), thread_local=False)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            got.append(lock)
        return got

    def admit(
        self,
        vcpus: int,
        who: str,
        *,
        on_wait: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Admission:
        """Slots for a guest of `vcpus` vCPUs, waiting while the host is full."""
        self.directory.mkdir(parents=True, exist_ok=True)
        want = max(1, min(vcpus, self.size))
        key = str(self.directory)
        started = clock()
        said = False
        while True:
            got = self._try(want)
            if len(got) == want:
                break
            with _HELD_LOCK:
                holding = _HELD.get(key, 0)
            if holding:  # never wait while holding: the other side may wait on us
                log.info(
                    "%s: over capacity (%d of %d slots free; this process already holds %d)",
                    who,
                    len(got),
                    want,
                    holding,
                )
                admission = self._held(got, key, clock() - started)
                admission.over_capacity = True
                return admission
            for lock in got:  # all or nothing: half a guest's slots help nobody
                lock.release(force=True)
            if not said:
                message = (
                    f"{who}: waiting for {want} guest slot{'s' if want > 1 else ''} "
                    f"(all {self.size} taken by other kitl guests on this host)"
                )
                log.info("%s", message)
                if on_wait is not None:
                    on_wait(message)
                said = True
            time.sleep(_POLL)
        waited = clock() - started
        if said:
            log.info("%s: admitted after %.1fs", who, waited)
        return self._held(got, key, waited)

    def admit_now(self, vcpus: int, who: str) -> Admission:
        """The slots free now, never waiting: for a use of a warm guest, whose boot was
        admitted and whose use is short.  Fewer than asked is over capacity (logged):
        waiting here would cost a warm guest's user what it is up for, while the boots
        that starve on an overcommitted host, and that this admission protects, still
        wait for the slots it did take."""
        self.directory.mkdir(parents=True, exist_ok=True)
        want = max(1, min(vcpus, self.size))
        got = self._try(want)
        if len(got) < want:
            log.info("%s: over capacity (%d of %d slots free) for this use", who, len(got), want)
        admission = self._held(got, str(self.directory), 0.0)
        admission.over_capacity = len(got) < want
        return admission

    def _held(self, got: list[FileLock], key: str, waited: float) -> Admission:
        with _HELD_LOCK:
            _HELD[key] = _HELD.get(key, 0) + len(got)
        return Admission(got, key, waited)
