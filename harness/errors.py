"""Errors that reach the user as one line, each with the exit status it maps to
(harness.outcome's) and, for a run failure, the outcome of the cell it stands for.

Usage errors (bad input the user can fix: unknown kernel, bad YAML, missing file) exit 2;
run failures (download failed, boot timeout, SSH never ready) exit 1.  The CLI prints
`kitl: <message>` and never a traceback for these.
"""

from __future__ import annotations

import errno
from pathlib import Path

from harness.outcome import EXIT_FAILED, EXIT_USAGE, Outcome


class KitlError(Exception):
    """Base of every error the CLI turns into one line."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(KitlError):
    """The user asked for something that cannot be: fix the input and rerun."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration file is wrong; the message starts with file:line: when known."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
                if column is not None:
                    where += f":{column}"
            where += ": "
        super().__init__(where + message, hint=hint)
        self.path = path
        self.line = line
        self.column = column


class MissingToolError(UsageError):
    """A host tool the harness needs is not installed."""

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(
            f"{tool} is not installed",
            hint=f"install the Debian package {package}, or run ./run.sh which sets up the host",
        )


class FetchError(KitlError):
    """Downloading or unpacking a kernel failed."""


class VanishedPackageError(UsageError):
    """A version pinned in kernels.lock is no longer in the Debian archive."""


class BuildError(KitlError):
    """Building a module (netdevsim) failed."""


class WriteError(KitlError):
    """Results or reports could not be written (disk full, quota, read-only, I/O error);
    what was written before stays readable."""


# A full, read-only or failing disk: the user fixes the machine, not the input.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


class BootError(KitlError):
    """The guest did not come up: QEMU failed or its set-up inside the guest failed."""


class BootTimeoutError(BootError):
    """The guest did not announce readiness within the boot timeout (the backstop: it was
    still printing)."""


class BootStalledError(BootError):
    """The guest's console stopped advancing before it was ready: a stuck boot."""


class GuestLostError(KitlError):
    """The guest channel broke after the guest was up (VM killed, SSH dropped)."""


class GuestTimeoutError(KitlError):
    """A command in the guest did not finish in time."""


class KernelCrashError(GuestLostError):
    """The guest kernel panicked or oopsed; carries the console splat."""

    def __init__(
        self, message: str, *, splat_text: str, fingerprint: str, signature: str = ""
    ) -> None:
        super().__init__(message)
        self.splat_text = splat_text
        self.fingerprint = fingerprint
        self.signature = signature  # what the fingerprint hashes: title | call trace


def outcome_for_error(exc: BaseException) -> Outcome:
    """The outcome a run failure stands for."""
    if isinstance(exc, KernelCrashError):
        return Outcome.KERNEL_CRASH
    if isinstance(exc, BootError):  # timed out and stalled boots too: never up
        return Outcome.BOOT_FAILED
    if isinstance(exc, GuestTimeoutError):
        return Outcome.TIMED_OUT
    if isinstance(exc, GuestLostError):
        return Outcome.VM_LOST
    return Outcome.ERROR
