"""The scenario language's shape: the `Spec` of every key of a scenario file.

harness.scenario.spec checks YAML against these and turns them into the JSON Schema of
`kitl schema` (`json_schema()`); harness.scenario.loader does the checks a shape cannot
express (references, files, program types).  The shape of `expect:` is
harness.scenario.expect's.
"""

from __future__ import annotations

import re
from typing import Any

from harness.bpf import progtypes
from harness.scenario.expect import (
    ATTACH_TARGET,
    EXPECT,
    MAP_NAME,
    MAP_SIZES,
    MAP_VALUE,
    PIN_ROOT,
    PRIVILEGES,
)
from harness.scenario.spec import Bool, Either, Hex, Int, Map, Seq, Str, obj, to_schema

# --- the language ----------------------------------------------------------------------------

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NAME_RULE = "lower-case letters, digits and ._- (first a letter or digit), at most 64"
IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
IFNAME_RULE = "letters, digits and _.- (first a letter or digit), at most 15 (IFNAMSIZ)"
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
CGROUP = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}){0,7}$")
MAX_COUNT = 1_000_000
MAX_REPEAT = 10_000_000
MAX_PACKET = 65_535
LOG_LEVEL_MASK = 15  # BPF_LOG_LEVEL1 | BPF_LOG_LEVEL2 | BPF_LOG_STATS | BPF_LOG_FIXED

