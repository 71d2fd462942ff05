"""What a BPF object holds, read without libbpf: programs, maps and license.

`read_object()` reads a compiled ELF64 little-endian object (EM_BPF) with `struct`; it names
programs as libbpf does: every non-local STT_FUNC symbol in an executable section other than
.text is a program, named after the function, and the section name is its SEC().  Maps are the
symbols of the ".maps" section (BTF-defined maps) or of the legacy "maps" section.

`scan_source()` answers the same question for a C file that is not compiled yet, with regular
expressions over `SEC("...")` definitions.  It is an approximation for early error messages
(macros that generate programs are not expanded); the compiled object is the truth.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.bpf import btf

EM_BPF = 247
SHT_SYMTAB = 2
SHT_REL = 9
SHT_NOBITS = 8
SHF_EXECINSTR = 0x4
STT_OBJECT = 1
STT_FUNC = 2
STB_LOCAL, STB_GLOBAL = 0, 1
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_XINDEX = 0xFFFF
MAX_OBJECT_BYTES = 256 << 20  # a BPF object beyond this is not something we should parse
MAX_SOURCE_BYTES = 16 << 20

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")  # Elf64_Rel: r_offset, r_info (symbol index << 32 | type)


@dataclass(frozen=True)
class ObjectProgram:
    name: str  # the C function name: libbpf's program name
    section: str  # the SEC() it lives in, as written (a leading "?" kept)
    size: int = 0  # bytes of instructions (0 when scanned from source)

    @property
    def insns(self) -> int:
        return self.size // 8


@dataclass(frozen=True)
class GlobalVar:
    """A global variable libbpf keeps in a data map (.data, .rodata, .bss and their
    .data.NAME flavours): where its initial value sits in that map."""

    name: str
    section: str
    offset: int
    size: int


@dataclass(frozen=True)
class ObjectInfo:
    source: Path
    programs: tuple[ObjectProgram, ...]
    maps: tuple[str, ...]
    license: str | None = None
    sections: tuple[str, ...] = ()
    compiled: bool = True  # False: scanned from C source
    globals: tuple[GlobalVar, ...] = ()
    # programs a map of the object names statically (a prog array's `.values = {...}`):
    # libbpf fills those slots at load time and fails unless they are loaded too
    slot_programs: tuple[str, ...] = ()
    # the decl tags on each function (BTF), where kernel selftests write expectations
    decl_tags: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # kernel symbols it needs (`extern ... __ksym`, not __weak): libbpf fails every load of
    # the object on a kernel without one of them
    ksyms: tuple[str, ...] = ()
    # the kernel structs its struct_ops maps implement (`tcp_congestion_ops`)
    struct_ops: tuple[str, ...] = ()

    def tags_of(self, function: str) -> tuple[str, ...]:
        return dict(self.decl_tags).get(function, ())

    def program(self, name: str) -> ObjectProgram | None:
        for prog in self.programs:
            if prog.name == name:
                return prog
        return None

    def program_names(self) -> list[str]:
        return [p.name for p in self.programs]


class ObjectFormatError(ValueError):
    """The bytes are not a (well-formed, little-endian) BPF object.  A file that cannot be
    read at all raises a plain ValueError instead."""


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.what = what

    def unpack(self, fmt: struct.Struct, offset: int, item: str) -> tuple[int, ...]:
        if offset < 0 or offset + fmt.size > len(self.data):
            raise ObjectFormatError(
                f"{self.what}: truncated ELF file: {item} at offset {offset} needs "
                f"{fmt.size} bytes, the file has {len(self.data)}"
            )
        values: tuple[int, ...] = fmt.unpack_from(self.data, offset)
        return values

    def chunk(self, offset: int, size: int, item: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise ObjectFormatError(
                f"{self.what}: truncated ELF file: {item} at offset {offset} needs "
                f"{size} bytes, the file has {len(self.data)}"
            )
        return self.data[offset : offset + size]


@dataclass(frozen=True)
class _Section:
    name_off: int
    type: int
    flags: int
    offset: int
    size: int
    link: int
    entsize: int


def _cstr(table: bytes, offset: int) -> str:
    if offset >= len(table):
        return ""
    end = table.find(b"\0", offset)
    raw = table[offset:] if end < 0 else table[offset:end]
    return raw.decode("utf-8", errors="replace")


def parse_object(data: bytes, what: str = "<bytes>") -> ObjectInfo:
    """Parse the bytes of a BPF object; ObjectFormatError (naming `what`) if they are not one."""
    if len(data) < 4 or data[:4] != b"\x7fELF":
        raise ObjectFormatError(f"{what}: not an ELF file (no \\x7fELF magic)")
    if len(data) < _EHDR.size:
        raise ObjectFormatError(
            f"{what}: truncated ELF file: {len(data)} bytes, no complete header"
        )
    ident = data[:16]
    if ident[4] != 2:
        raise ObjectFormatError(f"{what}: not a 64-bit ELF file (BPF objects are ELF64)")
    if ident[5] != 1:
        raise ObjectFormatError(
            f"{what}: big-endian ELF (compiled for bpfeb?); kitl reads little-endian "
            "objects (clang -target bpf on x86 gives bpfel)"
        )
    rd = _Reader(data, what)
    (_, _type, machine, _v, _e, _ph, shoff, _f, _eh, _phs, _phn, shentsize, shnum, shstrndx) = (
        rd.unpack(_EHDR, 0, "ELF header")
    )
    if machine != EM_BPF:
        raise ObjectFormatError(
            f"{what}: not a BPF object (ELF machine {machine}, BPF is {EM_BPF})"
        )
    if shoff == 0:
        raise ObjectFormatError(f"{what}: ELF file without section headers")
    if shentsize != _SHDR.size:
        raise ObjectFormatError(f"{what}: unexpected section header size {shentsize}")
    first = _section(rd, shoff, 0)
    if shnum == 0:  # extended numbering: the count is in section 0
        shnum = first.size
    if shstrndx == SHN_XINDEX:
        shstrndx = first.link
    if shnum * _SHDR.size > len(data):
        raise ObjectFormatError(f"{what}: truncated ELF file: {shnum} section headers do not fit")
    sections = [_section(rd, shoff, i) for i in range(shnum)]
    if not 0 < shstrndx < shnum:
        raise ObjectFormatError(f"{what}: bad section name table index {shstrndx}")
    shstr = _contents(rd, sections[shstrndx], "section name table")
    names = [_cstr(shstr, s.name_off) for s in sections]

    programs, maps, global_vars = _symbols(rd, sections, names)
    license_text = None
    if "license" in names:
        raw = _contents(rd, sections[names.index("license")], "license section")
        license_text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return ObjectInfo(
        source=Path(what),
        programs=programs,
        maps=maps,
        license=license_text,
        sections=tuple(n for n in names[1:] if n),
        globals=global_vars,
        slot_programs=_slot_programs(rd, sections, names),
        decl_tags=_decl_tags(rd, sections, names),
        ksyms=_strong_externs(rd, sections),
        struct_ops=_struct_ops(rd, sections, names),
    )


def _is_data(section: str) -> bool:
    return any(section == s or section.startswith(s + ".") for s in (".data", ".rodata", ".bss"))


def _symbols(
    rd: _Reader, sections: list[_Section], names: list[str]
) -> tuple[tuple[ObjectProgram, ...], tuple[str, ...], tuple[GlobalVar, ...]]:
    """Programs (in section, offset order, as libbpf lists them), map names, and global
    variables of the data sections."""
    programs: list[tuple[int, int, ObjectProgram]] = []
    maps: list[tuple[int, str]] = []
    global_vars: list[GlobalVar] = []
    shnum = len(sections)
    symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
    if symtab is None:
        return (), (), ()
    if symtab.entsize not in (0, _SYM.size) or not 0 < symtab.link < shnum:
        raise ObjectFormatError(f"{rd.what}: malformed symbol table")
    map_sections = {i for i, n in enumerate(names) if n in (".maps", "maps")}
    syms = _contents(rd, symtab, "symbol table")
    strtab = _contents(rd, sections[symtab.link], "symbol name table")
    for off in range(0, len(syms) - _SYM.size + 1, _SYM.size):
        st_name, info, _other, shndx, value, size = _SYM.unpack_from(syms, off)
        kind, bind = info & 0xF, info >> 4
        if shndx == SHN_UNDEF or shndx >= min(shnum, SHN_LORESERVE) or bind == STB_LOCAL:
            continue
        if kind == STT_FUNC and sections[shndx].flags & SHF_EXECINSTR and names[shndx] != ".text":
            programs.append(
                (shndx, value, ObjectProgram(_cstr(strtab, st_name), names[shndx], size))
            )
        elif shndx in map_sections and kind in (STT_OBJECT, 0):
            maps.append((value, _cstr(strtab, st_name)))
        elif kind == STT_OBJECT and _is_data(names[shndx]):
            global_vars.append(GlobalVar(_cstr(strtab, st_name), names[shndx], value, size))
    return (
        tuple(p for _, _, p in sorted(programs, key=lambda t: (t[0], t[1]))),
        tuple(name for _, name in sorted(maps)),
        tuple(global_vars),
    )


def _strong_externs(rd: _Reader, sections: list[_Section]) -> tuple[str, ...]:
    """Undefined global (not weak) symbols other than __kconfig's CONFIG_*/LINUX_* ones."""
    symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
    if symtab is None or not 0 < symtab.link < len(sections):
        return ()
    syms = _contents(rd, symtab, "symbol table")
    strtab = _contents(rd, sections[symtab.link], "symbol name table")
    found = []
    for off in range(0, len(syms) - _SYM.size + 1, _SYM.size):
        st_name, info, _other, shndx, _value, _size = _SYM.unpack_from(syms, off)
        name = _cstr(strtab, st_name)
        kconfig = name.startswith(("CONFIG_", "LINUX_"))
        if shndx == SHN_UNDEF and info >> 4 == STB_GLOBAL and name and not kconfig:
            found.append(name)
    return tuple(sorted(set(found)))


