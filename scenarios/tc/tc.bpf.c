// SPDX-License-Identifier: GPL-2.0
/* tc (clsact + cls_bpf, direct action) and tcx links: drop UDP, count-and-pass everything.
 * Current section names (libbpf >= 1.3): tc/ingress for cls_bpf, tcx/<direction> for links. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP 0x0800
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline void count(__u32 key)
{
	__u64 *value = bpf_map_lookup_elem(&counts, &key);

	if (value)
		__sync_fetch_and_add(value, 1);
}

static __always_inline int is_udp(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > end)
		return 0;
	return eth->h_proto == bpf_htons(ETH_P_IP) && ip->protocol == IPPROTO_UDP;
}

static __always_inline int drop_udp(struct __sk_buff *skb)
{
	if (!is_udp(skb))
		return TC_ACT_OK;
	count(0);
	return TC_ACT_SHOT;
}

static __always_inline int count_udp(struct __sk_buff *skb)
{
	if (is_udp(skb))
		count(1);
	return TC_ACT_OK;
}

/* key 0: UDP packets dropped */
SEC("tc/ingress")
int tc_drop_udp(struct __sk_buff *skb)
{
	return drop_udp(skb);
}

/* key 1: UDP packets seen and let through */
SEC("tc/ingress")
int tc_count_udp(struct __sk_buff *skb)
{
	return count_udp(skb);
}

SEC("tcx/ingress")
int tcx_drop_udp(struct __sk_buff *skb)
{
	return drop_udp(skb);
}

SEC("tcx/egress")
int tcx_count_udp(struct __sk_buff *skb)
{
	return count_udp(skb);
}

/* The legacy name every libbpf knows: the loader axis's reference point. */
SEC("classifier")
int legacy_drop_udp(struct __sk_buff *skb)
{
	return drop_udp(skb);
}

char LICENSE[] SEC("license") = "GPL";
