"""The kernel catalog (kernels/catalog.yaml): the names users ask for, parsed once.

Two kinds of entry:
  debian: a kernel series from Debian's archive (`series` + the `suites` to look in);
          `kitl kernels lock --update` pins it to exact packages in kernels/kernels.lock.
  path:   a local bzImage plus an optional modules directory, used as they are.
A name given as `path:/some/bzImage` on the command line is an ad-hoc path entry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import DATA, yamlsrc
from harness.errors import ConfigError, UsageError
from harness.yamlsrc import LocDict, LocList, where

KERNELS_DIR_ENV = "KITL_KERNELS_DIR"
EXTRA_CATALOG_ENV = "KITL_CATALOG_EXTRA"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SERIES = re.compile(r"^\d+\.\d+$")
_SUITE = re.compile(r"^[a-z]+(-[a-z]+)?$")


@dataclass(frozen=True)
class DebianSource:
    series: str  # upstream major.minor, e.g. "6.1"
    suites: tuple[str, ...]  # e.g. ("bookworm", "bookworm-security")
    flavour: str = "amd64"


@dataclass(frozen=True)
class PathSource:
    vmlinuz: Path
    modules: Path | None = None  # .../lib/modules/<release>
    config: Path | None = None


@dataclass(frozen=True)
class BuildSource:
    """A kernel kitl builds: the Debian linux-source of catalog kernel `source`, a base
    config, then `fragments` (in order; later ones win)."""

    source: str  # a catalog name with `debian:` (e.g. "debian-6.12")
    fragments: tuple[Path, ...] = ()
    base: str = "virtme"  # "virtme": defconfig + virtme-ng's options; "debian": Debian's


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str = ""
    default: bool = False
    debian: DebianSource | None = None
    path: PathSource | None = None
    cmdline: tuple[str, ...] = field(default=())  # extra kernel arguments for every boot
    build: BuildSource | None = None


@dataclass(frozen=True)
class Catalog:
    entries: tuple[CatalogEntry, ...]
    source: Path

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def defaults(self) -> list[CatalogEntry]:
        return [e for e in self.entries if e.default]

    def get(self, name: str) -> CatalogEntry:
        if name.startswith("path:"):
            return adhoc_path_entry(name)
        for entry in self.entries:
            if entry.name == name:
                return entry
        known = ", ".join(self.names())
        raise UsageError(
            f"unknown kernel {name!r}",
            hint=f"known kernels: {known}; or path:/path/to/bzImage for a local build",
        )

    def select(self, names: list[str] | None) -> list[CatalogEntry]:
        if not names:
            return self.defaults()
        return [self.get(n) for n in names]


def kernels_dir() -> Path:
    env = os.environ.get(KERNELS_DIR_ENV)
    if env:
        return Path(env).resolve()
    return (DATA / "kernels").resolve()  # the repository's kernels/ in a checkout


def adhoc_path_entry(spec: str) -> CatalogEntry:
    image = Path(spec.removeprefix("path:")).expanduser().resolve()
    if not image.is_file():
        raise UsageError(f"{spec}: no such kernel image")
    return CatalogEntry(name=spec, path=PathSource(vmlinuz=image))


def load_catalog(path: Path | None = None) -> Catalog:
    path = path or kernels_dir() / "catalog.yaml"
    entries = list(_parse(path))
    extra = os.environ.get(EXTRA_CATALOG_ENV)
    local = path.with_name("catalog.local.yaml")
    for more in ([Path(extra)] if extra else []) + ([local] if local.exists() else []):
        seen = {e.name for e in entries}
        for entry in _parse(more):
            if entry.name in seen:
                raise ConfigError(f"kernel {entry.name!r} is already defined in {path}", path=more)
            entries.append(entry)
    return Catalog(tuple(entries), path)


def _parse(path: Path) -> list[CatalogEntry]:
    doc = yamlsrc.load(path)
    if not isinstance(doc, LocDict) or set(doc) != {"kernels"}:
        raise ConfigError("expected a mapping with the single key 'kernels'", path=path, line=1)
    kernels = doc["kernels"]
    if not isinstance(kernels, LocDict):
        raise ConfigError("'kernels' must be a mapping of name to entry", **where(doc, "kernels"))
    return [_entry(name, body, kernels, path) for name, body in kernels.items()]


def _entry(name: str, body: object, parent: LocDict, path: Path) -> CatalogEntry:
    if not _NAME.match(name):
        raise ConfigError(
            f"bad kernel name {name!r}",
            hint="letters, digits and ._+- only",
            **where(parent, name),
        )
    if not isinstance(body, LocDict):
        raise ConfigError(f"kernel {name!r}: expected a mapping", **where(parent, name))
    allowed = {"description", "default", "debian", "path", "cmdline", "build"}
    for key in body:
        if key not in allowed:
            raise ConfigError(
                f"kernel {name!r}: unknown key {key!r}",
                hint="allowed: " + ", ".join(sorted(allowed)),
                **where(body, key),
            )
    if sum(key in body for key in ("debian", "path", "build")) != 1:
        raise ConfigError(
            f"kernel {name!r}: give exactly one of 'debian', 'path' or 'build'", **where(body)
        )
    description = body.get("description", "")
    default = body.get("default", False)
    if not isinstance(description, str):
        raise ConfigError("description must be a string", **where(body, "description", value=True))
    if not isinstance(default, bool):
        raise ConfigError("default must be true or false", **where(body, "default", value=True))
    cmdline = body.get("cmdline", [])
    if not isinstance(cmdline, list) or not all(isinstance(a, str) for a in cmdline):
        raise ConfigError("cmdline must be a list of strings", **where(body, "cmdline", value=True))
    debian = _debian(name, body["debian"], body) if "debian" in body else None
    local = _path(name, body["path"], body, path.parent) if "path" in body else None
    build = _build(name, body["build"], body, path.parent) if "build" in body else None
    return CatalogEntry(name, description, default, debian, local, tuple(cmdline), build)


def _debian(name: str, spec: object, parent: LocDict) -> DebianSource:
    if not isinstance(spec, LocDict):
        raise ConfigError(f"kernel {name!r}: debian must be a mapping", **where(parent, "debian"))
    for key in spec:
        if key not in {"series", "suites", "flavour"}:
            raise ConfigError(f"kernel {name!r}: unknown key debian.{key}", **where(spec, key))
    series = spec.get("series")
    if not isinstance(series, str) or not _SERIES.match(series):
        raise ConfigError(
            f"kernel {name!r}: debian.series must be a quoted 'major.minor' string like \"6.1\"",
            **where(spec, "series", value=True),
        )
    suites = spec.get("suites")
    if (
        not isinstance(suites, list)
        or not suites
        or not all(isinstance(s, str) and _SUITE.match(s) for s in suites)
    ):
        raise ConfigError(
            f"kernel {name!r}: debian.suites must be a non-empty list of suite names",
            **where(spec, "suites", value=True),
        )
    flavour = spec.get("flavour", "amd64")
    if flavour not in {"amd64", "cloud-amd64"}:
        raise ConfigError(
            f"kernel {name!r}: flavour must be amd64 or cloud-amd64",
            **where(spec, "flavour", value=True),
        )
    return DebianSource(series, tuple(suites), flavour)


def _path(name: str, spec: object, parent: LocDict, base: Path) -> PathSource:
    if not isinstance(spec, LocDict):
        raise ConfigError(f"kernel {name!r}: path must be a mapping", **where(parent, "path"))
    for key in spec:
        if key not in {"vmlinuz", "modules", "config"}:
            raise ConfigError(f"kernel {name!r}: unknown key path.{key}", **where(spec, key))
    values: dict[str, Path | None] = {}
    for key in ("vmlinuz", "modules", "config"):
        raw = spec.get(key)
        if raw is None:
            values[key] = None
            continue
        if not isinstance(raw, str):
            raise ConfigError(
                f"kernel {name!r}: path.{key} must be a string", **where(spec, key, value=True)
            )
        values[key] = (base / Path(raw).expanduser()).resolve()
    vmlinuz = values["vmlinuz"]
    if vmlinuz is None:
        raise ConfigError(f"kernel {name!r}: path.vmlinuz is required", **where(spec))
    return PathSource(vmlinuz, values["modules"], values["config"])


def _build(name: str, spec: object, parent: LocDict, base: Path) -> BuildSource:
    if not isinstance(spec, LocDict):
        raise ConfigError(f"kernel {name!r}: build must be a mapping", **where(parent, "build"))
    for key in spec:
        if key not in {"source", "fragments", "base"}:
            raise ConfigError(f"kernel {name!r}: unknown key build.{key}", **where(spec, key))
    source = spec.get("source")
    if not isinstance(source, str) or not _NAME.match(source):
        raise ConfigError(
            f"kernel {name!r}: build.source must name a Debian catalog kernel, e.g. debian-6.12",
            **where(spec, "source", value=True) if "source" in spec else where(spec),
        )
    fragments = spec.get("fragments", [])
    if not isinstance(fragments, list) or not all(isinstance(f, str) for f in fragments):
        raise ConfigError(
            f"kernel {name!r}: build.fragments must be a list of config fragment files",
            **where(spec, "fragments", value=True),
        )
    paths = []
    for i, raw in enumerate(fragments):
        fragment = (base / raw).resolve()
        if not fragment.is_file():
            at = where(fragments, i) if isinstance(fragments, LocList) else where(spec)
            raise ConfigError(f"kernel {name!r}: no such config fragment {raw!r}", **at)
        paths.append(fragment)
    kind = spec.get("base", "virtme")
    if kind not in ("virtme", "debian"):
        raise ConfigError(
            f"kernel {name!r}: build.base must be virtme or debian",
            **where(spec, "base", value=True),
        )
    return BuildSource(source, tuple(paths), kind)
