"""`kitl verify`'s own options, each declared once, and the values they carry.

`OPTIONS` is the table: one row per option, with its command-line flag (`--map`), its
pytest flag (`--kitl-map`), its dest, kind, metavar, default, help and the parser that
turns what was typed into its `VerifyOptions` field.  From it come the argparse arguments
of `kitl verify` (`add_cli_arguments`), the `--kitl-*` options of the pytest plugin
(`add_pytest_options`), the pytest command line that carries the values from one to the
other (`pytest_argv`) and the `VerifyOptions` both ends build from them (`build`), so the
two cannot drift.  Every value is parsed and checked here, before anything boots.

The options `kitl verify` shares with `kitl run` (kernels, loaders, shard, output, accel,
boot timeout, resume, -n) are rows of the same `Option` in harness.run.options (`MATRIX`),
which the functions here take as their `table`.
"""

from __future__ import annotations

import argparse
import enum
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypedDict, cast

from harness.bpf import progtypes
from harness.errors import UsageError
from harness.scenario import filters
from harness.scenario.expect import MAP_NAME, PRIVILEGES
from harness.scenario.model import RunConfig
from harness.scenario.shape import LOG_LEVEL_MASK

PRIVILEGED = "privileged"  # every capability; other profiles (harness.guest.caps) suffix the case
UNPRIVILEGED = "unprivileged"
_CONFIG = re.compile(r"^([a-z0-9][a-z0-9._-]{0,63}):(.+)$")


@dataclass(frozen=True)
class VerifyOptions:
    programs: tuple[str, ...] = ()  # fnmatch globs on program names; empty: all
    filters: tuple[tuple[filters.NameFilter, ...], ...] = ()  # --filter's, each value's
    log_level: int | None = None  # None: statistics, and the log of a failure (1|4)
    log_size: int | None = None
    flags: tuple[str, ...] = ()  # names from progtypes.PROG_LOAD_FLAGS
    btf_custom_path: Path | None = None
    privileges: tuple[str, ...] = (PRIVILEGED,)  # profiles of scenario_expect.PRIVILEGES
    test_run: bool = False
    test_run_input: bytes | None = None  # packet (packet types) or context; None: a default
    configs: tuple[RunConfig, ...] = (RunConfig("default"),)
    globals: tuple[tuple[str, int], ...] = ()  # veristat's -G "name = value"
    # what a real loader sets before the load (harness.guest.libbpf_prepare)
    maps: tuple[tuple[str, int | None, int | None], ...] = ()  # (map, max_entries, value_size)
    attach_targets: tuple[tuple[str, str], ...] = ()  # (program, target function)
    fixups: bool = True
    pinning: bool = True
    pin_root: str | None = None
    whole_object: bool = False  # every program of the object in each load, as a skeleton
    map_values: tuple[MapValue, ...] = ()  # written after the load, before test_run
    annotations: bool = False  # the selftests' test_loader annotations are the expectations
    tail_calls: tuple[tuple[str, int, str], ...] = ()  # (prog array, slot, program) to fill


# --- the values' parsers ------------------------------------------------------------------


def check_log_level(level: int | None) -> int | None:
    """A verifier log level the kernel takes: a sum of 1 (the log), 2 (verbose), 4
    (statistics) and 8 (BPF_LOG_FIXED, 6.4 and later); checked before anything boots.
    None (not given) is kitl's default: statistics, and the log of a failure."""
    if level is not None and not 0 <= level <= LOG_LEVEL_MASK:
        raise UsageError(
            f"--log-level {level}: not a verifier log level",
            hint="0 to 15, a sum of 1 (log), 2 (verbose), 4 (statistics), 8 (fixed size)",
        )
    return level


