"""What a real loader does to an opened object before it loads it, inside the guest.

Applied between bpf_object__open and bpf_object__load (harness.guest.libbpf_object):

- veristat's fixups: a map declared with `max_entries` 0 is sized by its loader's user
  space at run time (bcc's libbpf-tools size every map from command-line options), so it
  gets 1 (ring buffers: a page; a stack-trace map with no value size: 127 frames, the
  kernel's default perf_event_max_stack).  Storage maps, whose size is not an entry count,
  and perf event arrays, which libbpf sizes to the CPUs itself, are left alone.  Each fixup
  is noted in the cell.
- the user's own sizes (`--map NAME:max_entries=N,value_size=N`), which win over fixups;
- pinning: off (veristat's way), or under another root (`pin_root_path` at open);
- the attach target of a tracing program whose user space sets it at load time
  (`fentry/dummy_file_read` retargeted to `vfs_read`).

When a map fails, `failed_map` describes it (name, type, sizes, pin path) so the host can
name the real cause; the guest agent adds the kernel's answer to "is this type supported".
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from dataclasses import dataclass

from harness.bpf.maps import (
    PERF_MAX_STACK,
    RINGBUF,
    SIZE_UNREAD_MAP_TYPES,
    USER_RINGBUF,
    lacks_entries,
    lacks_value_size,
)
from harness.guest.libbpf import Libbpf

# libbpf's words naming the map whose creation failed ("map 'x': failed to create: ...")
_FAILED_MAP = re.compile(r"map '([^']+)': (?:failed to create|failed to auto-pin|error reusing)")


@dataclass(frozen=True)
class MapSize:
    """The user's size for one map, as their loader would set it before the load."""

    name: str
    max_entries: int | None = None
    value_size: int | None = None


@dataclass(frozen=True)
class MapDef:
    """A map of the object as libbpf was about to create it."""

    name: str
    type: int
    type_name: str
    key_size: int
    value_size: int
    max_entries: int
    pin_path: str = ""  # where libbpf pins it ("" unpinned)
    type_supported: int | None = None  # the kernel's probe: 1 yes, 0 no, < 0 unknown


def maps_of(lib: Libbpf, obj: int) -> list[int]:
    return lib.walk("bpf_object__next_map", obj)


def map_name(lib: Libbpf, m: int) -> str:
    return str(lib.c.bpf_map__name(m).decode())


def prepare_maps(
    lib: Libbpf, obj: int, sizes: tuple[MapSize, ...], *, fixups: bool, pinning: bool,
    shrink: bool = False,
) -> tuple[str, ...]:  # fmt: skip
    """Size and unpin the object's maps before the load; the fixups applied, as notes.
    `shrink` (verification only, with fixups): the maps whose size the verifier never reads
    get one entry, as veristat creates them, unless the user sized them.  A size for a
    map the object lacks raises KeyError (the host checks names first)."""
    c = lib.c
    by_name = {map_name(lib, m): m for m in maps_of(lib, obj)}
    notes: list[str] = []
    for given in sizes:
        if given.name not in by_name:
            raise KeyError(f"the object has no map {given.name!r} (maps: {', '.join(by_name)})")
    wanted = {s.name: s for s in sizes}
    for name, m in by_name.items():
        if not pinning:
            c.bpf_map__set_pin_path(m, None)
        size = wanted.get(name)
        if size is not None:
            _set(lib, m, name, "max_entries", size.max_entries)
            _set(lib, m, name, "value_size", size.value_size)
        elif fixups:
            notes += _fixup(lib, m, name)
            kind = int(c.bpf_map__type(m))
            if shrink and kind in SIZE_UNREAD_MAP_TYPES:
                c.bpf_map__set_max_entries(m, 1)
            elif shrink and kind in (RINGBUF, USER_RINGBUF):  # one page, the least
                c.bpf_map__set_max_entries(m, os.sysconf("SC_PAGE_SIZE"))
    return tuple(notes)


def _set(lib: Libbpf, m: int, name: str, what: str, value: int | None) -> None:
    if value is None:
        return
    rc = int(getattr(lib.c, f"bpf_map__set_{what}")(m, value))
    if rc:
        raise ValueError(f"map {name!r}: libbpf refused {what} {value}: {os.strerror(-rc)}")


