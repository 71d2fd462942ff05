"""BPF objects as scenarios built in memory, for `kitl verify`: one case per program
(filtered by --prog), expecting a successful load unless bulk expectations
(harness.scenario.bulk) say otherwise.  The objects and the names verify's options give
(harness.scenario.verify_options) are checked before anything boots.  The pytest plugin
collects `.o` files under `--kitl-verify` and builds their scenarios with
`scenario_for_object`.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.bpf import progtypes, sections
from harness.bpf.elfobj import ObjectFormatError, ObjectInfo, read_object
from harness.bpf.progtypes import ProgType
from harness.errors import UsageError
from harness.scenario import bulk, filters, selftest_tags
from harness.scenario.expect import Expect, MapEntry, MapExpect, Override
from harness.scenario.loader import files_under
from harness.scenario.model import (
    DEFAULT_LOG_LEVEL,
    BpfObject,
    Case,
    LoadOptions,
    PacketSpec,
    Scenario,
    TestRunDrive,
    profile_case_name,
)
from harness.scenario.verify_options import PRIVILEGED, VerifyOptions

UNKNOWN_TYPE = progtypes.UNKNOWN_TYPE
OBJECT_CASE = "object"  # the one case of an object that is not a BPF object
SKIPPED_SHOWN = 10  # files under a directory that are not BPF objects, named on stderr


def objects_in(paths: Sequence[Path]) -> list[Path]:
    """The object files named, or found under the directories named (*.o), sorted."""
    found = files_under(paths, ".o", "object", "BPF objects")
    return list(dict.fromkeys(p.resolve() for p in found))


def checked_objects(paths: Sequence[Path]) -> list[Path]:
    """The BPF objects to verify, checked before anything boots: a file named that is not
    one is a usage error; one found under a directory (a build tree also holds the host's
    objects) is skipped, and said so on stderr."""
    named = {p.resolve() for p in paths if not p.is_dir()}
    kept: list[Path] = []
    skipped: list[str] = []
    for obj in objects_in(paths):
        try:
            read_object(obj)
        except ObjectFormatError as exc:
            if obj in named:
                raise UsageError(str(exc), hint="kitl verify takes BPF objects") from None
            skipped.append(str(exc))
            continue
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        kept.append(obj)
    for line in skipped[:SKIPPED_SHOWN]:
        print(f"kitl: skipped {line}", file=sys.stderr)
    if len(skipped) > SKIPPED_SHOWN:
        print(f"kitl: skipped {len(skipped) - SKIPPED_SHOWN} more", file=sys.stderr)
    if not kept:
        raise UsageError(f"no BPF object in {', '.join(map(str, paths))}")
    return kept


def check_names(objects: Sequence[Path], options: VerifyOptions) -> None:
    """Every map, global and program the options name is in some object, and every
    retargeted program can take a target: a typo fails here, not in every guest."""
    infos = [read_object(o) for o in objects]
    maps = {m for i in infos for m in i.maps}
    global_names = {g.name for i in infos for g in i.globals}
    programs = {p.name: p for i in infos for p in i.programs}
    for name, *_ in options.maps:
        if name not in maps:
            raise UsageError(f"--map {name}: no object has a map {name!r}", hint=_hint(name, maps))
    for name, _, program in options.tail_calls:
        if name not in maps or program not in programs:
            missing = f"a map {name!r}" if name not in maps else f"a program {program!r}"
            raise UsageError(f"--tail-call {name}: no object has {missing}")
    for entry in options.map_values:
        chosen = [i for o, i in zip(objects, infos, strict=True) if entry.applies_to(o)]
        if not chosen:
            raise UsageError(f"--map-set {entry.object}/{entry.map}: no object's file name "
                             f"matches {entry.object!r}")  # fmt: skip
        in_them = {m for i in chosen for m in i.maps}
        if entry.map not in in_them and "." not in entry.map:  # ".bss": libbpf's data maps
            raise UsageError(
                f"--map-set {entry.map}: no object has a map {entry.map!r}",
                hint=_hint(entry.map, in_them),
            )
    for name, _ in options.globals:
        if name not in global_names:
            raise UsageError(
                f"--global {name}: no object has a global variable {name!r}",
                hint=_hint(name, global_names),
            )
    for prog, _ in options.attach_targets:
        found = programs.get(prog)
        if found is None:
            raise UsageError(
                f"--attach-target {prog}: no object has a program {prog!r}",
                hint=_hint(prog, set(programs)),
            )
        match = sections.match_section(found.section)
        if match is None or match.prog_type.name not in progtypes.ATTACH_TARGET_TYPES:
            raise UsageError(
                f'--attach-target {prog}: SEC("{found.section}") takes no attach target',
                hint=progtypes.ATTACH_TARGET_HINT,
            )


def _hint(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def scenario_name(obj: Path) -> str:
    """The object's file name without .bpf.o; characters outside [A-Za-z0-9._-] become
    '_' and then a hash of the name is appended, so 'a b.o' and 'a_b.o' stay apart."""
    name = obj.name.removesuffix(".o").removesuffix(".bpf")
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    if cleaned == name and name:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cleaned[:80] or 'object'}-{digest}"


def _map_setup(obj: Path, info: ObjectInfo, options: VerifyOptions) -> tuple[MapExpect, ...]:
    """--map-set's entries for this object: its maps (and libbpf's data maps) only."""
    mine = [v for v in options.map_values if v.applies_to(obj)]
    return tuple(
        MapExpect(m, tuple(MapEntry(v.key, v.value) for v in mine if v.map == m))
        for m in dict.fromkeys(v.map for v in mine)
        if m in info.maps or "." in m
    )


def scenario_for_object(obj: Path, options: VerifyOptions) -> Scenario:
    """One case per selected program of `obj` (and per privilege asked for).  An object
    that is not a BPF object (empty, truncated, another machine's ELF) gets one case,
    OBJECT_CASE, whose load fails in the guest with libbpf's own message: one cell per
    loader, kernel and config says so, and the other objects still run."""
    try:
        info = read_object(obj)
    except ObjectFormatError as exc:
        return _unreadable_object(obj, str(exc), options)
    except ValueError as exc:  # cannot be read at all: the guest could not get it either
        raise UsageError(str(exc)) from None
    name = scenario_name(obj)
    setup = _map_setup(obj, info, options)
    if options.annotations:  # --map-set stands for the selftests' pre_execution_cb
        selected = [p.name for p in info.programs if _selected(obj, p.name, options)]
        found = selftest_tags.cases_of(info, obj, name, selected)
        found = [replace(c, setup_maps=setup) if c.drive else c for c in found]
        obj_def = BpfObject(name, path=obj, info=info)
        return Scenario(name, obj, (obj_def,), tuple(found), configs=options.configs)
    cases: list[Case] = []
    global_names = {g.name for g in info.globals}
    targets = dict(options.attach_targets)
    companions = ("*",) if options.whole_object else ()
    names = set(info.program_names())
    for prog in info.programs:
        if not _selected(obj, prog.name, options):
            continue
        match = sections.match_section(prog.section)
        prog_type = match.prog_type if match else UNKNOWN_TYPE
        for privilege in options.privileges:
            load = LoadOptions(
                DEFAULT_LOG_LEVEL if options.log_level is None else options.log_level,
                options.log_size,
                options.flags,
                options.btf_custom_path,
                privilege=privilege,
                # only what this object has: the names were checked against all objects
                globals=tuple(g for g in options.globals if g[0] in global_names),
                maps=tuple(m for m in options.maps if m[0] in info.maps),
                fixups=options.fixups,
                pinning=options.pinning,
                pin_root=options.pin_root,
                attach_target=targets.get(prog.name),
                companions=companions,
                keep_log=options.log_level is not None,
            )
            # the program's own return value, where the kernel can run it without a target;
            # after a load with fewer capabilities it runs with them back (test_loader's way)
            drive = None
            if options.test_run and prog_type.test_run:
                drive = _test_run(prog_type, options.test_run_input)
            cases.append(
                Case(
                    profile_case_name(prog.name, privilege),
                    name,
                    prog.name,
                    prog.section,
                    prog_type,
                    Expect(),
                    load=load,
                    drive=drive,
                    setup_maps=setup,
                    tail_calls=tuple(
                        t for t in options.tail_calls if t[0] in info.maps and t[2] in names
                    ),
                )
            )
    obj_def = BpfObject(name, path=obj, info=info)
    return Scenario(name, obj, (obj_def,), tuple(cases), configs=options.configs)


def _selected(obj: Path, program: str, options: VerifyOptions) -> bool:
    """Whether --prog's globs (none: every program) and --filter's (veristat's -f, on the
    object's file name and the program's) take this program."""
    if options.programs and not any(fnmatch.fnmatchcase(program, g) for g in options.programs):
        return False
    given = (f for value in options.filters for f in value)
    return filters.selected(given, obj.name, program)


def _unreadable_object(obj: Path, problem: str, options: VerifyOptions) -> Scenario:
    """The scenario of an object kitl's ELF reader refuses: one case that loads it (no
    program selected; libbpf fails opening it, before any program is looked up)."""
    name = scenario_name(obj)
    load = LoadOptions(
        DEFAULT_LOG_LEVEL if options.log_level is None else options.log_level,
        options.log_size,
        options.flags,
        options.btf_custom_path,
        privilege=options.privileges[0] if len(options.privileges) == 1 else PRIVILEGED,
    )  # no globals: there is no data section to preset them in
    case = Case(OBJECT_CASE, name, "", "", UNKNOWN_TYPE, Expect(), problem, load=load)
    obj_def = BpfObject(name, path=obj)
    return Scenario(name, obj, (obj_def,), (case,), problem, configs=options.configs)


def duplicate_names(objects: Sequence[Path]) -> None:
    """Two objects with one scenario name would write the same cells: refuse them."""
    seen: dict[str, Path] = {}
    for obj in objects:
        name = scenario_name(obj)
        if name in seen:
            raise UsageError(
                f"{seen[name]} and {obj} both verify as {name!r}; their cells would collide",
                hint="rename one, or verify them in separate runs",
            )
        seen[name] = obj


def _test_run(prog_type: ProgType, given: bytes | None) -> TestRunDrive:
    """The input of a program's test_run: the bytes given (the packet of a packet type, else
    the context), or an Ethernet/IPv4/UDP packet for packet types and no context."""
    if prog_type.test_run_data:
        if given is not None:
            return TestRunDrive(data=given)
        return TestRunDrive(packet=PacketSpec(l3="ipv4", l4="udp"))
    return TestRunDrive(ctx_data=given)


def with_expectations(scenario: Scenario, overrides: dict[str, tuple[Override, ...]]) -> Scenario:
    """The scenario with each case's expectations (by case name) from the bulk file."""
    cases = tuple(replace(c, overrides=overrides.get(c.name, ())) for c in scenario.cases)
    return replace(scenario, cases=cases)


