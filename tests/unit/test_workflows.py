"""The GitHub side: action.yml's inputs and steps, and actionlint (a dev dependency, from
tools/setup.sh) on every workflow: the repository's own and docs/examples', which use the
action as `./`, so actionlint checks their inputs against action.yml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted([*(REPO / ".github" / "workflows").glob("*.yml"),
                    *(REPO / "docs" / "examples").glob("*.yml")])  # fmt: skip
INPUTS = {
    "scenarios", "objects", "kernels", "configs", "loaders", "arches", "shard", "timings",
    "baseline", "extra-args", "output", "artifact-name", "kitl",
}  # fmt: skip


def actionlint() -> str:
    here = Path(sys.executable).parent / "actionlint"
    found = str(here) if here.exists() else shutil.which("actionlint")
    assert found, "actionlint is missing: tools/setup.sh installs it (pyproject's dev extra)"
    return found


def action() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "action.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_action_is_composite_with_the_documented_inputs() -> None:
    found = action()
    assert found["runs"]["using"] == "composite"
    assert set(found["inputs"]) == INPUTS
    assert all("description" in i for i in found["inputs"].values())
    uses = [s["uses"].split("@")[0] for s in found["runs"]["steps"] if "uses" in s]
    assert uses == ["actions/cache", "actions/upload-artifact"]
    text = (REPO / "action.yml").read_text()
    assert 'KERNEL=="kvm", GROUP="kvm", MODE="0666"' in text
    assert "GITHUB_STEP_SUMMARY" in text
    assert "kitl compare" in text


def test_no_input_is_expanded_inside_a_script() -> None:
    """Inputs reach the scripts as environment variables: `${{ inputs.x }}` inside `run:`
    would be pasted into the shell before it runs (script injection)."""
    for step in action()["runs"]["steps"]:
        assert "inputs." not in step.get("run", ""), step.get("name")


def test_actionlint_passes_on_every_workflow(tmp_path: Path) -> None:
    assert WORKFLOWS, "no workflow found"
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy2(REPO / "action.yml", tmp_path / "action.yml")
    for workflow in WORKFLOWS:
        shutil.copy2(workflow, tmp_path / ".github" / "workflows" / workflow.name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)  # the project's root
    done = subprocess.run(
        [actionlint(), "-oneline", "-no-color"], cwd=tmp_path, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_an_unknown_input(tmp_path: Path) -> None:
    """The check above is a real one: a misspelt input of the action fails it."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy2(REPO / "action.yml", tmp_path / "action.yml")
    example = (REPO / "docs" / "examples" / "kitl-matrix.yml").read_text()
    broken = example.replace("          shard: ${{ matrix.shard }}", "          shards: 1/2")
    assert broken != example
    (tmp_path / ".github" / "workflows" / "x.yml").write_text(broken)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    done = subprocess.run(
        [actionlint(), "-oneline", "-no-color"], cwd=tmp_path, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert 'input "shards" is not defined in action "kitl"' in done.stdout


def test_docs_ci_shows_the_example_as_it_is() -> None:
    text = (REPO / "docs" / "ci.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert (REPO / "docs" / "examples" / "kitl-matrix.yml").read_text() in blocks
