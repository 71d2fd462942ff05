// SPDX-License-Identifier: GPL-2.0
/* A program calling a kfunc of a test module no Debian kernel has (as the selftests call
 * bpf_testmod's): every load of the object fails, so its cases are skipped, naming it. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpf_misc_min.h"

extern int bpf_kitl_testmod_kfunc(int x) __ksym;

SEC("syscall")
__success __retval(0)
int calls_the_test_module(void *ctx)
{
	return bpf_kitl_testmod_kfunc(0);
}

char LICENSE[] SEC("license") = "GPL";
