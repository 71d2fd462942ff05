// SPDX-License-Identifier: GPL-2.0
/* Packet programs for the libbpf binding tests: an XDP counter that drops one EtherType,
 * a tc counter for the same EtherType, and an XDP program the verifier must reject. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* IEEE 802 local experimental EtherType: no stack traffic uses it, so counts are exact. */
#define ETH_P_KITL 0x88B5

enum { SEEN = 0, MARKED = 1 };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline void bump(__u32 key)
{
	__u64 *v = bpf_map_lookup_elem(&counts, &key);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int is_marked(void *data, void *data_end)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	return eth->h_proto == bpf_htons(ETH_P_KITL);
}

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	bump(SEEN);
	if (is_marked(data, data_end)) {
		bump(MARKED);
		return XDP_DROP;
	}
	return XDP_PASS;
}

SEC("tc")
int tc_count(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	bump(SEEN);
	if (is_marked(data, data_end))
		bump(MARKED);
	return TC_ACT_OK;
}

/* Reads the packet without a bounds check: "invalid access to packet". */
SEC("xdp")
int xdp_bad(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;

	return data[12] == 0x88 ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
