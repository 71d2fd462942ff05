"""Scenario files: the YAML a user writes, parsed once into frozen dataclasses
(harness.scenario.model).

`check(path)` returns every problem of a file (file:line:column: message (hint)) without
booting anything; `load_scenario(path)` returns the `Scenario` or raises `ScenarioError`
(a ConfigError naming the first problem and carrying all of them).  The language is
documented in docs/scenarios.md; harness.scenario.shape's `json_schema()` describes it for
editors.  The top level is read by harness.scenario.parsing, each case by
harness.scenario.cases.

Every name that reaches the guest (netns, devices, cases, cgroup paths) is checked against a
conservative pattern: they become argv elements and directory names there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from harness import yamlsrc
from harness.errors import ConfigError, KitlError, UsageError
from harness.scenario.cases import CaseParser
from harness.scenario.loader_cases import LoaderCaseParser
from harness.scenario.model import AnyCase, Case, LoaderCase, RunConfig, Scenario
from harness.scenario.parsing import Parser, fits, key_fits
from harness.scenario.shape import CONFIG, NAME_SPEC, SCENARIO
from harness.scenario.spec import describe
from harness.yamlsrc import LocDict, LocList, where

__all__ = [
    "ScenarioError",
    "check",
    "load_scenario",
]


class ScenarioError(ConfigError):
    """The first problem of a scenario file (as str()), with all of them in `errors`."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        more = len(errors) - 1
        hint = first.hint
        if more:
            extra = f"{more} more problem{'s' if more > 1 else ''} in this file"
            hint = f"{hint}; {extra}" if hint else extra
        KitlError.__init__(self, first.message, hint=hint)
        self.path, self.line, self.column = first.path, first.line, first.column
        self.errors = tuple(errors)


# --- entry points ------------------------------------------------------------------------


def check(path: Path, *, allow_outside: bool = False) -> list[ConfigError]:
    """Every problem of the scenario at `path`, in file order; [] if it is valid."""
    return _parse(path, allow_outside)[1]


def load_scenario(path: Path, *, allow_outside: bool = False) -> Scenario:
    """Parse and check.  Files the scenario names are resolved relative to it and must stay
    inside its directory unless `allow_outside`."""
    scenario, errors = _parse(path, allow_outside)
    if errors or scenario is None:
        raise ScenarioError(errors or [ConfigError("invalid scenario", path=path)])
    return scenario


def _parse(path: Path, allow_outside: bool) -> tuple[Scenario | None, list[ConfigError]]:
    try:
        doc = yamlsrc.load(path)
    except ConfigError as exc:  # yamlsrc turns every malformed document into one
        return None, [exc]
    parser = ScenarioParser(path, allow_outside)
    scenario = parser.scenario(doc)
    unique = {str(e): e for e in parser.rd.errors}.values()
    errors = sorted(unique, key=lambda e: (e.line or 0, e.column or 0))
    return (None if errors else scenario), errors


class ScenarioParser(Parser):
    """A whole scenario file: its top level, then its cases."""

    def scenario(self, doc: object) -> Scenario | None:
        rd = self.rd
        if not isinstance(doc, LocDict):
            msg = f"expected a mapping with keys name, objects and cases, got {describe(doc)}"
            at = where(doc) if isinstance(doc, LocList) else {"path": self.path, "line": 1}
            rd.error(msg, at)
            return None
        rd.validate(doc, SCENARIO, "", where(doc))
        self.name = doc["name"] if key_fits(doc, "name", SCENARIO) else "scenario"
        if isinstance(configs := doc.get("configs"), LocDict):
            self.configs = tuple(
                RunConfig(name, tuple(((body or {}).get("sysctl") or {}).items()))
                for name, body in configs.items()
                if fits(name, NAME_SPEC) and fits(body, CONFIG)
            )
        if isinstance(objects := doc.get("objects"), LocDict):
            for name, body in objects.items():
                self.objects[name] = self._object(name, body, objects)
        if isinstance(topology := doc.get("topology"), LocDict):
            self.topology = self._topology(topology)
        cases: list[AnyCase | None] = []
        if isinstance(items := doc.get("cases"), LocList):
            cases = [self._case(i, c) for i, c in enumerate(items)]
            self._unique_cases(items, cases)
            loaders_only = all(isinstance(c, LocDict) and "loader" in c for c in items)
            if "objects" not in doc and not loaders_only:
                # only a scenario whose every case runs the user's own loader has none
                rd.error("missing required key 'objects'", where(doc))
        if rd.errors:
            return None
        return Scenario(
            self.name,
            self.path,
            tuple(o for o in self.objects.values() if o is not None),
            tuple(c for c in cases if isinstance(c, Case)),
            doc.get("description", ""),
            tuple(doc.get("kernels", ())),
            self.configs,
            self.topology,
            self._loaders(doc),
            tuple(c for c in cases if isinstance(c, LoaderCase)),
        )

    def _loaders(self, doc: LocDict) -> tuple[str, ...]:
        """The scenario's `libbpf:` list: default, system and debian-X as they are, anything
        else a libbpf.so file relative to the scenario (inside its directory)."""
        if not key_fits(doc, "libbpf", SCENARIO):
            return ()
        loaders: list[str] = []
        for i, name in enumerate(doc["libbpf"]):
            if name == "default":
                loaders.append("")
            elif name == "system" or re.fullmatch(r"debian-[A-Za-z0-9._+-]{1,64}", name):
                loaders.append(name)
            else:
                file = self.file_at(name, where(doc["libbpf"], i), f"libbpf[{i}]")
                if file is not None:
                    loaders.append(str(file))
        return tuple(loaders)

    def _case(self, index: int, node: object) -> AnyCase | None:
        """One entry of `cases:`: a program kitl loads, or the user's own loader."""
        if isinstance(node, LocDict) and "loader" in node:
            return LoaderCaseParser(self, index).parse_loader(node)
        return CaseParser(self, index).parse(node)

    def _unique_cases(self, node: LocList, cases: list[AnyCase | None]) -> None:
        first: dict[str, int] = {}
        for i, case in enumerate(cases):
            if case is None:
                continue
            if case.name in first:
                msg = f"cases[{i}].name: duplicate case name {case.name!r}"
                at = where(node[i], "name", value=True)
                self.rd.error(f"{msg} (first on line {first[case.name]})", at)
            first.setdefault(case.name, case.line)


def files_under(paths: Sequence[Path], suffix: str, one: str, many: str) -> list[Path]:
    """The files named, and those ending in `suffix` below the directories named, sorted
    per directory; a missing path or an empty result is a usage error."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such {one} file or directory")
    if not found:
        raise UsageError(f"no {many} (*{suffix}) in {', '.join(map(str, paths))}")
    return found
