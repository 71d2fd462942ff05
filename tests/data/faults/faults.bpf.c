// SPDX-License-Identifier: GPL-2.0
/* The program every fault case loads and attaches: it does nothing, so a case's outcome
 * is decided by the fault its command drive injects (tests/vm/test_faults.py). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_enter_getpid")
int on_getpid(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
