"""One entry of a scenario's `cases:` as a `Case`: its program, requires, load options, setup
and expectations (its attach and drive in harness.scenario.attach_drive).
"""

from __future__ import annotations

from pathlib import Path

from harness.bpf import progtypes, sections
from harness.bpf.progtypes import ATTACH_FAMILIES as FAMILIES
from harness.bpf.progtypes import ATTACH_TARGET_TYPES, DRIVES
from harness.bpf.sections import SectionMatch
from harness.scenario.attach_drive import AttachDriveParser
from harness.scenario.expect import (
    EXPECT,
    Expect,
    ExpectContext,
    MapExpect,
    Override,
    VersionRange,
    check_expect,
    map_contents,
    parse_version_range,
    read_expect,
    usable,
)
from harness.scenario.model import (
    DEFAULT_LOG_LEVEL,
    Attach,
    BpfObject,
    Case,
    Drive,
    LoadOptions,
    Requires,
    SocketAttach,
    SyscallDrive,
    TrafficDrive,
)
from harness.scenario.parsing import Parser, fits, key_fits, only_key
from harness.scenario.shape import CASE, OVERRIDE
from harness.scenario.spec import suggest
from harness.yamlsrc import LocDict, LocList, Pos, where


class CaseParser(AttachDriveParser):
    """One entry of `cases:` (its shape already checked); knows the program's section once
    `program:` is resolved."""

    def __init__(self, parser: Parser, index: int) -> None:
        self.p = parser
        self.rd = parser.rd
        self.what = f"cases[{index}]"
        self.match: SectionMatch | None = None
        self.obj: BpfObject | None = None

    def parse(self, d: object) -> Case | None:
        if not isinstance(d, LocDict):
            return None
        errors = len(self.rd.errors)
        shape_ok = fits(d, CASE)
        name: str = d["name"] if key_fits(d, "name", CASE) else "case"
        if "program" not in d and shape_ok:  # a misspelt key is reported as such
            hint = "or loader: {command: [...]}, for a case your own loader loads"
            self.rd.error(f"{self.what}: missing required key 'program'", where(d), hint)
        program = self._program(d) if key_fits(d, "program", CASE) else None
        requires = self._requires(d["requires"]) if "requires" in d else Requires()
        load = self._load(d) if "load" in d else LoadOptions()
        attach = self._attach(d, name) if key_fits(d, "attach", CASE) else None
        drive = self._drive(d, attach) if key_fits(d, "drive", CASE) else None
        if isinstance(attach, SocketAttach) and not isinstance(drive, TrafficDrive):
            msg = f"{self.what}.attach.socket: a socket filter needs a traffic drive"
            hint = "it sits on the receiving socket; or omit attach: and drive with test_run"
            self.rd.error(msg, where(d, "attach"), hint)
        expectations = (
            self._expectations(d, attach, drive, load)
            if isinstance(d.get("expect"), LocDict)
            else None
        )
        if not shape_ok or len(self.rd.errors) > errors or not program or not expectations:
            return None
        assert self.match is not None
        expect, overrides = expectations
        obj, prog, section = program
        return Case(
            name, obj, prog, section, self.match.prog_type, expect, d.get("description", ""),
            requires, load, attach, drive, overrides, line=d.line,
            setup_maps=self._setup(d) if "setup" in d else (),
            tail_calls=self._tail_calls(d) if "setup" in d else (),
        )  # fmt: skip

    def _program(self, d: LocDict) -> tuple[str, str, str] | None:
        rd, what, at = self.rd, f"{self.what}.program", where(d, "program", value=True)
        obj_name, prog_name = d["program"].split("/")
        if obj_name not in self.p.objects:
            if not self.p.objects:
                return None  # no usable objects: that is reported already
            rd.error(
                f"{what}: unknown object {obj_name!r}", at, suggest(obj_name, list(self.p.objects))
            )
            return None
        obj = self.p.objects[obj_name]
        if obj is None or obj.info is None:
            return None  # the object's own problem is reported
        prog = obj.info.program(prog_name)
        if prog is None:
            names = obj.info.program_names()
            hint = suggest(prog_name, names, "programs")
            file = (obj.source or obj.path or Path()).name
            rd.error(f"{what}: object {obj_name!r} ({file}) has no program {prog_name!r}", at, hint)
            return None
        match = sections.match_section(prog.section)
        if match is None:
            msg = f'{what}: libbpf has no program type for SEC("{prog.section}") of {prog_name}'
            rd.error(
                msg,
                at,
                'e.g. SEC("xdp"), SEC("tc"), SEC("kprobe/do_unlinkat"); see docs/scenarios.md',
            )
            return None
        self.match, self.obj = match, obj
        return obj_name, prog_name, prog.section

    def _requires(self, m: object) -> Requires:
        if not isinstance(m, LocDict) or not fits(m, CASE.field("requires")):
            return Requires()
        helpers = tuple(h if h.startswith("bpf_") else f"bpf_{h}" for h in m.get("helpers", ()))
        return Requires(
            helpers, tuple(m.get("prog_types", ())), tuple(m.get("map_types", ())),
            tuple(m.get("kfuncs", ())), m.get("btf", False), tuple(m.get("attach_types", ())),
            self._libbpf_range(m, "libbpf", f"{self.what}.requires"),
        )  # fmt: skip

    def _libbpf_range(self, m: LocDict, key: str, what: str) -> VersionRange | None:
        """A range of libbpf versions, e.g. ">=1.3" (reported and None when malformed)."""
        if key not in m:
            return None
        try:
            return parse_version_range(m[key])
        except ValueError as exc:
            self.rd.error(
                f"{what}.{key}: {exc}", where(m, key, value=True), 'e.g. ">=1.3" or "<1.3"'
            )
            return None

    def _load(self, d: LocDict) -> LoadOptions:
        m = d["load"]
        if not isinstance(m, LocDict) or not fits(m, CASE.field("load")):
            return LoadOptions()
        btf = (
            self.p.file(m, "btf_custom_path", f"{self.what}.load")
            if "btf_custom_path" in m
            else None
        )
        level = m.get("log_level", DEFAULT_LOG_LEVEL)
        presets = tuple((m.get("globals") or {}).items())
        external = m.get("btf") == "external"
        if external and "btf_custom_path" in m:
            msg = f"{self.what}.load.btf: give btf: external or btf_custom_path, not both"
            self.rd.error(msg, where(m, "btf"))
        sizes = tuple(
            (name, size.get("max_entries"), size.get("value_size"))
            for name, size in (m.get("maps") or {}).items()
        )
        self._check_load_names(m)
        return LoadOptions(
            level,
            m.get("log_size"),
            tuple(m.get("flags", ())),
            btf,
            globals=presets,
            external_btf=external,
            maps=sizes,
            fixups=m.get("fixups", True),
            pinning=m.get("pinning", "on") == "on",
            pin_root=m.get("pin_root"),
            attach_target=m.get("attach_target"),
            companions=tuple(m.get("companions") or ()),
            privilege=m.get("privilege", "privileged"),
            keep_log="log_level" in m,
        )

    def _setup(self, d: LocDict) -> tuple[MapExpect, ...]:
        """`setup: {maps: {...}}`: map contents written after the load, checked like the
        map contents an expectation names."""
        m = d["setup"]
        if not isinstance(m, LocDict) or not isinstance(m.get("maps"), LocDict):
            return ()
        info = self.obj.info if self.obj else None
        maps = info.maps if info is not None and (info.compiled or info.maps) else None
        ctx = ExpectContext(self.match, maps, None, None, DEFAULT_LOG_LEVEL)
        return map_contents(self.rd, m["maps"], ctx, f"{self.what}.setup.maps")

    def _tail_calls(self, d: LocDict) -> tuple[tuple[str, int, str], ...]:
        """`setup: {tail_calls: {MAP: {SLOT: PROGRAM}}}`, the programs the object's."""
        m = d["setup"]
        table = m.get("tail_calls") if isinstance(m, LocDict) else None
        if not isinstance(table, LocDict):
            return ()
        info = self.obj.info if self.obj else None
        programs = info.program_names() if info is not None else []
        out = []
        for map_name, slots in table.items():
            for slot, program in (slots or {}).items():
                if programs and program not in programs:
                    self.rd.error(
                        f"{self.what}.setup.tail_calls.{map_name}: the object has no program "
                        f"{program!r}",
                        where(slots, slot, value=True),
                        suggest(program, programs, "programs"),
                    )
                out.append((map_name, int(slot), program))
        return tuple(out)

    def _check_load_names(self, m: LocDict) -> None:
        """Maps sized and an attach target set must be the object's and fit the program."""
        info = self.obj.info if self.obj is not None else None
        if info is not None and info.compiled and info.maps:
            for name in m.get("maps") or {}:
                if name not in info.maps:
                    self.rd.error(
                        f"{self.what}.load.maps: the object has no map {name!r}",
                        where(m["maps"], name),
                        suggest(name, list(info.maps), "maps"),
                    )
        programs = info.program_names() if info is not None else []
        for name in m.get("companions") or ():
            if name != "*" and programs and name not in programs:
                self.rd.error(
                    f"{self.what}.load.companions: the object has no program {name!r}",
                    where(m, "companions"),
                    suggest(name, programs, "programs"),
                )
        pt = self.match.prog_type if self.match is not None else None
        if "attach_target" in m and pt is not None and pt.name not in ATTACH_TARGET_TYPES:
            self.rd.error(
                f"{self.what}.load.attach_target: {pt.article} {pt.name} program has no "
                "attach target to set",
                where(m, "attach_target"),
                progtypes.ATTACH_TARGET_HINT,
            )

    # -- expectations

    def _expectations(
        self, d: LocDict, attach: Attach | None, drive: Drive | None, load: LoadOptions
    ) -> tuple[Expect, tuple[Override, ...]] | None:
        what = f"{self.what}.expect"
        info = self.obj.info if self.obj else None
        maps = info.maps if info is not None and (info.compiled or info.maps) else None
        # What the case asks for, even when its own shape is wrong (no follow-on errors).
        kinds = [only_key(d.get(k), v) for k, v in (("drive", DRIVES), ("attach", FAMILIES))]
        action = drive.action if isinstance(drive, SyscallDrive) else None
        ctx = ExpectContext(self.match, maps, kinds[0], kinds[1], load.log_level, action)
        if not isinstance(d["expect"], LocDict):
            return None
        expect = read_expect(self.rd, d["expect"], ctx, what)
        if expect is None:
            return None
        base_at = {k: where(d["expect"], k) for k in d["expect"]}
        check_expect(self.rd, expect, lambda k: base_at.get(k, where(d, "expect")), ctx, what)
        overrides = []
        items = d.get("overrides")
        for j, item in enumerate(items if isinstance(items, LocList) else ()):
            override = self._override(item, f"{self.what}.overrides[{j}]", ctx, expect, base_at)
            if override is not None:
                overrides.append(override)
        return expect, tuple(overrides)

    def _override(
        self, m: LocDict, what: str, ctx: ExpectContext, base: Expect, base_at: dict[str, Pos]
    ) -> Override | None:
        rd = self.rd
        if not isinstance(m, LocDict) or not isinstance(m.get("expect"), LocDict):
            return None
        when = m.get("when")
        if not fits(when, OVERRIDE.field("when")):
            when = LocDict()  # reported; the expectation is still checked
        elif not when:
            msg = f"{what}.when: give kernel:, config:, libbpf: and/or btf:"
            rd.error(msg, where(m, "when", value=True))
            return None
        libbpf = self._libbpf_range(when, "libbpf", f"{what}.when")
        if "libbpf" in when and libbpf is None:
            return None
        kernel = None
        if "kernel" in when:
            try:
                kernel = parse_version_range(when["kernel"])
            except ValueError as exc:
                rd.error(
                    f"{what}.when.kernel: {exc}",
                    where(when, "kernel", value=True),
                    'e.g. "<5.17", ">=6.6" or ">=5.10,<6.1"',
                )
                return None
        configs = (
            (when["config"],)
            if isinstance(when.get("config"), str)
            else tuple(when.get("config", ()))
        )
        known = [c.name for c in self.p.configs]
        for name in configs:
            if name not in known:
                rd.error(
                    f"{what}.when.config: unknown config {name!r}",
                    where(when, "config", value=True),
                    suggest(name, known),
                )
                return None
        expect = read_expect(rd, m["expect"], ctx, f"{what}.expect")
        if expect is None:
            return None
        own_at = {k: where(m["expect"], k) for k in usable(m["expect"], EXPECT)}
        override = Override(expect, tuple(own_at), kernel, configs, libbpf, when.get("btf"))
        merged = override.apply(base)
        at = where(m, "expect")
        check_expect(
            rd,
            merged,
            lambda k: own_at.get(k) or base_at.get(k) or at,
            ctx,
            f"{what}.expect",
            keys=tuple(own_at),
        )
        return override
