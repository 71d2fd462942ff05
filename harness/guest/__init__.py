"""Files that run inside the guest (shipped as package data)."""

from pathlib import Path

INIT_SCRIPT = Path(__file__).with_name("init.sh")
