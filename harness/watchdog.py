"""The cell watchdog: a budget of wall time per cell, enforced twice.

Every agent call of a cell waits at most until the cell's deadline (plus a grace for the
answer to arrive), and a command the cell runs in the guest is given what is left of the
budget, so a hang the guest can still report (a drive that never ends) comes back as a
timeout on time.  A frozen guest answers nothing: the host's wait ends at the deadline
plus the grace.  A host-side wait with no timeout of its own (an SFTP copy into a frozen
guest) is the backstop's: a timer thread kills the VM a little later, which breaks every
wait on it.  Either way the cell is TIMED_OUT and the guest is replaced for the next cell.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

# Generous under TCG: a first load of a big object, or a long drive, on a loaded host.
DEFAULT_CELL_TIMEOUT = 300.0
# The agent's own "did not finish" answer must reach the host before the host gives up.
ANSWER_GRACE = 5.0
# The backstop fires only when a host-side wait ignored the deadline.
KILL_GRACE = 20.0


class Watchdog:
    """A cell's deadline; `on_expire` runs (in a timer thread) `grace` seconds after it
    when the cell is still running."""

    def __init__(
        self,
        seconds: float,
        on_expire: Callable[[], None],
        *,
        grace: float = KILL_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if seconds <= 0:
            raise ValueError(f"a cell timeout must be positive, not {seconds:g}")
        self.seconds = seconds
        self._clock = clock
        self.deadline = clock() + seconds
        self.fired = False
        self._on_expire = on_expire
        self._timer = threading.Timer(seconds + grace, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return max(0.0, self.deadline - self._clock())

    @property
    def expired(self) -> bool:
        return self._clock() >= self.deadline

    def _fire(self) -> None:
        self.fired = True
        self._on_expire()


def timed_out_reason(seconds: float, detail: str) -> str:
    """The reason of a TIMED_OUT cell: the budget, where to change it, what was seen."""
    reason = (
        f"no result within the cell timeout of {seconds:g}s (kitl run --cell-timeout); "
        "the VM is replaced for the next cell"
    )
    return f"{reason}: {detail}" if detail else reason
