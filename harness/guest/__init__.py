"""Everything that runs inside the VM, in the agent's process: the agent, the libbpf binding
and its attach code, the per-case topology, the drives, capabilities. Imports only the
standard library, itself and harness.bpf (checked by tests/unit/test_layers.py)."""

from pathlib import Path

INIT_SCRIPT = Path(__file__).with_name("init.sh")
