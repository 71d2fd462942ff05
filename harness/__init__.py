"""kitl: a kernel-in-the-loop test harness for eBPF programs."""

from pathlib import Path

__version__ = "0.1.0"

# The kernel catalog and its lock (data/kernels), the bundled scenarios (data/scenarios)
# and the Debian packages kitl needs.  In a checkout, data/kernels and data/scenarios are
# symlinks to the repository's kernels/ and scenarios/; a wheel carries copies.
DATA = Path(__file__).resolve().parent / "data"
