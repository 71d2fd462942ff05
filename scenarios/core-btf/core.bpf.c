// SPDX-License-Identifier: GPL-2.0
/* A CO-RE object: its relocations are resolved against the running kernel's BTF, so
 * libbpf cannot load it on a kernel without BTF unless it is handed that BTF. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

SEC("xdp")
int xdp_core_pass(struct xdp_md *ctx)
{
	/* a field-existence relocation against struct task_struct */
	if (bpf_core_field_exists(struct task_struct, pid))
		return XDP_PASS;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
