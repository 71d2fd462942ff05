"""Repository-level pytest configuration.

Kept tiny on purpose: shared test helpers live in tests/, and nothing here may hide a
failure.  Tests marked `vm` boot real kernels; they never skip: if QEMU or a kernel is
missing they fail with the reason.
"""