# --- bulk expectations ------------------------------------------------------------------------


@dataclass(frozen=True)
class BulkExpectations:
    """A kitl-verify.yaml (harness.scenario.bulk) turned into each case's expectations."""

    expectations: bulk.Expectations

    def apply(self, scenario: Scenario) -> Scenario:
        """Every entry that can match a case (whatever the kernel) becomes an override of
        it, in reverse file order: overrides apply in turn, so of those whose kernel range
        holds, the first in the file has the last word, which is first-match semantics."""
        obj = scenario.objects[0].path or scenario.path
        overrides: dict[str, tuple[Override, ...]] = {}
        cases: list[Case] = []
        for original in scenario.cases:
            case = original
            # whatever their kernel range: the engine picks by the cell's kernel
            matching = [
                e
                for e in self.expectations.entries
                if replace(e, kernel=None).matches(
                    obj.name, case.program, None, case.load.privilege
                )
            ]
            overrides[case.name] = tuple(_override(e, case) for e in reversed(matching))
            wants_retval = any(e.retval is not None for e in matching)
            if wants_retval and case.drive is None and case.prog_type.test_run:
                case = replace(case, drive=_test_run(case.prog_type, None))
            if matching:
                case = replace(case, load=_load_settings(matching[0], case))
            cases.append(case)
        return with_expectations(replace(scenario, cases=tuple(cases)), overrides)


