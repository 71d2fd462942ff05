"""SIGINT and SIGTERM as one orderly stop, with VM teardown never cut in half.

kitl's processes (the CLI, and the pytest processes behind `kitl run`) raise an exception
in the main thread when SIGINT or SIGTERM arrives, so every context manager tears its VM
down as the stack unwinds.  A signal that arrives while a VM is being torn down is held
until the teardown is over: a process group killed half-way (its VM object already
forgotten) is how qemu processes outlive kitl.  Once a stop is under way (`stop_quietly`),
later signals are ignored instead of cutting into the cleanup.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

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


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.quiet:
        return
    if _state.depth:
        _state.pending = signum
        return
    raise _state.make(signum)


def install(make: Raiser = keyboard_interrupt) -> Callable[[], None]:
    """Handle SIGINT and SIGTERM in this process by raising `make(signum)` in the main
    thread; returns a function that puts the previous handlers back.  Only the main
    thread may install handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _state.make, _state.quiet, _state.pending = make, False, None
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

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
            raise _state.make(signum)
