"""Kernels and what is built for them: the catalog and its lock, Debian's archive, the cache,
kernel builds from source, netdevsim and libbpf builds, and the resolution of a kernel name
to a bootable image."""
