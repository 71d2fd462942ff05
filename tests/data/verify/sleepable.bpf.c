// SPDX-License-Identifier: GPL-2.0
/* bpf_copy_from_user may sleep: the verifier offers it only to sleepable programs, so this
 * LSM program loads only with BPF_F_SLEEPABLE (SEC("lsm.s/...") would set it; the plain
 * section leaves it to the loader).  file_open is one of the hooks that may sleep. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char seen[8];

SEC("lsm/file_open")
int BPF_PROG(copy_user, struct file *file)
{
	bpf_copy_from_user(seen, sizeof(seen), (void *)0x1000);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