def parse_privileges(text: str) -> tuple[str, ...]:
    """A comma-separated list of privilege profiles; "both" is privileged,unprivileged."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    out: list[str] = []
    for name in names:
        expanded = [PRIVILEGED, UNPRIVILEGED] if name == "both" else [name]
        for profile in expanded:
            if profile not in PRIVILEGES:
                raise UsageError(
                    f"--privilege {name!r}: not a privilege profile",
                    hint=f"profiles: {', '.join(PRIVILEGES)}, or both",
                )
            out.append(profile)
    if not out:
        raise UsageError("--privilege: no profile given")
    return tuple(dict.fromkeys(out))


def parse_flags(text: str) -> tuple[str, ...]:
    names = tuple(f.strip() for f in text.split(",") if f.strip())
    for name in names:
        if name not in progtypes.PROG_LOAD_FLAGS:
            known = ", ".join(progtypes.PROG_LOAD_FLAGS)
            raise UsageError(f"unknown program load flag {name!r}", hint=f"flags: {known}")
    return names


def parse_config(text: str) -> RunConfig:
    """NAME:KEY=VALUE[,KEY=VALUE]: a config of sysctls, e.g.
    interp:net.core.bpf_jit_enable=0."""
    m = _CONFIG.match(text)
    pairs = [p.split("=", 1) for p in m.group(2).split(",")] if m else []
    if not m or any(len(p) != 2 or not p[0].strip() for p in pairs):
        raise UsageError(
            f"--config {text!r}: expected NAME:SYSCTL=VALUE[,SYSCTL=VALUE]",
            hint="e.g. interp:net.core.bpf_jit_enable=0",
        )
    return RunConfig(m.group(1), tuple((k.strip(), v.strip()) for k, v in pairs))


def parse_hex(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        data = bytes.fromhex(re.sub(r"[\s:]", "", text))
    except ValueError:
        raise UsageError(f"--test-run-input: {text[:40]!r} is not hex bytes") from None
    if not data:
        raise UsageError("--test-run-input: no bytes")
    return data


def parse_global(text: str) -> tuple[str, int]:
    """NAME=VALUE (veristat's -G "name = value"): an integer, 0x hex, true or false."""
    name, _, value = text.partition("=")
    name, value = name.strip(), value.strip().lower()
    number = {"true": 1, "false": 0}.get(value)
    if number is None:
        try:
            number = int(value, 0)
        except ValueError:
            number = None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or number is None:
        raise UsageError(f"--global {text!r}: expected NAME=VALUE, e.g. max_entries=64")
    return name, number


_MAP_SIZE_KEYS = ("max_entries", "value_size")


def parse_map(text: str) -> tuple[str, int | None, int | None]:
    """NAME:max_entries=N[,value_size=N]: a map's size as its loader sets it."""
    name, _, spec = text.partition(":")
    sizes: dict[str, int] = {}
    for item in spec.split(",") if spec else []:
        key, _, value = item.partition("=")
        if key.strip() not in _MAP_SIZE_KEYS or not value.strip().isdigit():
            sizes = {}
            break
        sizes[key.strip()] = int(value.strip())
    if not MAP_NAME.match(name) or not sizes or not all(0 < v < 2**32 for v in sizes.values()):
        raise UsageError(
            f"--map {text!r}: expected NAME:max_entries=N[,value_size=N]",
            hint="e.g. --map counts:max_entries=10240 (sizes from 1 to 2^32-1)",
        )
    return name, sizes.get("max_entries"), sizes.get("value_size")


class MapValue(NamedTuple):
    """--map-set's entry: written into `map` of the objects whose file name matches
    `object` (an fnmatch glob) after the load, before test_run."""

    map: str
    key: int | bytes
    value: int | bytes
    object: str = "*"

    def applies_to(self, obj: Path) -> bool:
        return fnmatch.fnmatchcase(obj.name, self.object)


def parse_map_value(text: str) -> MapValue:
    """[OBJECT/]NAME:KEY=VALUE: an entry written into a map after the load (before
    test_run).  KEY and VALUE are integers (little-endian at the map's sizes) or
    hex:BYTES; OBJECT, a glob on the object's file name, keeps it to those objects (the
    selftests fill `map_array_48b` of one object, and five others have one too)."""
    target, _, entry = text.partition(":")
    glob, _, name = target.rpartition("/")
    key, _, value = entry.partition("=")
    try:
        parsed = (_map_datum(key), _map_datum(value))
    except ValueError:
        parsed = None
    if not MAP_NAME.match(name) or parsed is None or (not glob and "/" in target):
        raise UsageError(
            f"--map-set {text!r}: expected [OBJECT/]NAME:KEY=VALUE",
            hint="integers (42, 0x2a, -1) or hex:BYTES, e.g. --map-set config:0=hex:0a000001",
        )
    return MapValue(name, parsed[0], parsed[1], glob or "*")


def _map_datum(text: str) -> int | bytes:
    text = text.strip()
    if text.startswith("hex:"):
        data = bytes.fromhex(text[4:])
        if not data:
            raise ValueError("no bytes")
        return data
    return int(text, 0)


def parse_tail_call(text: str) -> tuple[str, int, str]:
    """MAP:SLOT=PROGRAM: a prog array slot user space fills with a program of the object."""
    m = re.fullmatch(r"([A-Za-z_.][A-Za-z0-9_.]*):(\d{1,6})=([A-Za-z_][A-Za-z0-9_]*)", text)
    if m is None:
        raise UsageError(
            f"--tail-call {text!r}: expected PROG_ARRAY:SLOT=PROGRAM",
            hint="e.g. --tail-call jmp_table:0=stage_one",
        )
    return m.group(1), int(m.group(2)), m.group(3)


def parse_attach_target(text: str) -> tuple[str, str]:
    """PROG=FUNC: the target user space gives a tracing program before the load."""
    prog, _, target = text.partition("=")
    ident = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
    if not ident.fullmatch(prog.strip()) or not ident.fullmatch(target.strip()):
        raise UsageError(
            f"--attach-target {text!r}: expected PROGRAM=FUNCTION",
            hint="e.g. --attach-target dummy_file_read=vfs_read",
        )
    return prog.strip(), target.strip()


def check_pin_root(text: str | None) -> str | None:
    if text is not None and not re.fullmatch(r"/sys/fs/bpf(/[A-Za-z0-9._-]+)*", text):
        raise UsageError(f"--pin-root {text!r}: not a directory under /sys/fs/bpf")
    return text


def _resolved(path: Path | None) -> Path | None:
    return path.resolve() if path else None


def _same(value: Any) -> Any:
    return value


# --- the table ---------------------------------------------------------------------------------


class Kind(enum.Enum):
    """How an option is typed, held and handed to pytest."""

    VALUE = "value"  # --x V; passed on when it has a value (not None, not "")
    LIST = "list"  # --x V, repeatable: a list; one --kitl-x V per value
    JOINED = "joined"  # repeatable here; one comma-joined --kitl-x A,B for pytest (--prog)
    SWITCH = "switch"  # --x: True when given
    NEGATIVE = "negative"  # --no-x: dest False when given; pytest's --kitl-no-x is a store_true


class ArgKwargs(TypedDict, total=False):
    """The keywords of argparse's add_argument (and pytest's addoption) an option uses."""

    dest: str
    action: str
    type: Callable[[str], Any]
    default: Any  # the option's value, of the type its parser takes
    choices: tuple[str, ...]
    metavar: str
    help: str


@dataclass(frozen=True)
class Option:
    """One option of `kitl verify` (or of both fronts: harness.run.options), on the command
    line and as the pytest plugin takes it."""

    flag: str  # "--map"
    dest: str  # argparse's dest: the name every getter below takes
    kind: Kind
    help: str | None = None
    metavar: str | None = None
    default: Any = None  # of a VALUE (lists start empty, switches off, negatives on)
    type: Callable[[str], Any] | None = None  # int, or Path: handed to pytest resolved
    parse: Callable[[Any], Any] = _same  # the field's value (of each item of a list)
    field: str | None = ""  # the VerifyOptions field: "" the dest's name, None no field
    pytest_name: str = ""  # "" for "--kitl-" + the flag's name
    choices: tuple[str, ...] | None = None
    # a JOINED option's comma-list twin on the command line (--kernels A,B beside --kernel)
    plural: str | None = None
    plural_metavar: str = "A,B"
    # the pytest side, where it is not the command line's: its keywords (None: pytest has
    # no such option of the plugin's, -n is xdist's), and the arguments that carry a value
    pytest_options: ArgKwargs | Literal["same"] | None = "same"
    to_argv: Callable[[Any], list[str]] | None = None

    @property
    def pytest_flag(self) -> str:
        return self.pytest_name or "--kitl-" + self.flag.removeprefix("--")

    @property
    def pytest_dest(self) -> str:
        return self.pytest_flag.removeprefix("--").replace("-", "_")

    @property
    def field_name(self) -> str | None:
        return self.dest if self.field == "" else self.field

    @property
    def repeated(self) -> bool:
        return self.kind in (Kind.LIST, Kind.JOINED)

    @property
    def always_given(self) -> bool:
        """A value with a default: on every pytest command kitl verify runs."""
        return self.kind is Kind.VALUE and self.default not in (None, "")

    def cli_kwargs(self) -> ArgKwargs:
        """argparse's keywords for the command line's option."""
        actions = {Kind.SWITCH: "store_true", Kind.NEGATIVE: "store_false"}
        if self.kind in actions:
            return _given(dest=self.dest, action=actions[self.kind], help=self.help)
        if self.repeated:
            return _given(
                dest=self.dest, action="append", default=[], type=self.type,
                metavar=self.metavar, help=self.help,
            )  # fmt: skip
        return _given(
            dest=self.dest,
            type=self.type,
            default=self.default,
            choices=self.choices,
            metavar=self.metavar,
            help=self.help,
        )

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        """The option on a command line; a comma-list twin first, as --help has always
        listed them (--kernels A,B, then --kernel KERNEL, "one kernel (repeatable)")."""
        if self.plural is not None:
            parser.add_argument(
                self.plural, default="", metavar=self.plural_metavar, help=self.help
            )
        kwargs = self.cli_kwargs()
        if self.plural is not None:
            kwargs["help"] = f"one {self.dest} (repeatable)"
            kwargs.pop("metavar", None)
        parser.add_argument(self.flag, **kwargs)

    def pytest_kwargs(self) -> ArgKwargs:
        """The same keywords for the pytest option (its dest is its flag's)."""
        if self.pytest_options != "same":
            return self.pytest_options or ArgKwargs()
        kwargs = self.cli_kwargs()
        del kwargs["dest"]
        if self.kind in (Kind.VALUE, Kind.LIST):  # argparse's own: LOG_LEVEL, not KITL_...
            kwargs.setdefault("metavar", self.dest.upper())
        if self.kind is Kind.NEGATIVE:
            kwargs["action"] = "store_true"  # --kitl-no-x: kitl_no_x is True when given
        elif self.kind is Kind.JOINED:
            kwargs.pop("action")
            metavar = self.plural_metavar if self.plural else f"{self.metavar},{self.metavar}"
            kwargs["default"], kwargs["metavar"] = "", metavar
        return kwargs

    def from_cli(self, args: argparse.Namespace) -> Any:
        """The value the parsed command line holds (a JOINED one's twin merged in)."""
        value = getattr(args, self.dest)
        if self.plural is not None:
            twin = getattr(args, self.plural.removeprefix("--").replace("-", "_"))
            return names(twin, value)
        return value

    def from_pytest(self, value: Any) -> Any:
        """The value pytest holds, as the command line holds it."""
        if self.kind is Kind.NEGATIVE:
            return not value
        if self.kind is Kind.JOINED:
            return [n.strip() for n in str(value or "").split(",") if n.strip()]
        return value

    def argv(self, value: Any) -> list[str]:
        """The pytest arguments that carry `value` (none for an unset one)."""
        flag = self.pytest_flag
        if self.to_argv is not None:
            return self.to_argv(value)
        if self.kind is Kind.LIST:
            return [a for item in value for a in (flag, str(item))]
        if self.kind is Kind.JOINED:
            return [flag, ",".join(value)] if value else []
        if self.kind is Kind.SWITCH:
            return [flag] if value else []
        if self.kind is Kind.NEGATIVE:
            return [] if value else [flag]
        if value is None or value == "":
            return []
        return [flag, str(value.resolve() if isinstance(value, Path) else value)]


def names(*sources: Sequence[str] | str) -> list[str]:
    """Names from comma lists and lists of them, in order, once each."""
    out: list[str] = []
    for source in sources:
        items = source.split(",") if isinstance(source, str) else list(source)
        out += [n.strip() for n in items if n.strip()]
    return list(dict.fromkeys(out))


def _given(**kwargs: Any) -> ArgKwargs:
    """The keywords said (a value's default always: argparse and pytest hold the same)."""
    return cast(ArgKwargs, {k: v for k, v in kwargs.items() if v is not None or k == "default"})


V, L, S = Kind.VALUE, Kind.LIST, Kind.SWITCH  # short, for the table

# In `kitl verify --help`'s order.
OPTIONS: tuple[Option, ...] = (
    Option(
        "--config", "config", L, field="configs", parse=parse_config,
        metavar="NAME:SYSCTL=VALUE[,...]",
        help="a config of sysctls, e.g. interp:net.core.bpf_jit_enable=0 (repeatable)",
        pytest_name="--kitl-verify-config",
    ),
    Option("--prog", "prog", Kind.JOINED, field="programs", metavar="GLOB", help="only these"),
    Option(
        "--filter", "filter", L, field="filters", type=filters.at_file_resolved,
        parse=filters.parse_filter, metavar="[!]GLOB|FILE/PROG|@FILE",
        help="veristat's -f: object file or program globs, ! to leave out (repeatable)",
    ),
    Option(
        "--log-level", "log_level", V, type=int, parse=check_log_level,
        help="1 log, 2 verbose, 4 stats; default: stats, and 1|4 for a program that fails",
    ),
    Option("--log-size", "log_size", V, type=int, metavar="BYTES"),
    Option(
        "--flags", "flags", V, default="", parse=parse_flags, metavar="BPF_F_X,BPF_F_Y",
        help="program load flags",
    ),
    Option(
        "--btf", "btf", V, type=Path, field="btf_custom_path", parse=_resolved, metavar="FILE",
        help="btf_custom_path",
    ),
    Option(
        "--privilege", "privilege", V, default=PRIVILEGED, field="privileges",
        parse=parse_privileges, metavar="PROFILE[,PROFILE]",
        help="privileged (default), bpf (CAP_BPF+CAP_PERFMON), bpf-net (and CAP_NET_ADMIN), "
        "unprivileged, or both (privileged,unprivileged)",
    ),
    Option("--test-run", "test_run", S, help="record each program's test_run retval"),
    Option(
        "--test-run-input", "test_run_input", V, parse=parse_hex, metavar="HEX",
        help="test_run input: the packet of packet programs (>= 14 bytes), else the context",
    ),
    Option(
        "--global", "globals", L, parse=parse_global, metavar="NAME=VALUE",
        help="preset a global variable before the load, like veristat -G (repeatable)",
    ),
    Option(
        "--map", "maps", L, parse=parse_map, metavar="NAME:max_entries=N[,value_size=N]",
        help="size a map as the loader's user space would before the load (repeatable)",
    ),
    Option(
        "--map-set", "map_values", L, parse=parse_map_value, metavar="[OBJECT/]NAME:KEY=VALUE",
        help="write an entry into a map after the load, before test_run (repeatable); "
        "OBJECT: only objects whose file name matches this glob",
    ),
    Option(
        "--tail-call", "tail_calls", L, parse=parse_tail_call, metavar="PROG_ARRAY:SLOT=PROGRAM",
        help="fill a prog array slot with a program after the load, as user space does",
    ),
    Option(
        "--attach-target", "attach_targets", L, parse=parse_attach_target, metavar="PROG=FUNC",
        help="retarget a tracing program (fentry/dummy -> FUNC) before its load (repeatable)",
    ),
    Option(
        "--no-fixups", "fixups", Kind.NEGATIVE,
        help="load maps with max_entries 0 as they are (default: 1, as veristat does)",
    ),
    Option("--no-pinning", "pinning", Kind.NEGATIVE, help="pin no map (veristat's way)"),
    Option(
        "--pin-root", "pin_root", V, parse=check_pin_root, metavar="DIR",
        help="pin maps under this bpffs dir",
    ),
    Option(
        "--annotations", "annotations", S,
        help="expectations from the kernel selftests' decl tags (__success, __msg...)",
    ),
    Option(
        "--whole-object", "whole_object", S,
        help="load every program of the object with each one, as a skeleton does",
    ),
    Option(
        "--expect", "expect", V, type=Path, field=None, metavar="FILE", help="bulk expectations",
        pytest_name="--kitl-verify-expect",
    ),
)  # fmt: skip
BY_DEST = {o.dest: o for o in OPTIONS}

Values = Callable[[str], Any]  # an option's value by its dest, as the command line holds it


@dataclass(frozen=True)
class Given:
    """The values of a table's options as the command line holds them, by dest: what a
    request carries to build its options and hand them to pytest."""

    values: Mapping[str, Any]

    def __call__(self, dest: str) -> Any:
        return self.values[dest]

    @classmethod
    def of(cls, values: Values, table: Sequence[Option] = OPTIONS) -> Given:
        return cls({o.dest: values(o.dest) for o in table})


class _OptionGroup(Protocol):  # pytest.OptionGroup: addoption takes argparse's keywords
    def addoption(self, *opts: str, **attrs: Any) -> None: ...


def add_cli_arguments(parser: argparse.ArgumentParser, table: Sequence[Option] = OPTIONS) -> None:
    for option in table:
        option.add_cli(parser)


def add_pytest_options(group: _OptionGroup, table: Sequence[Option] = OPTIONS) -> None:
    for option in table:
        if option.pytest_options is not None:
            group.addoption(option.pytest_flag, **option.pytest_kwargs())


def namespace_values(args: argparse.Namespace, table: Sequence[Option] = OPTIONS) -> Values:
    """The values of a parsed command line: the one reader of argparse's output, for the
    requests harness.cli.main builds."""
    by_dest = {o.dest: o for o in table}
    return lambda dest: by_dest[dest].from_cli(args)


def pytest_values(getoption: Callable[[str], Any], table: Sequence[Option] = OPTIONS) -> Values:
    """The values of the pytest options (`pytest.Config.getoption`), as the command line
    holds them."""
    by_dest = {o.dest: o for o in table}
    return lambda dest: by_dest[dest].from_pytest(getoption(by_dest[dest].pytest_dest))


def build(values: Values) -> VerifyOptions:
    """The options' values parsed and checked (a UsageError names the option); an option
    not given leaves its field at the default (no --config: one config, the boot values)."""
    fields: dict[str, Any] = {}
    for option in OPTIONS:
        name, value = option.field_name, values(option.dest)
        if name is None or (option.repeated and not value):
            continue
        fields[name] = tuple(map(option.parse, value)) if option.repeated else option.parse(value)
    return VerifyOptions(**fields)


def pytest_argv(values: Values, matrix: Sequence[str] = ()) -> list[str]:
    """The pytest arguments that carry the values: the options every command has (a default:
    log level, privilege), then `matrix` (the loaders and kernels, kitl run's options too),
    then every other option given, in the table's order."""
    first = [a for o in OPTIONS if o.always_given for a in o.argv(values(o.dest))]
    rest = [a for o in OPTIONS if not o.always_given for a in o.argv(values(o.dest))]
    return [*first, *matrix, *rest]
