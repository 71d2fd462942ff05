// SPDX-License-Identifier: GPL-2.0
/* A read-only global the loader may preset before the load (veristat -G, kitl --global):
 * the program returns it, so test_run shows which value the kernel saw. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

const volatile __u32 verdict = XDP_PASS;

SEC("xdp")
int xdp_global(struct xdp_md *ctx)
{
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
