// SPDX-License-Identifier: GPL-2.0
/* Programs of every type the scenario tests name.  Never compiled by the unit tests of the
 * scenario parser (it scans SEC() definitions); test_scenario.py compiles it to check that the
 * scan and the ELF reader agree. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef TCX_PASS
#define TCX_PASS 0 /* 6.6 UAPI; the host headers may be older */
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

static __always_inline void count(__u32 key)
{
	__u64 *value = bpf_map_lookup_elem(&counts, &key);

	if (value)
		__sync_fetch_and_add(value, 1);
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	count(0);
	return XDP_PASS;
}

SEC("xdp")
int xdp_drop_udp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	count(1);
	return XDP_DROP;
}

SEC("tc")
int tc_shot(struct __sk_buff *skb)
{
	return TC_ACT_SHOT;
}

SEC("tcx/ingress")
int tcx_pass(struct __sk_buff *skb)
{
	return TCX_PASS;
}

SEC("kprobe/do_unlinkat")
int kprobe_unlink(void *ctx)
{
	__u32 *slot = bpf_ringbuf_reserve(&events, sizeof(__u32), 0);

	if (slot) {
		*slot = 1;
		bpf_ringbuf_submit(slot, 0);
	}
	return 0;
}

SEC("kprobe")
int kprobe_bare(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int tp_openat(void *ctx)
{
	return 0;
}

SEC("raw_tp/sys_enter")
int raw_enter(void *ctx)
{
	return 0;
}

SEC("fentry/do_unlinkat")
int fentry_unlink(void *ctx)
{
	return 0;
}

SEC("lsm/file_open")
int lsm_open(void *ctx)
{
	return 0;
}

SEC("cgroup_skb/egress")
int cg_egress(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup/skb")
int cg_skb_any(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup/connect4")
int cg_connect4(struct bpf_sock_addr *ctx)
{
	return ctx->user_port == bpf_htons(9) ? 0 : 1;
}

SEC("socket")
int sock_keep(struct __sk_buff *skb)
{
	return skb->len;
}

SEC("syscall")
int sys_prog(void *ctx)
{
	return 0;
}

SEC("weird_section")
int weird(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
