// SPDX-License-Identifier: GPL-2.0
/* Tracing programs for the libbpf binding tests: count getpid() calls of one process
 * through a tracepoint and a kprobe (ksyscall), and send each pid through a ring buffer. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} target SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

static __always_inline int count_if_target(void)
{
	__u32 zero = 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 *want = bpf_map_lookup_elem(&target, &zero);
	__u64 *n;

	if (!want || *want != tgid)
		return 0;
	n = bpf_map_lookup_elem(&counts, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	bpf_ringbuf_output(&events, &tgid, sizeof(tgid), 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getpid")
int tp_getpid(void *ctx)
{
	return count_if_target();
}

SEC("ksyscall/getpid")
int kprobe_getpid(void *ctx)
{
	return count_if_target();
}

char LICENSE[] SEC("license") = "GPL";
