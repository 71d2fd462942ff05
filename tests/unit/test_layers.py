"""The package's layering, read from the source (ast): imports point down the pipeline.

    bpf < guest < kernel < vm < scenario < results < run < report < pytest_plugin < cli

A module imports from its own subpackage, the ones below it and the shared base modules
(errors, outcome, interrupts, yamlsrc).  The guest's code runs inside the VM with the
host's interpreter but none of the host's state: it imports only the standard library,
itself, harness.bpf (stdlib-only knowledge about BPF) and harness.errors (the KitlError
tree its errors join, stdlib-only too, with harness.outcome for exit codes).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "harness"
LAYERS = (
    "bpf",
    "guest",
    "kernel",
    "vm",
    "scenario",
    "results",
    "run",
    "report",
    "pytest_plugin",
    "cli",
)
BASE = frozenset({"errors", "outcome", "interrupts", "yamlsrc"})
# what else each may import, besides the standard library
STDLIB_ONLY = {
    "bpf": {"bpf"},
    "guest": {"guest", "bpf", "errors"},
    "errors": {"outcome"},  # the exit codes of its errors
    "outcome": set(),
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(HARNESS.rglob("*.py")):
        parts = path.relative_to(HARNESS).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__")] = path
    return out


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, `from harness import x` as
    harness.x; relative imports are not used in harness."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import"
            base = node.module or ""
            if base == "harness" or base.startswith("harness."):
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def group(module: str) -> str:
    """The subpackage of a module under harness (its first part), '' for harness itself."""
    return module.split(".", maxsplit=1)[0] if module else ""


def rank(name: str) -> int:
    """-1 for the base modules and the attributes of harness itself (__version__)."""
    return LAYERS.index(name) if name in LAYERS else -1


def test_every_module_belongs_to_a_layer_or_the_base() -> None:
    for name, path in modules().items():
        top = group(name)
        assert top in LAYERS or top in BASE or name in ("", "__main__"), (
            f"{path}: harness.{name} is in no layer: put it in a subpackage of {LAYERS}"
        )


def test_imports_point_down_the_pipeline() -> None:
    wrong = []
    for name, path in modules().items():
        mine = group(name)
        for line, target in imports(path):
            if not target.startswith("harness."):
                continue
            theirs = group(target.removeprefix("harness."))
            if theirs == mine:
                continue
            if rank(theirs) > rank(mine) or (mine in BASE and theirs not in BASE):
                wrong.append(f"{path.relative_to(HARNESS.parent)}:{line}: {mine} imports {target}")
    assert not wrong, "imports that point up the pipeline:\n" + "\n".join(wrong)


def test_the_guest_and_bpf_import_only_the_standard_library_and_each_other() -> None:
    wrong = []
    for name, path in modules().items():
        allowed = STDLIB_ONLY.get(group(name))
        if allowed is None:
            continue
        for line, target in imports(path):
            top = target.split(".")[0]
            if top == "__future__" or top in sys.stdlib_module_names:
                continue
            if top == "harness" and group(target.removeprefix("harness.")) in allowed:
                continue
            wrong.append(f"{path.relative_to(HARNESS.parent)}:{line}: imports {target}")
    assert not wrong, "the guest runs with the standard library only:\n" + "\n".join(wrong)


def test_the_checks_see_real_imports() -> None:
    """The walk finds what it must: a guest module's stdlib import, a host module's
    import of the layer below it."""
    found = modules()
    assert (1, "__future__") in [(1, t) for _, t in imports(found["guest.agent"])]
    assert any(t.startswith("harness.vm.") for _, t in imports(found["run.engine"]))
