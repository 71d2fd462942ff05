// SPDX-License-Identifier: GPL-2.0
/* A cgroup connect4 hook for the libbpf binding tests: refuse connect() to port 7 (echo). */
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

SEC("cgroup/connect4")
int deny_port7(struct bpf_sock_addr *ctx)
{
	return ctx->user_port == bpf_htons(7) ? 0 : 1;
}

char LICENSE[] SEC("license") = "GPL";
