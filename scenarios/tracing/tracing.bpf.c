// SPDX-License-Identifier: GPL-2.0
/*
 * One counter per hook type.  The drive renames itself "kitltrig" (prctl PR_SET_NAME) and
 * then calls getppid() 5 times and opens /dev/null 3 times; every program counts only
 * events of a task with that name, so each count is exact whatever else the guest runs.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define NR_getppid 110 /* x86_64 */

enum { KPROBE, TRACEPOINT, RAW_TP, TP_BTF, FENTRY, FEXIT, KRETPROBE, NKEYS };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NKEYS);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

static __always_inline int is_trigger(void)
{
	union {
		char c[16];
		__u64 w[2];
	} comm = {};

	bpf_get_current_comm(comm.c, sizeof(comm.c));
	/* "kitltrig" read as a little-endian u64, then the terminating NUL */
	return comm.w[0] == 0x676972746c74696bULL && (comm.w[1] & 0xff) == 0;
}

static __always_inline void count(__u32 key)
{
	__u64 *value;

	if (!is_trigger())
		return;
	value = bpf_map_lookup_elem(&counts, &key);
	if (value)
		__sync_fetch_and_add(value, 1);
}

SEC("kprobe/__x64_sys_getppid")
int kprobe_getppid(struct pt_regs *ctx)
{
	count(KPROBE);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int tp_getppid(struct trace_event_raw_sys_enter *ctx)
{
	count(TRACEPOINT);
	return 0;
}

SEC("raw_tracepoint/sys_enter")
int raw_tp_getppid(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1] == NR_getppid)
		count(RAW_TP);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(tp_btf_getppid, struct pt_regs *regs, long id)
{
	if (id == NR_getppid)
		count(TP_BTF);
	return 0;
}

SEC("fentry/do_sys_openat2")
int BPF_PROG(fentry_openat2, int dfd, const char *filename, struct open_how *how)
{
	count(FENTRY);
	return 0;
}

/* counts the opens that succeeded, from the traced function's return value */
SEC("fexit/do_sys_openat2")
int BPF_PROG(fexit_openat2, int dfd, const char *filename, struct open_how *how, long ret)
{
	if (ret >= 0)
		count(FEXIT);
	return 0;
}

/* counts the returns of do_sys_openat2 that gave a descriptor */
SEC("kretprobe/do_sys_openat2")
int BPF_KRETPROBE(kretprobe_openat2, long ret)
{
	if (ret >= 0)
		count(KRETPROBE);
	return 0;
}

/* One ring buffer record per getppid() of the trigger: counted by `events:`. */
SEC("tracepoint/syscalls/sys_enter_getppid")
int tp_getppid_event(struct trace_event_raw_sys_enter *ctx)
{
	__u32 *record;

	if (!is_trigger())
		return 0;
	record = bpf_ringbuf_reserve(&events, sizeof(*record), 0);
	if (record) {
		*record = NR_getppid;
		bpf_ringbuf_submit(record, 0);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
