"""The decl tags and struct_ops types of a BPF object's BTF, read without libbpf (pure,
no I/O).

`btf_decl_tag("...")` attributes on functions end up in the object's .BTF section as
BTF_KIND_DECL_TAG records pointing at the FUNC record of the function.  The kernel's BPF
selftests (and projects that copy their bpf_misc.h) write their test expectations this way
(`__success`, `__msg("...")`...): harness.annotations reads them from what this module
returns.  Layout: include/uapi/linux/btf.h (struct btf_header, struct btf_type and the
per-kind records that follow it).

A struct_ops map is a variable of a `.struct_ops` (or `.struct_ops.link`) data section
whose type is the kernel's struct it implements (`struct tcp_congestion_ops`): libbpf
fails the object's load on a kernel whose BTF lacks that struct.
"""

from __future__ import annotations

import struct

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off+len
_TYPE = struct.Struct("<III")  # name_off, info, size_or_type
KIND_STRUCT, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST = 4, 8, 9, 10
KIND_FUNC, KIND_VAR, KIND_DATASEC, KIND_DECL_TAG = 12, 14, 15, 17
# bytes each kind carries after its struct btf_type: fixed, and per vlen item
_EXTRA: dict[int, tuple[int, int]] = {
    1: (4, 0),  # INT
    2: (0, 0),  # PTR
    3: (12, 0),  # ARRAY
    4: (0, 12),  # STRUCT
    5: (0, 12),  # UNION
    6: (0, 8),  # ENUM
    7: (0, 0),  # FWD
    8: (0, 0),  # TYPEDEF
    9: (0, 0),  # VOLATILE
    10: (0, 0),  # CONST
    11: (0, 0),  # RESTRICT
    12: (0, 0),  # FUNC
    13: (0, 8),  # FUNC_PROTO
    14: (4, 0),  # VAR
    15: (0, 12),  # DATASEC
    16: (0, 0),  # FLOAT
    17: (4, 0),  # DECL_TAG (component_idx)
    18: (0, 0),  # TYPE_TAG
    19: (0, 12),  # ENUM64
}


class BtfError(ValueError):
    """The .BTF section is not one this reader understands."""


def func_decl_tags(btf: bytes) -> dict[str, tuple[str, ...]]:
    """Function name -> the decl tags on the function itself (not its arguments), in the
    order the compiler emitted them."""
    types, strings = _split(btf)
    funcs: dict[int, str] = {}
    tags: list[tuple[int, str]] = []
    for type_id, kind, name_off, target, extra in _records(types):
        if kind == KIND_FUNC:
            funcs[type_id] = _string(strings, name_off)
        elif kind == KIND_DECL_TAG and struct.unpack_from("<i", extra)[0] == -1:
            tags.append((target, _string(strings, name_off)))
    out: dict[str, list[str]] = {}
    for target, tag in tags:
        if target in funcs:
            out.setdefault(funcs[target], []).append(tag)
    return {name: tuple(values) for name, values in out.items()}


def struct_ops_types(btf: bytes) -> tuple[str, ...]:
    """The kernel structs the object's struct_ops maps implement, each once."""
    types, strings = _split(btf)
    records = {r[0]: r for r in _records(types)}
    found: list[str] = []
    for _, kind, name_off, _, extra in records.values():
        if kind != KIND_DATASEC or not _string(strings, name_off).startswith(".struct_ops"):
            continue
        for (var_id,) in struct.iter_unpack("<I8x", extra):
            var = records.get(var_id)
            if var is None or var[1] != KIND_VAR:
                continue
            type_id = var[3]
            while type_id in records and records[type_id][1] in _MODIFIERS:
                type_id = records[type_id][3]
            if type_id in records and records[type_id][1] == KIND_STRUCT:
                found.append(_string(strings, records[type_id][2]))
    return tuple(dict.fromkeys(found))


_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST)


def _split(btf: bytes) -> tuple[bytes, bytes]:
    """The type and string sections of a .BTF section."""
    if len(btf) < _HEADER.size:
        raise BtfError("truncated BTF header")
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(
        btf
    )
    if magic != BTF_MAGIC:
        raise BtfError(f"bad BTF magic {magic:#x}")
    types = btf[hdr_len + type_off : hdr_len + type_off + type_len]
    strings = btf[hdr_len + str_off : hdr_len + str_off + str_len]
    if len(types) != type_len or len(strings) != str_len:
        raise BtfError("BTF sections run past the data")
    return types, strings


def _records(types: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """(type id, kind, name_off, size_or_type, the kind's extra bytes) of every type."""
    out = []
    pos, type_id = 0, 1
    while pos < len(types):
        if pos + _TYPE.size > len(types):
            raise BtfError(f"truncated type {type_id}")
        name_off, info, target = _TYPE.unpack_from(types, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind not in _EXTRA:
            raise BtfError(f"type {type_id}: unknown BTF kind {kind}")
        fixed, per_item = _EXTRA[kind]
        size = fixed + per_item * vlen
        start = pos + _TYPE.size
        if start + size > len(types):
            raise BtfError(f"truncated type {type_id}")
        out.append((type_id, kind, name_off, target, types[start : start + size]))
        pos, type_id = start + size, type_id + 1
    return out


def _string(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    return strings[offset : end if end >= 0 else None].decode("utf-8", "replace")
