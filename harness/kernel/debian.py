"""Debian's archive through a private apt state directory inside the kitl cache.

The system's apt sources are never touched: `apt-get update` runs with Dir::State,
Dir::Cache and the source list all pointing into `<cache>/apt`.  Package indexes are read
here (pure deb822 parsing) to resolve a catalog series to exact packages; the .debs
themselves are fetched by apt's own acquire code (`apt-helper download-file`) against the
sha256 pinned in kernels.lock, so a fetch needs no index at all.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import FetchError, MissingToolError, VanishedPackageError
from harness.kernel import debversion
from harness.kernel.cache import Cache
from harness.kernel.catalog import DebianSource

MIRROR_ENV = "KITL_DEBIAN_MIRROR"
SECURITY_MIRROR_ENV = "KITL_DEBIAN_SECURITY_MIRROR"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_HELPER = Path("/usr/lib/apt/apt-helper")

Runner = Callable[..., "subprocess.CompletedProcess[Any]"]


def mirror_for(suite: str) -> str:
    if suite.endswith("-security"):
        return os.environ.get(SECURITY_MIRROR_ENV, "http://deb.debian.org/debian-security")
    return os.environ.get(MIRROR_ENV, "http://deb.debian.org/debian")


@dataclass(frozen=True)
class Package:
    """One binary package version as an index describes it."""

    name: str
    version: str
    suite: str
    filename: str  # pool path, relative to the mirror
    sha256: str
    size: int
    # Index-only details: not pinned in the lock, so not part of a package's identity.
    source: str = field(default="", compare=False)
    depends: str = field(default="", compare=False)

    @property
    def url(self) -> str:
        return f"{mirror_for(self.suite)}/{self.filename}"


@dataclass(frozen=True)
class ResolvedKernel:
    """What a catalog series resolves to: one upstream build and every package kitl needs."""

    release: str  # uname -r, e.g. 6.1.0-56-amd64
    version: str  # Debian version, e.g. 6.1.192-2
    suite: str
    packages: tuple[tuple[str, Package], ...]  # (role, package)


def parse_packages_index(text: str, suite: str, prefix: str = "linux-") -> list[Package]:
    """Parse a Packages file, keeping only packages whose name starts with `prefix`."""
    out: list[Package] = []
    for para in text.split("\n\n"):
        if not para.startswith(f"Package: {prefix}"):
            continue
        fields: dict[str, str] = {}
        key = ""
        for line in para.splitlines():
            if line[:1] in (" ", "\t"):
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        try:
            out.append(
                Package(
                    name=fields["Package"],
                    version=fields["Version"],
                    suite=suite,
                    filename=fields["Filename"],
                    sha256=fields["SHA256"],
                    size=int(fields["Size"]),
                    source=fields.get("Source", fields["Package"]).split(" ")[0],
                    depends=fields.get("Depends", ""),
                )
            )
        except (KeyError, ValueError):
            continue  # a malformed stanza cannot be a kernel we can pin
    return out


def _depends_names(depends: str) -> list[tuple[str, str | None]]:
    """(name, exact version or None) for each plain dependency (alternatives ignored)."""
    names = []
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        m = re.match(r"^([a-z0-9][a-z0-9+.\-]*)(?::\w+)?\s*(?:\((=|>=)\s*([^)]+)\))?", first)
        if m:
            names.append((m.group(1), m.group(3).strip() if m.group(2) == "=" else None))
    return names


def resolve_series(spec: DebianSource, index: Sequence[Package]) -> ResolvedKernel:
    """Pick the newest build of `spec.series` in `spec.suites` and the packages it needs.

    Newer Debian kernels split the image into linux-binary-* (vmlinuz) and linux-modules-*
    (modules, config, System.map); older ones ship one linux-image-*-unsigned.  Headers,
    kbuild and linux-source are pinned too: netdevsim is built out of tree from them.
    """
    flavour = re.escape(spec.flavour)
    series = re.escape(spec.series)
    image_re = re.compile(rf"^linux-(image|binary)-({series}[.\-+][^ ]*?)-{flavour}(-unsigned)?$")
    in_suites = [p for p in index if p.suite in spec.suites]
    candidates = []
    for pkg in in_suites:
        m = image_re.match(pkg.name)
        upstream = pkg.version.split("-")[0]
        if m and re.match(rf"^{series}(\.|~|$)", upstream):
            candidates.append((pkg, m.group(2)))
    if not candidates:
        raise FetchError(
            f"no {spec.series} kernel for {spec.flavour} in {', '.join(spec.suites)}",
            hint="check the suites in kernels/catalog.yaml",
        )
    best_pkg, abi = max(candidates, key=lambda c: debversion.sort_key(c[0].version))
    version = best_pkg.version
    release = f"{abi}-{spec.flavour}"

    by_name: dict[str, list[Package]] = {}
    for pkg in in_suites:
        by_name.setdefault(pkg.name, []).append(pkg)

    def pick(name: str, exact: str | None = None, *, at_least: str | None = None) -> Package:
        versions = by_name.get(name, [])
        if exact is not None:
            versions = [p for p in versions if p.version == exact]
        if at_least is not None:
            versions = [p for p in versions if debversion.compare(p.version, at_least) >= 0]
        if not versions:
            want = f"={exact}" if exact else ""
            raise FetchError(f"{name}{want} not found in {', '.join(spec.suites)}")
        return max(versions, key=lambda p: debversion.sort_key(p.version))

    roles: list[tuple[str, Package]] = []
    binary = by_name.get(f"linux-binary-{release}")
    if binary and any(p.version == version for p in binary):
        roles.append(("image", pick(f"linux-binary-{release}", version)))
        roles.append(("modules", pick(f"linux-modules-{release}", version)))
        # config, System.map and modules.builtin* live in linux-base-REL in this layout
        roles.append(("base", pick(f"linux-base-{release}", version)))
    else:
        roles.append(("image", pick(f"linux-image-{release}-unsigned", version)))
    headers = pick(f"linux-headers-{release}", version)
    roles.append(("headers", headers))
    for dep, dep_version in _depends_names(headers.depends):
        if dep.startswith("linux-headers-") and dep.endswith("-common"):
            roles.append(("headers-common", pick(dep, dep_version or version)))
        elif dep.startswith("linux-kbuild-"):
            roles.append(("kbuild", pick(dep, dep_version, at_least=None)))
    source = pick(f"linux-source-{spec.series}", version)
    roles.append(("source", source))
    return ResolvedKernel(release, version, best_pkg.suite, tuple(roles))


class Archive:
    """The private apt state: sources for exactly the suites the catalog names."""

    def __init__(self, cache: Cache, suites: Iterable[str], run: Runner = subprocess.run) -> None:
        self.dir = cache.apt_dir
        self.suites = sorted(set(suites))
        self.cache = cache
        self._run = run

    def apt_options(self) -> list[str]:
        d = self.dir
        return [
            f"-oDir::Etc::SourceList={d / 'sources.list'}",
            f"-oDir::Etc::SourceParts={d / 'sources.list.d'}",
            f"-oDir::Etc::Preferences={d / 'preferences'}",
            f"-oDir::Etc::PreferencesParts={d / 'preferences.d'}",
            f"-oDir::State={d / 'state'}",
            f"-oDir::Cache={d / 'cache'}",
            "-oDebug::NoLocking=1",  # our own file lock serialises; apt's needs /var/lib/apt
            "-oAPT::Architecture=amd64",
            "-oAPT::Architectures::=amd64",
            "-oAcquire::Languages=none",
            "-oAcquire::GzipIndexes=false",  # keep indexes as plain text we can read
            "-oAPT::Sandbox::User=root",
        ]

    def sources_list(self) -> str:
        lines = [
            f"deb [arch=amd64 signed-by={KEYRING}] {mirror_for(s)} {s} main" for s in self.suites
        ]
        return "\n".join(lines) + "\n"

    def update(self) -> None:
        if not Path("/usr/bin/apt-get").exists():
            raise MissingToolError("apt-get", "apt")
        with self.cache.lock("apt-index"):
            for sub in ("sources.list.d", "preferences.d", "state/lists/partial", "cache"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
            (self.dir / "sources.list").write_text(self.sources_list(), encoding="utf-8")
            proc = self._run(
                ["apt-get", *self.apt_options(), "-q", "update"],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0 or "W: GPG error" in proc.stderr:
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise FetchError(f"apt-get update of the private kernel index failed: {last}")

    def index(self) -> list[Package]:
        lists = self.dir / "state" / "lists"
        out: list[Package] = []
        for suite in self.suites:
            host = re.sub(r"^https?://", "", mirror_for(suite)).replace("/", "_")
            path = lists / f"{host}_dists_{suite}_main_binary-amd64_Packages"
            if not path.exists():
                raise FetchError(
                    f"no package index for {suite} in {lists}",
                    hint="run `kitl kernels lock --update` to refresh it",
                )
            out.extend(parse_packages_index(path.read_text(encoding="utf-8"), suite))
        return out


def download(pkg_url: str, sha256: str, dest: Path, run: Runner = subprocess.run) -> None:
    """Fetch one .deb with apt's acquire methods, verified against the pinned sha256.

    apt-helper writes straight to `dest`; callers pass a .partial name and rename.
    """
    if not APT_HELPER.exists():
        raise MissingToolError("apt-helper", "apt")
    proc = run(
        [
            str(APT_HELPER),
            "-oAPT::Sandbox::User=root",
            "download-file",
            pkg_url,
            str(dest),
            f"SHA256:{sha256}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return
    dest.unlink(missing_ok=True)
    Path(str(dest) + ".FAILED").unlink(missing_ok=True)
    err = proc.stdout + proc.stderr
    if re.search(r"\b404\b", err):
        raise VanishedPackageError(f"{pkg_url} is gone from the archive")
    if "Hash Sum mismatch" in err:
        raise FetchError(f"{pkg_url}: sha256 does not match kernels.lock (mirror corrupt?)")
    last = (err.strip().splitlines() or ["(no output)"])[-1]
    raise FetchError(f"download of {pkg_url} failed: {last}")
