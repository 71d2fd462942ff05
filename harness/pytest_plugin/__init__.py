"""The pytest plugin that runs a matrix (kitl run and kitl verify run through it), its options,
and fixtures for users' own Python tests on real kernels."""
