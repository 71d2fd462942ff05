// SPDX-License-Identifier: GPL-2.0
/*
 * Programs whose verdict depends on the kernel: bpf_loop (helper since 5.17) and a CO-RE
 * read of task_struct::bpf_net_context (since 6.11).  The field is declared here as a
 * "flavor" of task_struct (libbpf ignores the ___suffix), so the object compiles against
 * any kernel's vmlinux.h and the relocation is resolved, or not, at load time.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} results SEC(".maps");

static __always_inline void add(__u32 key, __u64 n)
{
	__u64 *value = bpf_map_lookup_elem(&results, &key);

	if (value)
		__sync_fetch_and_add(value, n);
}

static long sum_step(__u32 index, void *ctx)
{
	__u64 *sum = ctx;

	*sum += index;
	return 0;
}

/* results[0] += 0 + 1 + ... + 9 = 45 per run */
SEC("xdp")
int loop_sum(struct xdp_md *ctx)
{
	__u64 sum = 0;

	bpf_loop(10, sum_step, &sum, 0);
	add(0, sum);
	return XDP_PASS;
}

struct task_struct___v611 {
	void *bpf_net_context;
} __attribute__((preserve_access_index));

/* results[1]: getppid() calls by a task named "kitltrig" with no bpf_net_context set */
SEC("kprobe/__x64_sys_getppid")
int core_net_context(struct pt_regs *ctx)
{
	struct task_struct___v611 *task = (void *)bpf_get_current_task();
	union {
		char c[16];
		__u64 w[2];
	} comm = {};

	bpf_get_current_comm(comm.c, sizeof(comm.c));
	if (comm.w[0] != 0x676972746c74696bULL || (comm.w[1] & 0xff) != 0)
		return 0; /* not "kitltrig" */
	add(BPF_CORE_READ(task, bpf_net_context) ? 2 : 1, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
