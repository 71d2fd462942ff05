"""kernels/kernels.lock: each Debian catalog name pinned to exact packages and digests.

JSON with sorted keys so a re-lock shows up as a small, reviewable diff.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, UsageError
from harness.kernel.catalog import CatalogEntry
from harness.kernel.debian import Package, ResolvedKernel

LOCK_VERSION = 1


@dataclass(frozen=True)
class LockedKernel:
    name: str
    series: str
    suites: tuple[str, ...]
    flavour: str
    release: str
    version: str
    suite: str
    packages: tuple[tuple[str, Package], ...]

    def package(self, role: str) -> Package | None:
        return next((p for r, p in self.packages if r == role), None)

    @property
    def digest(self) -> str:
        """The image package's sha256: identifies the exact kernel build in results."""
        image = self.package("image")
        assert image is not None
        return image.sha256

    @classmethod
    def from_resolved(cls, entry: CatalogEntry, resolved: ResolvedKernel) -> LockedKernel:
        assert entry.debian is not None
        return cls(
            entry.name,
            entry.debian.series,
            entry.debian.suites,
            entry.debian.flavour,
            resolved.release,
            resolved.version,
            resolved.suite,
            resolved.packages,
        )


def _to_json(k: LockedKernel) -> dict[str, Any]:
    return {
        "series": k.series,
        "suites": list(k.suites),
        "flavour": k.flavour,
        "release": k.release,
        "version": k.version,
        "suite": k.suite,
        "packages": [
            {
                "role": role,
                "name": p.name,
                "version": p.version,
                "suite": p.suite,
                "filename": p.filename,
                "sha256": p.sha256,
                "size": p.size,
            }
            for role, p in k.packages
        ],
    }


def _from_json(name: str, raw: dict[str, Any]) -> LockedKernel:
    pkgs = tuple(
        (
            p["role"],
            Package(
                name=p["name"],
                version=p["version"],
                suite=p["suite"],
                filename=p["filename"],
                sha256=p["sha256"],
                size=int(p["size"]),
                source="",
                depends="",
            ),
        )
        for p in raw["packages"]
    )
    return LockedKernel(
        name,
        raw["series"],
        tuple(raw["suites"]),
        raw.get("flavour", "amd64"),
        raw["release"],
        raw["version"],
        raw["suite"],
        pkgs,
    )


@dataclass
class LockFile:
    path: Path
    kernels: dict[str, LockedKernel]

    @classmethod
    def read(cls, path: Path) -> LockFile:
        if not path.exists():
            return cls(path, {})
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("lock_version") != LOCK_VERSION:
                raise ConfigError(
                    f"unsupported lock_version {raw.get('lock_version')!r}", path=path
                )
            kernels = {n: _from_json(n, body) for n, body in raw["kernels"].items()}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc.msg}", path=path, line=exc.lineno) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"malformed lock entry ({exc})",
                path=path,
                hint="rerun `kitl kernels lock --update`",
            ) from None
        return cls(path, kernels)

    def write(self) -> None:
        body = {
            "lock_version": LOCK_VERSION,
            "kernels": {n: _to_json(k) for n, k in sorted(self.kernels.items())},
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def get(self, entry: CatalogEntry) -> LockedKernel:
        """The pinned build for a Debian catalog entry, refusing a lock that no longer
        matches what the catalog asks for."""
        assert entry.debian is not None
        locked = self.kernels.get(entry.name)
        relock = f"run `kitl kernels lock --update {entry.name}`"
        if locked is None:
            raise UsageError(f"{entry.name} is not in {self.path}", hint=relock)
        if (locked.series, locked.suites, locked.flavour) != (
            entry.debian.series,
            entry.debian.suites,
            entry.debian.flavour,
        ):
            raise UsageError(
                f"{self.path} pins {entry.name} to series {locked.series} from "
                f"{', '.join(locked.suites)}, but the catalog now asks for something else",
                hint=relock,
            )
        return locked
