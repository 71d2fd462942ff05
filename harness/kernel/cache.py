"""The kernel cache: where downloads, extracted kernels and host verdicts live.

Everything is written to a temporary sibling and renamed into place, so a killed fetch
leaves no half-extracted directory that a later run could mistake for a ready one.
Concurrent processes serialise on per-item file locks.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from filelock import FileLock

CACHE_ENV = "KITL_CACHE"


@dataclass(frozen=True)
class Cache:
    root: Path

    @classmethod
    def default(cls) -> Cache:
        env = os.environ.get(CACHE_ENV)
        root = Path(env) if env else Path(platformdirs.user_cache_dir("kitl"))
        return cls(root.resolve())

    @property
    def apt_dir(self) -> Path:
        return self.root / "apt"

    @property
    def downloads(self) -> Path:
        return self.root / "debs"

    @property
    def kernels(self) -> Path:
        return self.root / "kernels"

    @property
    def host_dir(self) -> Path:
        return self.root / "host"

    def kernel_dir(self, name: str, version: str) -> Path:
        return self.kernels / f"{name}_{_safe(version)}"

    def lock(self, key: str) -> FileLock:
        """A cross-process lock for one cache item (a download, a kernel, the apt index)."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{_safe(key)}.lock"))


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in text)


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """Yield an empty directory next to `final`; on success it replaces `final` atomically.

    On any exception the staging directory is removed and `final` is left untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_partials(directory: Path, item: str | None = None) -> None:
    """Drop leftovers of killed writers (only call while holding the item's lock).

    With `item`, only the staging directories `staging_dir(directory / item)` makes: other
    items' may belong to live writers holding their own locks."""
    if not directory.is_dir():
        return
    own = re.compile(rf"\.{re.escape(item)}\.[^.]+\.partial") if item is not None else None
    for entry in directory.iterdir():
        if own is not None and not own.fullmatch(entry.name):
            continue
        if entry.name.endswith(".partial"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