def _fixup(lib: Libbpf, m: int, name: str) -> list[str]:
    c = lib.c
    kind = int(c.bpf_map__type(m))
    notes = []
    if lacks_value_size(kind, int(c.bpf_map__value_size(m))):
        frames = PERF_MAX_STACK * 8
        c.bpf_map__set_value_size(m, frames)
        notes.append(f"map {name!r}: value_size 0 set to {frames} ({PERF_MAX_STACK} frames)")
    if not lacks_entries(kind, int(c.bpf_map__max_entries(m))):
        return notes
    entries = os.sysconf("SC_PAGE_SIZE") if kind in (RINGBUF, USER_RINGBUF) else 1
    c.bpf_map__set_max_entries(m, entries)
    notes.append(f"map {name!r}: max_entries 0 set to {entries}, as veristat does")
    return notes


# Types an unprivileged user may create (the kernel's test_loader, is_unpriv_capable_map):
# hashes without BPF_F_ZERO_SEED, arrays, ring buffers, prog/cgroup/perf event arrays...
_UNPRIVILEGED_MAP_TYPES = frozenset({1, 5, 13, 21, 2, 27, 3, 8, 6, 31, 12, 19, 4})
_HASHES = frozenset({1, 5, 13})
BPF_F_ZERO_SEED = 1 << 6


def skip_privileged_maps(lib: Libbpf, obj: int) -> None:
    """Create no map an unprivileged user may not, as test_loader's unprivileged mode does:
    a program using one then fails with libbpf's "map ... wasn't created"."""
    for m in maps_of(lib, obj):
        kind = int(lib.c.bpf_map__type(m))
        allowed = kind in _UNPRIVILEGED_MAP_TYPES
        if kind in _HASHES and int(lib.c.bpf_map__map_flags(m)) & BPF_F_ZERO_SEED:
            allowed = False
        if not allowed:
            lib.c.bpf_map__set_autocreate(m, False)


def set_attach_target(lib: Libbpf, prog: int, program: str, target: str) -> None:
    rc = int(lib.c.bpf_program__set_attach_target(prog, 0, target.encode()))
    if rc:
        raise ValueError(
            f"program {program!r}: libbpf refused attach target {target!r} "
            f"({os.strerror(-rc)}); only tracing programs (fentry, fexit, fmod_ret, tp_btf, "
            "lsm, iter) take one"
        )


def failed_map(lib: Libbpf, obj: int, messages: str) -> MapDef | None:
    """The map libbpf's messages say failed, as the object declares it (None: no map did)."""
    named = _FAILED_MAP.search(messages)
    if named is None:
        return None
    for m in maps_of(lib, obj):
        if map_name(lib, m) == named.group(1):
            return describe(lib, m)
    return None


def describe(lib: Libbpf, m: int) -> MapDef:
    c = lib.c
    kind = int(c.bpf_map__type(m))
    pin = c.bpf_map__pin_path(m) if lib.has("bpf_map__pin_path") else None
    return MapDef(
        name=map_name(lib, m),
        type=kind,
        type_name=lib.map_type_name(kind),
        key_size=int(c.bpf_map__key_size(m)),
        value_size=int(c.bpf_map__value_size(m)),
        max_entries=int(c.bpf_map__max_entries(m)),
        pin_path=pin.decode() if pin else "",
    )


def pins_under(root: str) -> frozenset[str]:
    """The entries of a pin directory (maps pinned by name sit right in it)."""
    try:
        return frozenset(os.path.join(root, n) for n in os.listdir(root))
    except OSError:
        return frozenset()


_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


def mount_bpffs(path: str = "/sys/fs/bpf") -> str:
    """Mount a bpffs at `path` unless one is there (virtme-ng mounts none): what every
    real loader's host has, so maps pinned by name work.  Returns a note on failure."""
    if _is_bpffs(path):
        return ""
    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs(path, exist_ok=True)
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if libc.mount(b"bpffs", path.encode(), b"bpf", flags, b"mode=0700") != 0:
        err = ctypes.get_errno()
        return f"mounting a bpffs at {path} failed: {os.strerror(err)}"
    return ""


def _is_bpffs(path: str) -> bool:
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            return any(
                fields[1] == path and fields[2] == "bpf"
                for fields in (line.split() for line in mounts)
                if len(fields) > 2
            )
    except OSError:
        return False


def unpin(paths: list[str]) -> None:
    """Remove what a cell pinned: a pinned map would outlive the cell and be reused by the
    next one (libbpf reuses a compatible map pinned by name)."""
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                for name in os.listdir(path):
                    os.unlink(os.path.join(path, name))
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as exc:
            print(f"kitl agent: could not unpin {path}: {exc}", file=sys.stderr)
