"""The HTML report as a browser sees it: Debian's headless Chromium loads index.html from
the sample run and dumps its DOM, which must hold the matrix with the expected rows, columns
and outcomes.  Chromium is a host requirement (tools/setup.sh installs it): without it this
test fails, it never skips.  One Chromium run serves the whole module.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.report.render import render_all

RUN = Path(__file__).parents[1] / "data" / "report-runs" / "two-kernels"
CHROMIUM_TIMEOUT = 60


@dataclass
class Td:
    attrs: dict[str, str]
    text: str = ""
    hrefs: list[str] = field(default_factory=list)


class MatrixParser(HTMLParser):
    """The table#matrix of a DOM: header texts and, per row, its <th> and <td>s."""

    def __init__(self) -> None:
        super().__init__()
        self.header: list[str] = []
        self.rows: dict[str, list[Td]] = {}
        self.row_order: list[str] = []
        self._in_matrix = False
        self._section = ""
        self._cell: Td | None = None  # the <th> or <td> being read
        self._is_th = False
        self._row: list[Td] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "table" and values.get("id") == "matrix":
            self._in_matrix = True
        if not self._in_matrix:
            return
        if tag in ("thead", "tbody"):
            self._section = tag
        elif tag == "tr":
            self._row = []
        elif tag in ("th", "td"):
            self._cell, self._is_th = Td(values), tag == "th"
        elif tag == "a" and self._cell is not None:
            self._cell.hrefs.append(values.get("href", ""))

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.text += data

    def handle_endtag(self, tag: str) -> None:
        if not self._in_matrix:
            return
        if tag == "table":
            self._in_matrix = False
        elif tag in ("th", "td") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._section == "thead":
            self.header = [c.text.strip() for c in self._row]
        elif tag == "tr" and self._section == "tbody":
            name = self._row[0].text.strip()
            self.rows[name] = self._row[1:]
            self.row_order.append(name)


@pytest.fixture(scope="module")
def dom(tmp_path_factory: pytest.TempPathFactory) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run tools/setup.sh (it installs Debian's chromium)")
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(RUN, run)
    render_all(run, formats=("html",))
    page = (run / "report" / "index.html").resolve()
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()]
    done = subprocess.run(
        argv, check=False, capture_output=True, encoding="utf-8", timeout=CHROMIUM_TIMEOUT
    )
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    assert "</html>" in done.stdout, f"chromium dumped no DOM: {done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def matrix(dom: str) -> MatrixParser:
    parser = MatrixParser()
    parser.feed(dom)
    parser.close()
    return parser


COLUMNS = [
    "debian-6.1-default",
    "debian-6.1-jit",
    "debian-6.1-interp",
    "debian-7.2-default",
    "debian-7.2-jit",
    "debian-7.2-interp",
    "debian-7.3-*",
]


def test_matrix_columns(matrix: MatrixParser) -> None:
    assert matrix.header == ["scenario::case", *COLUMNS, "first failing kernel"]


def test_matrix_rows(matrix: MatrixParser) -> None:
    assert matrix.row_order == [
        "*::*",
        "cgroup::connect4-denied-port",
        "kernel-range::bpf-loop-sum",
        "kernel-range::needs-arena-map-type",
        "tracing::kprobe-getppid",
        "xdp-basics::pass-test-run",
        "xdp-basics::unchecked-access-rejected",
    ]
    assert all(len(cells) == len(COLUMNS) + 1 for cells in matrix.rows.values())


@pytest.mark.parametrize(
    ("row", "column", "outcome"),
    [
        ("*::*", "debian-7.3-*", "KERNEL_CRASH"),
        ("cgroup::connect4-denied-port", "debian-6.1-default", "PASSED"),
        ("cgroup::connect4-denied-port", "debian-7.2-default", "FAILED"),
        ("kernel-range::needs-arena-map-type", "debian-6.1-default", "SKIPPED"),
        ("tracing::kprobe-getppid", "debian-7.2-default", "VERIFIER_REJECTED"),
        ("xdp-basics::pass-test-run", "debian-6.1-interp", "TIMED_OUT"),
        ("xdp-basics::pass-test-run", "debian-7.2-interp", "PASSED"),
    ],
)
def test_cell_outcome(matrix: MatrixParser, row: str, column: str, outcome: str) -> None:
    td = matrix.rows[row][COLUMNS.index(column)]
    assert td.attrs.get("data-column") == column
    assert td.attrs.get("data-outcome") == outcome


def test_empty_cells_carry_no_outcome(matrix: MatrixParser) -> None:
    td = matrix.rows["*::*"][COLUMNS.index("debian-6.1-default")]
    assert "data-outcome" not in td.attrs
    assert td.text.strip() == ""


def test_cell_title_and_links(matrix: MatrixParser) -> None:
    failed = matrix.rows["cgroup::connect4-denied-port"][COLUMNS.index("debian-7.2-default")]
    assert failed.attrs["title"].endswith("<script>alert(1)</script>")  # text, not markup
    rejected = matrix.rows["tracing::kprobe-getppid"][COLUMNS.index("debian-7.2-default")]
    assert rejected.hrefs == [
        "../logs/debian-7.2/default/tracing.kprobe-getppid.verifier.log",
        "../guest/debian-7.2.dmesg.log",
        "../guest/debian-7.2.console.log",
    ]


def test_first_failing_kernel_column(matrix: MatrixParser) -> None:
    last = {row: cells[-1].text.strip() for row, cells in matrix.rows.items()}
    assert last["xdp-basics::pass-test-run"] == "debian-6.1"
    assert last["tracing::kprobe-getppid"] == "debian-7.2"
    assert last["kernel-range::bpf-loop-sum"] == "—"


def test_no_script_ran(dom: str) -> None:
    # the reason's <script> stayed text: the DOM holds no script element
    assert "<script" not in dom.lower()
