"""The one outcome enum, the process exit statuses kitl uses, and the one table mapping
outcomes to them.  (harness.errors gives each error its status and its outcome.)"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Outcome(enum.StrEnum):
    """What happened to one cell (or one boot).  Separates "the kernel said no" from
    "the infrastructure broke", so a gate can tell a regression from a flaky runner."""

    PASSED = "PASSED"
    FAILED = "FAILED"  # ran, but an expectation did not hold
    VERIFIER_REJECTED = "VERIFIER_REJECTED"
    LOAD_FAILED = "LOAD_FAILED"
    ATTACH_FAILED = "ATTACH_FAILED"
    SKIPPED = "SKIPPED"  # a requirement probed absent; carries the reason
    BOOT_FAILED = "BOOT_FAILED"
    KERNEL_CRASH = "KERNEL_CRASH"
    VM_LOST = "VM_LOST"
    TIMED_OUT = "TIMED_OUT"
    ERROR = "ERROR"  # harness-side failure that fits no class above

    @property
    def is_infrastructure(self) -> bool:
        return self in _INFRASTRUCTURE


_INFRASTRUCTURE = frozenset(
    {Outcome.BOOT_FAILED, Outcome.KERNEL_CRASH, Outcome.VM_LOST, Outcome.TIMED_OUT, Outcome.ERROR}
)

# Usage and config errors exit 2 before anything runs (harness.errors.UsageError).  Every
# run failure exits 1, whether the kernel said no or the infrastructure broke: the results
# JSON carries the outcome that tells them apart.  A run stopped by a signal exits 128 + it.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SIGNALLED = 128  # + the signal's number, as a shell reports a process it killed
# the statuses of the pytest the fronts run (pytest.ExitCode), as kitl's: a usage error is
# one (the plugin's checks), anything else but success a failed run
PYTEST_NO_TESTS = 5
_EXIT_BY_PYTEST = {0: EXIT_OK, 4: EXIT_USAGE}

_EXIT_BY_OUTCOME = {
    Outcome.PASSED: EXIT_OK,
    Outcome.SKIPPED: EXIT_OK,
    Outcome.FAILED: EXIT_FAILED,
    Outcome.VERIFIER_REJECTED: EXIT_FAILED,
    Outcome.LOAD_FAILED: EXIT_FAILED,
    Outcome.ATTACH_FAILED: EXIT_FAILED,
    Outcome.BOOT_FAILED: EXIT_FAILED,
    Outcome.KERNEL_CRASH: EXIT_FAILED,
    Outcome.VM_LOST: EXIT_FAILED,
    Outcome.TIMED_OUT: EXIT_FAILED,
    Outcome.ERROR: EXIT_FAILED,
}


def exit_code(outcomes: Iterable[Outcome]) -> int:
    """The exit status for a run: the worst outcome wins; an empty run is a failure
    (a run that ran nothing must not look green)."""
    codes = [_EXIT_BY_OUTCOME[o] for o in outcomes]
    if not codes:
        return EXIT_FAILED
    return max(codes)


def exit_for_signal(signum: int) -> int:
    return EXIT_SIGNALLED + signum


def signalled(status: int) -> bool:
    """Whether an exit status says the run was stopped by a signal."""
    return status > EXIT_SIGNALLED


def exit_for_pytest(status: int) -> int:
    return _EXIT_BY_PYTEST.get(status, EXIT_FAILED)