def _decl_tags(
    rd: _Reader, sections: list[_Section], names: list[str]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The functions' decl tags from .BTF; none when it has none or is unreadable (libbpf
    then says what is wrong with it)."""
    if ".BTF" not in names:
        return ()
    try:
        tags = btf.func_decl_tags(_contents(rd, sections[names.index(".BTF")], ".BTF"))
    except btf.BtfError:
        return ()
    return tuple(sorted(tags.items()))


def _struct_ops(rd: _Reader, sections: list[_Section], names: list[str]) -> tuple[str, ...]:
    if ".BTF" not in names or not any(n.startswith(".struct_ops") for n in names):
        return ()
    try:
        return btf.struct_ops_types(_contents(rd, sections[names.index(".BTF")], ".BTF"))
    except btf.BtfError:
        return ()


def _slot_programs(rd: _Reader, sections: list[_Section], names: list[str]) -> tuple[str, ...]:
    """The programs the relocations of the .maps section point at: the static initializers
    of prog arrays (`.values = { [0] = &prog }`), in relocation order, each once."""
    symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
    if symtab is None or ".rel.maps" not in names:
        return ()
    rel = _contents(rd, sections[names.index(".rel.maps")], ".rel.maps")
    syms = _contents(rd, symtab, "symbol table")
    strtab = _contents(rd, sections[symtab.link], "symbol name table")
    found: list[str] = []
    for off in range(0, len(rel) - _REL.size + 1, _REL.size):
        _offset, info = _REL.unpack_from(rel, off)
        sym_off = (info >> 32) * _SYM.size
        if sym_off + _SYM.size > len(syms):
            raise ObjectFormatError(f"{rd.what}: a .rel.maps entry names no symbol")
        st_name, st_info, _other, shndx, _value, _size = _SYM.unpack_from(syms, sym_off)
        if st_info & 0xF == STT_FUNC and 0 < shndx < len(sections) and names[shndx] != ".text":
            found.append(_cstr(strtab, st_name))
    return tuple(dict.fromkeys(found))


def _section(rd: _Reader, shoff: int, index: int) -> _Section:
    name, typ, flags, _addr, offset, size, link, _info, _align, entsize = rd.unpack(
        _SHDR, shoff + index * _SHDR.size, f"section header {index}"
    )
    return _Section(name, typ, flags, offset, size, link, entsize)


def _contents(rd: _Reader, sec: _Section, item: str) -> bytes:
    if sec.type == SHT_NOBITS:
        return b""
    return rd.chunk(sec.offset, sec.size, item)


def read_object(path: Path) -> ObjectInfo:
    """Read a compiled BPF object; ValueError if it cannot be read or is not one (then
    ObjectFormatError)."""
    try:
        # O_NONBLOCK and the regular-file check: a FIFO or device named *.o must not hang
        # or stream forever (the flag does not change reads of a regular file)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_OBJECT_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_OBJECT_BYTES:
        raise ValueError(f"{path}: larger than {MAX_OBJECT_BYTES >> 20} MiB; not a BPF object?")
    return parse_object(data, str(path))


# --- C source scanning ---------------------------------------------------------------------

_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_PREPROCESSOR = re.compile(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", re.MULTILINE)
_ATTRIBUTE = re.compile(r"__attribute__\s*\(\((?:[^()]|\([^()]*\))*\)\)")
_SECTION_NAME = r'"(?P<sec>[^"\n]*)"'
_PROGRAM = re.compile(
    rf"\b(?:SEC|__section)\s*\(\s*{_SECTION_NAME}\s*\)"  # SEC("xdp")
    r"(?P<decl>[\w\s\*]*?)"  # return type and qualifiers
    r"\b(?P<name>[A-Za-z_]\w*)\s*\(\s*(?P<arg>[A-Za-z_]\w*)?"  # name( or BPF_PROG(name
)
_BTF_MAP = re.compile(r"\}\s*(?P<name>[A-Za-z_]\w*)\s+(?:SEC|__section)\s*\(\s*\"\.maps\"\s*\)")
_LEGACY_MAP = re.compile(
    r"\b(?:SEC|__section)\s*\(\s*\"maps\"\s*\)\s*(?P<name>[A-Za-z_]\w*)\s*="
    r"|\bstruct\s+bpf_map_def\s+(?:SEC|__section)\s*\(\s*\"maps\"\s*\)\s*(?P<name2>[A-Za-z_]\w*)"
)
_LICENSE = re.compile(r"(?:SEC|__section)\s*\(\s*\"license\"\s*\)\s*=\s*\"(?P<text>[^\"\n]*)\"")
_MACRO_NAME = re.compile(r"^BPF_[A-Z0-9_]+$")  # BPF_PROG(name, ...), BPF_KPROBE(name, ...)


def strip_c(text: str) -> str:
    """C text without comments and preprocessor lines (newlines kept for line numbers)."""

    def blank(m: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", m.group(0))

    return _ATTRIBUTE.sub(blank, _PREPROCESSOR.sub(blank, _COMMENTS.sub(blank, text)))


def scan_source_text(text: str, what: str = "<source>") -> ObjectInfo:
    code = strip_c(text)
    programs: list[ObjectProgram] = []
    for m in _PROGRAM.finditer(code):
        section, name = m.group("sec"), m.group("name")
        if section.startswith(".") or section in ("license", "maps", "version"):
            continue
        if _MACRO_NAME.match(name):
            if not m.group("arg"):
                continue
            name = m.group("arg")
        if "static" in m.group("decl").split():
            continue  # libbpf refuses static programs; the compiled object will say so
        programs.append(ObjectProgram(name, section))
    maps = [m.group("name") for m in _BTF_MAP.finditer(code)]
    maps += [m.group("name") or m.group("name2") for m in _LEGACY_MAP.finditer(code)]
    lic = _LICENSE.search(code)
    return ObjectInfo(
        source=Path(what),
        programs=tuple(programs),
        maps=tuple(maps),
        license=lic.group("text") if lic else None,
        sections=tuple(dict.fromkeys(p.section for p in programs)),
        compiled=False,
    )


def scan_source(path: Path) -> ObjectInfo:
    """Programs and maps of a C file, found with regular expressions; ValueError if unreadable."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_SOURCE_BYTES >> 20} MiB")
    return scan_source_text(data.decode("utf-8", errors="replace"), str(path))
