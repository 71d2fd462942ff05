// SPDX-License-Identifier: GPL-2.0
/* Written the way bcc's libbpf-tools write their objects (offcputime, biolatency, ...):
 * maps without a size, which the tool's user space sizes from its options before the load
 * (bpf_map__set_max_entries/set_value_size), and a tracing program whose placeholder target
 * user space replaces (bpf_program__set_attach_target), plus a socket filter and a
 * socket-storage map for the unprivileged checks. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, u32);
	__type(value, u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(u32));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, u64);
} sk_seen SEC(".maps");

/* "dummy_file_read" is in no kernel: the tool sets the real target at run time */
SEC("fentry/dummy_file_read")
int BPF_PROG(count_reads)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	u64 one = 1, *n = bpf_map_lookup_elem(&counts, &pid);

	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&counts, &pid, &one, BPF_ANY);
	return 0;
}

SEC("kprobe/vfs_read")
int stack_of_reads(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	u64 one = 1;
	s64 id = bpf_get_stackid(ctx, &stacks, 0);

	if (id >= 0)
		bpf_map_update_elem(&counts, &pid, &one, BPF_ANY);
	return 0;
}

SEC("socket")
int sock_len(struct __sk_buff *skb)
{
	return skb->len;
}

SEC("cgroup_skb/egress")
int sk_mark(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	u64 *seen;

	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	seen = bpf_sk_storage_get(&sk_seen, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (seen)
		*seen += 1;
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
