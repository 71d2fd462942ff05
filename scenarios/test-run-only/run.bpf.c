// SPDX-License-Identifier: GPL-2.0
/* Programs run only through BPF_PROG_TEST_RUN, with a context and no packet:
 * a raw tracepoint program (its context is the tracepoint's u64 arguments) and a
 * syscall program (its context is whatever struct the caller passes, copied back out). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

static __always_inline void store(__u32 key, __u64 v)
{
	bpf_map_update_elem(&seen, &key, &v, BPF_ANY);
}

/* returns arg0 + arg1 and keeps arg1 in seen[0] */
SEC("raw_tp")
int add_args(__u64 *ctx)
{
	store(0, ctx[1]);
	return ctx[0] + ctx[1];
}

struct mul_args {
	__u32 a;
	__u32 b;
	__u64 product;
};

/* returns a * b and keeps it in seen[1] */
SEC("syscall")
int multiply(struct mul_args *args)
{
	__u64 product = (__u64)args->a * args->b;

	args->product = product;
	store(1, product);
	return product;
}

char LICENSE[] SEC("license") = "GPL";
