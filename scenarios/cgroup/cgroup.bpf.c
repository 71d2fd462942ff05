// SPDX-License-Identifier: GPL-2.0
/*
 * cgroup programs: connect4 refuses one port; cgroup_skb egress counts or drops UDP.
 * They see only the processes and sockets of the cgroup they are attached to; kitl runs a
 * case's drive inside that cgroup.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DENIED_PORT 9
#define UDP_PORT 9000

enum { CONNECT_DENIED, CONNECT_ALLOWED, EGRESS_SEEN, EGRESS_DROPPED, NKEYS };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NKEYS);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline void count(__u32 key)
{
	__u64 *value = bpf_map_lookup_elem(&counts, &key);

	if (value)
		__sync_fetch_and_add(value, 1);
}

SEC("cgroup/connect4")
int connect4_deny_port(struct bpf_sock_addr *ctx)
{
	if (ctx->user_port == bpf_htons(DENIED_PORT)) {
		count(CONNECT_DENIED);
		return 0; /* connect() fails with EPERM */
	}
	count(CONNECT_ALLOWED);
	return 1;
}

/* skb data starts at the IP header for cgroup_skb programs */
static __always_inline int is_udp_to_port(struct __sk_buff *skb)
{
	struct iphdr ip;
	struct udphdr udp;

	if (skb->protocol != bpf_htons(0x0800))
		return 0;
	if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) || ip.protocol != IPPROTO_UDP)
		return 0;
	if (bpf_skb_load_bytes(skb, ip.ihl * 4, &udp, sizeof(udp)))
		return 0;
	return udp.dest == bpf_htons(UDP_PORT);
}

SEC("cgroup_skb/egress")
int egress_count_udp(struct __sk_buff *skb)
{
	if (is_udp_to_port(skb))
		count(EGRESS_SEEN);
	return 1;
}

SEC("cgroup_skb/egress")
int egress_drop_udp(struct __sk_buff *skb)
{
	if (!is_udp_to_port(skb))
		return 1;
	count(EGRESS_DROPPED);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
