"""Interrupting what runs: a cell that overran its budget, and a run on SIGINT or SIGTERM.

The cell watchdog: a budget of wall time per cell, enforced twice.  Every agent call of a
cell waits at most until the cell's deadline (plus a grace for the answer to arrive), and a
command the cell runs in the guest is given what is left of the budget, so a hang the guest
can still report (a drive that never ends) comes back as a timeout on time.  A frozen guest
answers nothing: the host's wait ends at the deadline plus the grace.  A host-side wait
with no timeout of its own (an SFTP copy into a frozen guest) is the backstop's: a timer
thread kills the VM a little later, which breaks every wait on it.  Either way the cell is
TIMED_OUT and the guest is replaced for the next cell.

Signals: kitl's processes (the CLI, and the pytest processes behind `kitl run`) raise an
exception in the main thread when SIGINT or SIGTERM arrives, so every context manager tears
its VM down as the stack unwinds.  A signal that arrives while a VM is being torn down is
held until the teardown is over: a process group killed half-way (its VM object already
forgotten) is how qemu processes outlive kitl.  Once a stop is under way (`stop_quietly`),
later signals are ignored instead of cutting into the cleanup.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

# -- the cell watchdog ------------------------------------------------------------------
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


# -- SIGINT and SIGTERM -----------------------------------------------------------------
SIGNALS = (signal.SIGINT, signal.SIGTERM)

Raiser = Callable[[int], BaseException]


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the main thread was (a KeyboardInterrupt, so
    nothing that catches Exception swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


def keyboard_interrupt(signum: int) -> BaseException:
    return Stopped(signum)


class _State:
    def __init__(self) -> None:
        self.depth = 0  # nested shielded() blocks in the main thread
        self.pending: int | None = None  # a signal held by a shield
        self.quiet = False  # a stop is under way: ignore signals
        self.make: Raiser = keyboard_interrupt
        self.raised: BaseException | None = None  # the stop under way, raised by a signal

    def stop(self, signum: int) -> BaseException:
        self.raised = self.make(signum)
        return self.raised


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.quiet:
        return
    if _state.depth:
        _state.pending = signum
        return
    raise _state.stop(signum)


def install(make: Raiser = keyboard_interrupt) -> Callable[[], None]:
    """Handle SIGINT and SIGTERM in this process by raising `make(signum)` in the main
    thread; returns a function that puts the previous handlers back.  Only the main
    thread may install handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _state.make, _state.quiet, _state.pending, _state.raised = make, False, None, None
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.raised = None

    return restore


def stop_quietly() -> None:
    """From now on, ignore SIGINT and SIGTERM: the process is already closing down."""
    _state.quiet = True
    _state.pending = None


def once(make: Raiser) -> Raiser:
    """`make`, after which every later signal is ignored: for a process whose unwinding
    from the first signal is its whole cleanup (the pytest processes of `kitl run`)."""

    def first(signum: int) -> BaseException:
        stop_quietly()
        return make(signum)

    return first


def raise_if_stopping() -> None:
    """Raise the stop under way again, in the main thread.  For cleanup code that talks to
    a guest (releasing a case's objects): it runs while the stop unwinds the stack, and
    would otherwise wait for a guest still busy with the interrupted command."""
    if _state.raised is not None and threading.current_thread() is threading.main_thread():
        raise _state.raised


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@contextmanager
def shielded() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block is done, then raise it (teardown that must
    finish).  Signals are handled in the main thread only, so other threads just run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _state.pending is not None and not _state.quiet:
            signum, _state.pending = _state.pending, None
            raise _state.stop(signum)