_NAME = Str(NAME, NAME_RULE, name=True)
_DEV = Str(IFNAME, IFNAME_RULE, doc="a device of the topology (or lo)", name=True)
_NS = Str(NAME, NAME_RULE, doc="a netns of the topology; omitted: the root namespace", name=True)
_DIRECTION = Str(choices=("ingress", "egress"))
_PORT = Int(1, 65535)
_U32, _U64 = Int(0, 2**32 - 1), Int(0, 2**64 - 1)
_ENDPOINT = Str(
    re.compile(r"^[^@/]+(@[^@/]+)?(/[0-9A-Fa-f.:]+/\d{1,3})?$"),
    'IFNAME[@NETNS][/ADDRESS/PREFIX], e.g. "v1@b/10.0.0.2/24"',
)
_ARGV = Seq(
    Str(),
    1,
    256,
    hint='an argv list, never a shell string: [ping, -c, "1", 10.0.0.2]; '
    'for a shell, [sh, -c, "..."]',
)
_PATH = Str(re.compile(r"^/[^\0\n]{0,4095}$"), "an absolute path in the guest")
_TC = obj({"dev": _DEV, "ns": _NS, "direction": _DIRECTION}, required=("dev",))
_L3 = {"src": Str(doc="source address"), "dst": Str(doc="destination address")}
_MAC = Str(re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"), "a MAC like 02:00:00:00:00:01")
TCP_FLAG_NAMES = ("fin", "syn", "rst", "psh", "ack", "urg")  # harness.bpf.packet.TCP_FLAGS
PACKET = obj(
    {
        "eth": obj({"src": _MAC, "dst": _MAC, "type": Int(0, 0xFFFF, doc="ethertype")}),
        "ipv4": obj({**_L3, "ttl": Int(1, 255)}, null_ok=True),
        "ipv6": obj({**_L3, "hop_limit": Int(1, 255)}, null_ok=True),
        "udp": obj({"sport": _PORT, "dport": _PORT}, null_ok=True),
        "tcp": obj(
            {
                "sport": _PORT,
                "dport": _PORT,
                "flags": Seq(Str(choices=TCP_FLAG_NAMES), max_items=6, single_ok=True),
                "seq": _U32,
                "ack": _U32,
                "window": Int(0, 0xFFFF),
            },
            null_ok=True,
        ),
        "icmp": obj({"type": Int(0, 255), "code": Int(0, 255)}, null_ok=True),
        "payload_size": Int(0, 9000),
    },
    doc="a packet harness.bpf.packet builds: Ethernet, optionally IPv4/IPv6, UDP/TCP/ICMP, payload",
)
CTX = obj(
    {
        **{f: _U32 for f in ("ingress_ifindex", "rx_queue_index", "mark", "priority", "ifindex")},
        **{f: _U32 for f in ("wire_len", "gso_segs", "gso_size")},
        "tstamp": _U64,
        "hwtstamp": _U64,
        "cb": Seq(_U32, 1, 5),
    },
    doc="struct xdp_md or struct __sk_buff fields test_run accepts",
)
ATTACH = obj(
    {
        "xdp": obj(
            {"dev": _DEV, "ns": _NS, "mode": Str(choices=("skb", "drv", "hw"))}, required=("dev",)
        ),
        "tc": _TC,
        "tcx": _TC,
        "cgroup": obj(
            {
                "path": Str(CGROUP, "a relative path of safe names", name=True),
                "direction": _DIRECTION,
            },
            null_ok=True,
        ),
        "auto": obj({}, null_ok=True, doc="attach as libbpf does from SEC()"),
        "socket": obj({"ns": _NS}, null_ok=True),
    },
    one_of=True,
)
DRIVE = obj(
    {
        "test_run": obj(
            {
                "packet": PACKET,
                "hex": Hex(MAX_PACKET),
                "ctx": CTX,
                "ctx_hex": Hex(4096),
                "repeat": Int(1, MAX_REPEAT),
                "ingress_dev": _DEV,
            }
        ),
        "traffic": obj(
            {
                "from": _NS,
                "to": Str(doc="destination address: an endpoint of the topology"),
                "proto": Str(choices=("udp", "tcp", "icmp")),
                "port": _PORT,
                "count": Int(1, MAX_COUNT),
                "size": Int(0, 9000, doc="payload bytes per packet"),
            },
            required=("to", "proto"),
        ),
        "syscall": obj(
            {
                "run": _ARGV,
                "execve": _ARGV,
                "open": Either(
                    (
                        _PATH,
                        obj(
                            {
                                "path": _PATH,
                                "mode": Str(choices=("read", "write")),
                                "create": Bool(doc="O_CREAT"),
                            },
                            required=("path",),
                        ),
                    ),
                    doc="open(2) then close: a path, or {path, mode: read|write, create}",
                ),
                "unlink": _PATH,
                "connect": obj(
                    {
                        "to": Str(doc="an IPv4 address"),
                        "port": _PORT,
                        "proto": Str(choices=("tcp", "udp")),
                    },
                    required=("to", "port"),
                    doc="connect(2) from a new socket; 2 s timeout (ETIMEDOUT)",
                ),
                "ns": _NS,
            },
            doc="one action: run (a command; exit_status) or a built-in done by the agent "
            "itself (open, unlink, connect, execve; errno)",
        ),
    },
    one_of=True,
)
LOADER = obj(
    {
        "command": _ARGV,
        "timeout": Int(1, 3600, doc="seconds before its process group is killed (default 60)"),
        "run_for": Int(
            1, 3600, doc="seconds, then SIGINT (Ctrl-C): for a loader that runs until stopped"
        ),
        "env": Map(
            Str(re.compile(r"^[^\0]{0,4096}$"), "a value without NUL"),
            Str(re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"), "environment variable names"),
            doc="added to the guest's environment",
        ),
    },
    required=("command",),
    doc="the user's own loader, run in the guest: [PROGRAM, ARGS...]; a path is relative "
    "to the scenario, {object:NAME} the path of an object's build in the guest",
)
_IDENTS = Seq(Str(IDENT, "C identifiers"))
OVERRIDE = obj(
    {
        "when": obj(
            {
                "kernel": Str(doc='a kernel version range, e.g. "<5.17", ">=5.10,<6.1"'),
                "config": Seq(_NAME, 1, single_ok=True, doc="config names (any of them)"),
                "libbpf": Str(doc='a range of the loading libbpf\'s version, e.g. "<1.3"'),
                "btf": Bool(doc="the kernel has BTF (/sys/kernel/btf/vmlinux) or not"),
            }
        ),
        "expect": EXPECT,
    },
    required=("when", "expect"),
)
CASE = obj(
    {
        "name": _NAME,
        "description": Str(),
        "program": Str(
            re.compile(r"^[^/]+/[A-Za-z_][A-Za-z0-9_]*$"), "OBJECT/FUNCTION, e.g. xdp/xdp_drop_udp"
        ),
        "loader": LOADER,
        "requires": obj(
            {
                "helpers": _IDENTS,
                "prog_types": Seq(Str(choices=tuple(progtypes.PROG_TYPES))),
                "map_types": Seq(Str(choices=tuple(progtypes.MAP_TYPES))),
                "kfuncs": _IDENTS,
                "btf": Bool(doc="the kernel has BTF (/sys/kernel/btf/vmlinux)"),
                "attach_types": Seq(
                    Str(re.compile(r"^[a-z0-9_]{1,64}$"), "libbpf attach type names"),
                    doc="e.g. tcx_ingress: the kernel's enum bpf_attach_type must have them",
                ),
                "libbpf": Str(doc='a range of the loading libbpf\'s version, e.g. ">=1.3"'),
            }
        ),
        "load": obj(
            {
                "log_level": Int(0, LOG_LEVEL_MASK, doc="default 5 (level 1 + stats)"),
                "log_size": Int(128, (2**32 - 1) >> 2),
                "flags": Seq(Str(choices=tuple(progtypes.PROG_LOAD_FLAGS)), max_items=16),
                "btf_custom_path": Str(doc="a BTF file, relative to the scenario"),
                "btf": Str(
                    choices=("external",),
                    doc="external: on a kernel without BTF, the BTF kitl generated for it "
                    "with pahole (kernels kitl builds), as btf_custom_path",
                ),
                "globals": Map(
                    Int(-(2**63), 2**64 - 1),
                    Str(IDENT, "C identifiers"),
                    doc="initial values of global variables (.data/.rodata/.bss), set before "
                    "the load, like veristat -G",
                ),
                "maps": MAP_SIZES,
                "fixups": Bool(doc="veristat's: maps with max_entries 0 get 1 (default true)"),
                "pinning": Str(choices=("on", "off"), doc="off: pin no map (default on)"),
                "pin_root": PIN_ROOT,
                "attach_target": ATTACH_TARGET,
                "privilege": Str(
                    choices=PRIVILEGES,
                    doc="privileged (default); bpf: CAP_BPF+CAP_PERFMON; bpf-net: and "
                    "CAP_NET_ADMIN; unprivileged: none of them",
                ),
                "companions": Seq(
                    Str(re.compile(r"^(\*|[A-Za-z_][A-Za-z0-9_]*)$"), "program names or *"),
                    1,
                    256,
                    unique=True,
                    doc="programs of the object loaded with it (* for all, as a skeleton "
                    "does); default: those its prog arrays name statically",
                ),
            }
        ),
        "setup": obj(
            {
                "maps": Map(
                    Seq(
                        obj({"key": MAP_VALUE, "value": MAP_VALUE}, required=("key", "value")),
                        1,
                        4096,
                    ),
                    Str(MAP_NAME, "a map name"),
                    doc="map contents written after the load, before attach and drive; "
                    "integers are little-endian at the map's size",
                ),
                "tail_calls": Map(
                    Map(Str(IDENT, "program names"), Str(re.compile(r"^\d{1,6}$"), "slots")),
                    Str(MAP_NAME, "a prog array"),
                    doc="prog array slots filled by program name after the load, as user "
                    "space does: {jmp_table: {0: stage_one}}; those programs load with it",
                ),
            }
        ),
        "attach": ATTACH,
        "drive": DRIVE,
        "expect": EXPECT,
        "overrides": Seq(OVERRIDE, 1, 64),
    },
    required=("name", "expect"),  # and program: or loader: (harness.scenario.cases)
)
NAME_SPEC = _NAME
DEV_SPEC = _DEV
CONFIG = obj(
    {
        "sysctl": Map(
            Either((Int(-(2**63), 2**64 - 1), Str(re.compile(r"^[^\n]{0,256}$")))),
            Str(
                re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+){1,8}$"),
                "a sysctl like net.ipv4.ip_forward",
            ),
        )
    },
    null_ok=True,
)
OBJECT = obj(
    {
        "source": Str(doc="a C file kitl compiles, relative to the scenario"),
        "path": Str(doc="a compiled .o, relative to the scenario"),
        "cflags": Seq(
            Str(re.compile(r"^-[^\0\n]{1,255}$"), "options starting with -"), max_items=64
        ),
    }
)
VETH = obj({"a": _ENDPOINT, "b": _ENDPOINT}, required=("a", "b"))
NETDEVSIM = obj({"id": Int(0, 1023), "ports": Int(1, 16), "ns": _NS}, required=("id",))
SCENARIO = obj(
    {
        "name": _NAME,
        "description": Str(),
        "kernels": Seq(
            Str(re.compile(r"^(path:[^\0\n]{1,4000}|[A-Za-z0-9][A-Za-z0-9._+-]{0,127})$")),
            1,
            unique=True,
            hint="omit kernels: for the catalog's defaults",
        ),
        "configs": Map(CONFIG, _NAME, 1, 64),
        "libbpf": Seq(
            Str(re.compile(r"^[^\0\n]{1,4000}$")),
            1,
            16,
            unique=True,
            doc="the loaders: default, system, debian-X or a libbpf.so relative to the scenario",
        ),
        "objects": Map(OBJECT, _NAME, 1, 64),
        "topology": obj(
            {
                "netns": Seq(_NAME, 1, 64, unique=True),
                "veth": Seq(VETH, 1, 256),
                "netdevsim": Seq(NETDEVSIM, 1, 64),
            }
        ),
        "cases": Seq(CASE, 1, 10_000),
    },
    required=("name", "cases"),  # objects: unless every case is a loader's
)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a scenario file, for `kitl schema` and editors.
    Checks that need the files (programs, sections, maps) are only in kitl's own checker."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kitl.invalid/schema/scenario.json",
        "title": "kitl scenario",
        **to_schema(SCENARIO),
    }
