// SPDX-License-Identifier: GPL-2.0
/* Programs for `kitl verify` tests: one that loads everywhere, one the verifier rejects with
 * a known message, one an unprivileged loader may load too (a socket filter), and XDP,
 * which only a privileged loader may load. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_ok(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* reads one byte past the Ethernet header without checking data_end */
SEC("xdp")
int xdp_oob(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;

	return data[14] == 6 ? XDP_DROP : XDP_PASS;
}

SEC("socket")
int sock_keep(struct __sk_buff *skb)
{
	return skb->len;
}

char LICENSE[] SEC("license") = "GPL";
