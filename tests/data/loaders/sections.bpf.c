// SPDX-License-Identifier: GPL-2.0
/* The same tc program under a section every libbpf knows and under tcx/ingress, which
 * libbpf learnt in 1.3: which one loads depends on the loader, not the kernel. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tc")
int tc_classic(struct __sk_buff *skb)
{
	return 0; /* TC_ACT_OK */
}

SEC("tcx/ingress")
int tcx_ingress(struct __sk_buff *skb)
{
	return 0; /* TCX_PASS */
}

char LICENSE[] SEC("license") = "GPL";
