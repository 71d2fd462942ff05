"""Scenario files that are wrong in every way hypothesis can think of: random structures
(wrong types, huge numbers, unicode, nesting), random text, alias bombs.  The checker must
answer each with errors that name the file and a line, never a traceback."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.scenario.loader import check

KEYS = ["name", "objects", "cases", "topology", "configs", "kernels", "program", "expect",
        "drive", "attach", "load", "requires", "overrides", "xdp", "test_run", "syscall",
        "source", "path", "netns", "veth", "retval", "map", "ü", "", "../x", "$(id)"]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["xdp/xdp_pass", "XDP_DROP", "10.0.0.1/24", "v1@b/10.0.0.2/24", "ok"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=6),
    ),
    max_leaves=40,
)
# hypothesis reruns a test body many times: one directory for the whole module
FUZZ_DIR = Path(tempfile.mkdtemp(prefix="kitl-fuzz-"))
LOCATED = re.compile(r":\d+(:\d+)?: ")  # file:line: or file:line:column:


def assert_located(path: Path, errors: list[ConfigError]) -> None:
    assert errors, "a random document is not a valid scenario"
    for error in errors:
        text = str(error)
        assert text.startswith(f"{path}:"), text
        assert LOCATED.match(text[len(str(path)) :]), text


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_random_structures_are_rejected_with_a_location(doc: object) -> None:
    path = FUZZ_DIR / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    assert_located(path, check(path))


@settings(max_examples=400, deadline=None)
@given(text=st.text(max_size=300))
def test_random_text_is_rejected_with_a_location(text: str) -> None:
    path = FUZZ_DIR / "text.yaml"
    path.write_text(text, encoding="utf-8")
    assert_located(path, check(path))


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    errors = check(path)
    assert errors
    assert str(errors[0]).startswith(f"{path}:")
