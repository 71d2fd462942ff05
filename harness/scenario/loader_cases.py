"""A case of `cases:` run by the user's own loader (`loader: {command: [...]}`) as a
`LoaderCase`: the command checked before anything boots (its program must exist on the host
and be executable: the guest runs the host's files), its expectations (exit status, the
programs it loads, its output) and their overrides.
"""

from __future__ import annotations

import os
import shutil

from harness.scenario.cases import CaseParser
from harness.scenario.expect import (
    LOADER_KEYS,
    Expect,
    ExpectContext,
    Override,
    check_expect,
    read_expect,
)
from harness.scenario.model import OBJECT_REF, LoaderCase, UserLoader
from harness.scenario.parsing import fits, key_fits
from harness.scenario.shape import CASE
from harness.scenario.spec import suggest
from harness.yamlsrc import LocDict, LocList, Pos, where

# keys of a case that say how kitl loads a program itself: not for a loader's case
PROGRAM_KEYS = ("program", "requires", "load", "setup", "attach", "drive")
DEFAULT_TIMEOUT = 60.0


class LoaderCaseParser(CaseParser):
    """One entry of `cases:` with `loader:` (its shape already checked)."""

    def parse_loader(self, d: LocDict) -> LoaderCase | None:
        errors = len(self.rd.errors)
        shape_ok = fits(d, CASE)
        for key in PROGRAM_KEYS:
            if key in d:
                self.rd.error(
                    f"{self.what}.{key}: a loader case loads its programs with its own command",
                    where(d, key),
                    "drop it, or make it a case of its own with program:",
                )
        name: str = d["name"] if key_fits(d, "name", CASE) else "case"
        loader = self._loader(d["loader"]) if key_fits(d, "loader", CASE) else None
        expectations = (
            self._loader_expectations(d) if isinstance(d.get("expect"), LocDict) else None
        )
        if not shape_ok or len(self.rd.errors) > errors or loader is None or not expectations:
            return None
        expect, overrides = expectations
        return LoaderCase(name, loader, expect, d.get("description", ""), overrides, line=d.line)

    def _loader(self, m: LocDict) -> UserLoader | None:
        what = f"{self.what}.loader"
        command = tuple(m["command"])
        program = self._program_path(command[0], where(m["command"], 0), f"{what}.command[0]")
        for i, arg in enumerate(command):
            for name in OBJECT_REF.findall(arg):
                if name not in self.p.objects:
                    self.rd.error(
                        f"{what}.command[{i}]: unknown object {name!r} in {{object:{name}}}",
                        where(m["command"], i),
                        suggest(name, list(self.p.objects)) if self.p.objects else
                        "declare it under objects:",
                    )  # fmt: skip
        if program is None:
            return None
        timeout = float(m.get("timeout", DEFAULT_TIMEOUT))
        run_for = m.get("run_for")
        if run_for is not None and run_for >= timeout:
            msg = f"{what}.run_for: {run_for} s is not before the timeout ({timeout:g} s)"
            self.rd.error(msg, where(m, "run_for", value=True), "raise timeout:")
        return UserLoader(
            argv=(program, *command[1:]),
            cwd=self.p.base,
            timeout=timeout,
            run_for=float(run_for) if run_for is not None else None,
            env=tuple((m.get("env") or {}).items()),
            command=command,
        )

    def _program_path(self, raw: str, at: Pos, what: str) -> str | None:
        """The loader's program as the guest runs it: a path (it has a /) relative to the
        scenario, made absolute; a bare name looked up in the host's PATH, which is the
        guest's (kept as a name: the guest's PATH finds it)."""
        if "/" not in raw:
            if shutil.which(raw) is None:
                hint = "give a path relative to the scenario, e.g. ./build/loader"
                self.rd.error(f"{what}: no program {raw!r} in PATH", at, hint)
                return None
            return raw
        path = (self.p.base / raw).resolve()
        if not path.is_file():
            self.rd.error(f"{what}: no such file {raw[:80]!r}", at, f"looked for {path}")
            return None
        if not os.access(path, os.X_OK):
            hint = f"make it executable (chmod +x), or run it through its interpreter: [sh, {raw}]"
            self.rd.error(f"{what}: {raw[:80]!r} is not executable", at, hint)
            return None
        return str(path)

    def _loader_keys(self, m: LocDict, what: str) -> bool:
        """Whether an `expect:` of a loader case says only what a loader does."""
        wrong = [k for k in m if k not in ("exit_status", *LOADER_KEYS)]
        for key in wrong:
            self.rd.error(
                f"{what}.{key}: the case runs a user's loader: kitl loads no program itself",
                where(m, key),
                "a loader case expects exit_status, programs, stdout and stderr",
            )
        return not wrong

    def _loader_expectations(self, d: LocDict) -> tuple[Expect, tuple[Override, ...]] | None:
        what = f"{self.what}.expect"
        ctx = ExpectContext(None, None, None, None, 0, loader=True)
        expect = read_expect(self.rd, d["expect"], ctx, what)
        if not self._loader_keys(d["expect"], what) or expect is None:
            return None
        base_at = {k: where(d["expect"], k) for k in d["expect"]}
        check_expect(self.rd, expect, lambda k: base_at.get(k, where(d, "expect")), ctx, what)
        overrides = []
        items = d.get("overrides")
        for j, item in enumerate(items if isinstance(items, LocList) else ()):
            at = f"{self.what}.overrides[{j}]"
            body = item.get("expect") if isinstance(item, LocDict) else None
            if isinstance(body, LocDict) and not self._loader_keys(body, f"{at}.expect"):
                continue
            override = self._override(item, at, ctx, expect, base_at)
            if override is not None:
                overrides.append(override)
        return expect, tuple(overrides)