def _load_settings(entry: bulk.Entry, case: Case) -> LoadOptions:
    """The case's load with what the entry's loader sets: its map sizes win over the
    command line's for the same map, its attach target over --attach-target, its log level
    over --log-level; its flags are added to --flags."""
    if not entry.sets_load:
        return case.load
    if entry.attach_target is not None and case.prog_type.name not in progtypes.ATTACH_TARGET_TYPES:
        raise UsageError(
            f"{entry.where}: attach_target: {case.program} ({case.section}) takes none",
            hint=progtypes.ATTACH_TARGET_HINT,
        )
    named = {name for name, *_ in entry.maps}
    return replace(
        case.load,
        maps=(*(m for m in case.load.maps if m[0] not in named), *entry.maps),
        attach_target=entry.attach_target or case.load.attach_target,
        flags=tuple(dict.fromkeys((*case.load.flags, *entry.flags))),
        log_level=case.load.log_level if entry.log_level is None else entry.log_level,
        keep_log=case.load.keep_log or entry.log_level is not None,
    )


def _override(entry: bulk.Entry, case: Case) -> Override:
    rejected = entry.verdict == "rejected"
    retval = None
    if entry.retval is not None:
        try:
            retval = sections.resolve_retval(case.prog_type, case.section, entry.retval)
        except ValueError as exc:
            raise UsageError(f"{entry.where}: retval: {exc}") from None
    expect = Expect(
        load="rejected" if rejected else "ok",
        log=tuple(m.regex.pattern if m.regex else re.escape(m.text) for m in entry.log),
        error_class=entry.error_class,
        retval=retval,
    )
    return Override(expect, ("load", "log", "error_class", "retval"), kernel=entry.kernel)


def load_bulk(path: Path) -> BulkExpectations:
    return BulkExpectations(bulk.load_expectations(path))
