// SPDX-License-Identifier: GPL-2.0
/* A dispatcher that tail-calls into a prog array its object fills statically, the way
 * xdp-tools and Cilium lay theirs out: libbpf fills the slots at load time and fails
 * ("failed to initialize slot [0]") unless the slot programs load in the same load. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

int stage_pass(struct xdp_md *ctx);
int stage_drop(struct xdp_md *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__uint(key_size, sizeof(u32));
	__array(values, int (void *));
} stages SEC(".maps") = {
	.values = {
		[0] = (void *)&stage_pass,
		[1] = (void *)&stage_drop,
	},
};

volatile const u32 stage = 0;

/* a prog array user space fills after the load (kitl verify --tail-call) */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(u32));
	__uint(value_size, sizeof(u32));
} dyn_stages SEC(".maps");

/* what user space writes before it runs the program: the verdict of `configured` */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u32);
} settings SEC(".maps");

SEC("xdp")
int dispatch(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &stages, stage);
	return XDP_ABORTED; /* the slot was empty */
}

SEC("xdp")
int stage_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int stage_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

SEC("xdp")
int dyn_dispatch(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &dyn_stages, 0);
	return XDP_ABORTED; /* nothing in slot 0 */
}

SEC("xdp")
int configured(struct xdp_md *ctx)
{
	u32 key = 0, *verdict = bpf_map_lookup_elem(&settings, &key);

	return verdict ? *verdict : XDP_ABORTED;
}

/* not in the prog array: loads on its own, and with the others only in --whole-object */
SEC("xdp")
int unrelated(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;

	return *(u8 *)data; /* no bounds check: the verifier rejects it */
}

char LICENSE[] SEC("license") = "GPL";
