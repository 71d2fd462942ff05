// SPDX-License-Identifier: GPL-2.0
/* The program most fault cases load and attach: it does nothing, so a case's outcome is
 * decided by the fault its command drive injects (tests/vm/test_faults.py); and a program
 * that spins in bpf_loop. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_enter_getpid")
int on_getpid(void *ctx)
{
	return 0;
}

static long spin(__u32 index, void *ctx)
{
	return 0; /* 0: go on */
}

/* bpf_loop's most iterations per call; run by test_run ten million times it keeps the
 * kernel busy for days under TCG: a hang inside BPF_PROG_TEST_RUN */
SEC("xdp")
int xdp_spin(struct xdp_md *ctx)
{
	bpf_loop(1 << 23, spin, NULL, 0);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
