"""The host's packages: the one list of Debian packages kitl needs, the host's distribution
(/etc/os-release) and the exact command that installs packages on it.  Pure: the text is
read by the callers (harness.cli.hostprobe, harness.cli.hostsetup).

The list is harness/data/debian-packages.txt, which tools/setup.sh reads too: a section
header `[run]` or `[test]`, then one package a line, `#` starting a comment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import DATA
from harness.errors import ConfigError

PACKAGES_FILE = DATA / "debian-packages.txt"
SECTIONS = ("run", "test")
_SECTION = re.compile(r"\[([a-z]+)\]")


def parse_packages(text: str, path: Path = PACKAGES_FILE) -> dict[str, tuple[str, ...]]:
    """Each section's packages, in the file's order."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        header = _SECTION.fullmatch(words[0])
        if header and header.group(1) in SECTIONS and len(words) == 1:
            current = sections.setdefault(header.group(1), [])
        elif current is None or len(words) != 1 or header:
            raise ConfigError(
                f"expected [run], [test] or one package: {line!r}", path=path, line=number
            )
        else:
            current.append(words[0])
    return {name: tuple(packages) for name, packages in sections.items()}


def read_packages(path: Path = PACKAGES_FILE) -> dict[str, tuple[str, ...]]:
    return parse_packages(path.read_text(encoding="utf-8"), path)


@dataclass(frozen=True)
class Distro:
    """What /etc/os-release says: ID, ID_LIKE and PRETTY_NAME."""

    id: str = ""
    like: tuple[str, ...] = ()
    pretty: str = "an unknown distribution"

    @classmethod
    def parse(cls, text: str) -> Distro:
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip().isidentifier():
                values[key.strip()] = value.strip().strip("\"'")
        return cls(
            id=values.get("ID", "").lower(),
            like=tuple(values.get("ID_LIKE", "").lower().split()),
            pretty=values.get("PRETTY_NAME") or values.get("NAME") or cls.pretty,
        )

    @property
    def family(self) -> str:
        """ "debian" (apt-get), "fedora" (dnf, the RHEL family too) or "" (neither)."""
        names = (self.id, *self.like)
        if any(n in ("debian", "ubuntu") for n in names):
            return "debian"
        if any(n in ("fedora", "rhel", "centos") for n in names):
            return "fedora"
        return ""


def install_argv(distro: Distro, packages: Sequence[str], *, root: bool) -> tuple[str, ...]:
    """The command that installs `packages` (named for `distro`'s family) on `distro`;
    () for a family kitl knows no installer of.  sudo when not root."""
    sudo = () if root else ("sudo",)
    if not packages:
        return ()
    if distro.family == "debian":
        return (*sudo, "apt-get", "install", "-y", "--no-install-recommends", *packages)
    if distro.family == "fedora":
        return (*sudo, "dnf", "install", "-y", *packages)
    return ()


def update_argv(distro: Distro, *, root: bool) -> tuple[str, ...]:
    """The package index refresh before an install (apt-get needs one on a fresh host)."""
    if distro.family != "debian":
        return ()
    return (*(() if root else ("sudo",)), "apt-get", "update", "-q")
