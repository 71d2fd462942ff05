// SPDX-License-Identifier: GPL-2.0
/* Socket filters: the return value is how many bytes of the packet the socket keeps;
 * 0 drops it.  For a UDP socket the filter sees the packet from the UDP header on. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

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

/* key 0: packets kept whole */
SEC("socket")
int keep_all(struct __sk_buff *skb)
{
	count(0);
	return skb->len;
}

/* key 1: packets dropped */
SEC("socket")
int drop_all(struct __sk_buff *skb)
{
	count(1);
	return 0;
}

/* keep the UDP header and 16 payload bytes */
SEC("socket")
int trim_to_24(struct __sk_buff *skb)
{
	return 24;
}

char LICENSE[] SEC("license") = "GPL";
