"""`kitl setup`: install the Debian or Ubuntu packages kitl needs, and `kitl doctor`.

The packages are harness/data/debian-packages.txt's (tools/setup.sh installs the same
list): its [run] section, and [test] with --tests.  `plan` is pure; `setup` prints the
exact commands, asks before running them (unless --yes; --dry-run only prints them) and
runs them as argument lists.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness.cli import doctor, hostprobe
from harness.cli.packages import Distro, install_argv, read_packages, update_argv
from harness.errors import UsageError
from harness.outcome import EXIT_FAILED, EXIT_OK


@dataclass(frozen=True)
class SetupRequest:
    yes: bool = False  # no question asked
    dry_run: bool = False  # print the commands only
    tests: bool = False  # the [test] section too (what kitl's own test suite needs)


def installed(packages: Sequence[str]) -> set[str]:
    """The packages of `packages` dpkg has installed (one dpkg-query for all of them)."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    return {line.split()[0] for line in done.stdout.splitlines() if line.endswith(" ok installed")}


def plan(distro: Distro, missing: Sequence[str], *, root: bool, sudo: bool) -> list[list[str]]:
    """The commands that install `missing` on `distro`: an index update, then the install;
    [] when nothing is missing.  A usage error when kitl cannot install here."""
    if distro.family != "debian":
        raise UsageError(
            f"kitl setup installs Debian and Ubuntu packages; this is {distro.pretty}",
            hint="`kitl doctor` prints each missing piece's install command",
        )
    if not missing:
        return []
    if not root and not sudo:
        raise UsageError(f"installing {' '.join(missing)} needs root, and there is no sudo")
    return [list(update_argv(distro, root=root)), list(install_argv(distro, missing, root=root))]


def setup(
    request: SetupRequest,
    *,
    distro: Callable[[], Distro] = hostprobe.distro,
    is_installed: Callable[[Sequence[str]], set[str]] = installed,
    ask: Callable[[str], str] = input,
    run: Callable[[list[str]], int] = lambda argv: subprocess.call(argv, env=_noninteractive()),
) -> int:
    sections = read_packages()
    wanted = [*sections.get("run", ()), *(sections.get("test", ()) if request.tests else ())]
    host = distro()
    have = is_installed(wanted) if host.family == "debian" else set()
    missing = [p for p in wanted if p not in have]
    commands = plan(host, missing, root=os.geteuid() == 0, sudo=shutil.which("sudo") is not None)
    if not commands:
        print(f"kitl setup: the {len(wanted)} packages kitl needs are installed")
        return EXIT_OK
    print(f"kitl setup: {len(missing)} of {len(wanted)} packages to install:")
    for argv in commands:
        print(f"  {shlex.join(argv)}")
    if request.dry_run:
        return EXIT_OK
    if not request.yes and not _confirmed(ask):
        print("kitl setup: nothing installed", file=sys.stderr)
        return EXIT_FAILED
    for argv in commands:
        status = run(argv)
        if status != 0:
            print(f"kitl setup: {shlex.join(argv)}: exit {status}", file=sys.stderr)
            return EXIT_FAILED
    print("kitl setup: done; `kitl doctor` checks the rest (KVM, the cache, kernels)")
    return EXIT_OK


def _confirmed(ask: Callable[[str], str]) -> bool:
    if not sys.stdin.isatty() and ask is input:
        raise UsageError("kitl setup asks before installing: rerun with --yes (no terminal here)")
    try:
        return ask("install them? [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _noninteractive() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def run_doctor(probe: Callable[[], doctor.HostFacts] = hostprobe.probe) -> int:
    facts = probe()
    found = doctor.checks(facts)
    print("\n".join(doctor.render(facts, found)))
    return doctor.status(found)
