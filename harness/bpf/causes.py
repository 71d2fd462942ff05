"""The real cause of a failed load, in one line in the user's terms (pure, no I/O).

harness.bpf.verifier_log.classify_failure() decides the class; this module says what happened:
the map that could not be created (its name, type and why), the tracing target that is
missing, the pinning that failed, the helper an unknown id stands for.  The same cause reads
the same on every kernel, whatever words the kernel or libbpf use for it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.bpf.helper_names import helper_arrival, helper_name
from harness.bpf.verifier_log import (
    CORE_POISON_ID,
    classify_failure,
    log_from_libbpf_messages,
    map_unsized,
    missing_target,
    parse_log,
    pin_problem,
)

MESSAGE_MAX = 300
_UNKNOWN_HELPER = re.compile(r"\bunknown#(\d+)\b")
# libbpf's own words for a map it could not create, as the fallback message
_MAP_LINE = re.compile(r"map '[^']*': failed to create[^\n]*")
_LIBBPF_WARN = re.compile(r"^(?:warn: )?libbpf: (.+)$", re.M)
# libbpf's wrappers around the real message, which say only that something failed
_GENERIC = re.compile(
    r"^(?:failed to load object|prog '[^']*': failed to load: -?\d+$"
    r"|prog '[^']*': failed to prepare load attributes|failed to load program)"
)


@dataclass(frozen=True)
class Cause:
    error_class: str
    message: str  # one line: what failed and why


def explain(load: Mapping[str, Any]) -> Cause:
    """The class and the message of a load that failed (`load` as the guest reported it)."""
    companion = load.get("failed_program")
    if companion:  # the program never reached the kernel: another of the load failed first
        printed = log_from_libbpf_messages(str(load.get("libbpf_messages", ""))) or ""
        inner = explain({**load, "failed_program": "", "log": printed, "program": companion})
        return Cause(
            "LOAD_FAILED",
            _one_line(
                f"the load failed at program '{companion}', loaded with it: "
                f"{inner.error_class}: {inner.message}"
            ),
        )
    log = parse_log(str(load.get("log", "")), truncated=bool(load.get("log_truncated")))
    messages = str(load.get("libbpf_messages", ""))
    failed_map = load.get("failed_map")
    privilege = str(load.get("privilege") or ("unprivileged" if load.get("unprivileged") else ""))
    lowered = privilege not in ("", "privileged")
    error_class = classify_failure(
        log,
        int(load.get("errno", 0)),
        messages,
        failed_map=failed_map if isinstance(failed_map, Mapping) else None,
        lowered=lowered,
    )
    text = log.error or _last_warning(messages)
    if error_class == "PIN_FAILED":
        text = f"pinning failed: {pin_problem(messages)}"
    elif isinstance(failed_map, Mapping) and error_class in _MAP_CLASSES:
        text = _map_message(failed_map, error_class, messages, privilege)
    elif error_class == "ATTACH_TARGET_MISSING":
        text = _target_message(str(load.get("program", "")), messages + "\n" + (log.error or ""))
    elif error_class == "UNSUPPORTED_HELPER":
        text = _name_helpers(text)
    return Cause(error_class, _one_line(text))


_MAP_CLASSES = ("UNSUPPORTED_MAP_TYPE", "MAP_CREATE_FAILED", "PERMISSION")


def _map_message(m: Mapping[str, Any], error_class: str, messages: str, privilege: str) -> str:
    name, kind = m.get("name"), m.get("type_name") or f"type {m.get('type')}"
    if error_class == "UNSUPPORTED_MAP_TYPE":
        return f"map '{name}': this kernel has no {kind} maps"
    if map_unsized(m):
        return (
            f"map '{name}' ({kind}) is not sized: max_entries {m.get('max_entries')}, "
            f"value_size {m.get('value_size')}; its loader sizes it at run time "
            f"(--map {name}:max_entries=N, or keep veristat's fixups on)"
        )
    libbpf = _MAP_LINE.search(messages)
    why = libbpf.group(0).split(": ", 1)[-1] if libbpf else "failed to create"
    if error_class == "PERMISSION":
        who = {
            "unprivileged": "an unprivileged loader",
            "bpf": "a loader with CAP_BPF and CAP_PERFMON only",
            "bpf-net": "a loader without CAP_SYS_ADMIN",
        }.get(privilege, "this loader")
        return f"map '{name}' ({kind}) cannot be created by {who}: {why}"
    shape = (
        f"{kind}, key {m.get('key_size')} B, value {m.get('value_size')} B, "
        f"max_entries {m.get('max_entries')}"
    )
    return f"map '{name}' ({shape}): {why}"


def _target_message(program: str, text: str) -> str:
    target = missing_target(text) or "?"
    where = "has it in BTF but not its address" if "address of function" in text else "lacks it"
    return (
        f"attach target '{target}' of {program or 'the program'}: this kernel {where} "
        f"(if user space sets the target at load time: --attach-target {program}=FUNCTION)"
    )


def _name_helpers(text: str) -> str:
    """`invalid func unknown#158` -> `... (bpf_get_current_task_btf, helper 158, which
    this kernel lacks; it came after 5.10, by 6.1)`: the verifier prints ids it has no name
    for; when the helper came is what the uapi headers of the kernels kitl boots tell."""
    for m in _UNKNOWN_HELPER.finditer(text):
        helper_id = int(m.group(1))
        name = helper_name(helper_id) if helper_id != CORE_POISON_ID else None
        if name is not None:
            arrival = helper_arrival(helper_id)
            came = f"; it came {arrival}" if arrival else ""
            return f"{text} ({name}, helper {helper_id}, which this kernel lacks{came})"
    return text


def _last_warning(messages: str) -> str:
    """libbpf's last warning: the closest it gets to a reason when the kernel gave none."""
    lines = [m.group(1) for m in _LIBBPF_WARN.finditer(messages)]
    useful = [ln for ln in lines if not _GENERIC.match(ln)]
    return (useful or lines or [messages.strip()])[-1]


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MESSAGE_MAX else line[: MESSAGE_MAX - 3] + "..."
