"""kitl: a kernel-in-the-loop test harness for eBPF programs."""

__version__ = "0.1.0"
