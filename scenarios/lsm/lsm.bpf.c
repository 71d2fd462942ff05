// SPDX-License-Identifier: GPL-2.0
/* BPF LSM: file_open refuses, with EPERM, every file named "kitl-denied";
 * socket_connect refuses, with EPERM, IPv4 connects to port 9 (discard). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define EPERM 1

enum { DENIED, NKEYS };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NKEYS);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

SEC("lsm/file_open")
int BPF_PROG(deny_marked_file, struct file *file, int ret)
{
	union {
		char c[16];
		__u64 w[2];
	} name = {};
	const unsigned char *dname;
	__u32 key = DENIED;
	__u64 *value;

	if (ret)
		return ret; /* an earlier program already refused */
	dname = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	if (bpf_probe_read_kernel_str(name.c, sizeof(name.c), dname) < 0)
		return 0;
	/* "kitl-den" and "ied\0" as little-endian words */
	if (name.w[0] != 0x6e65642d6c74696bULL || (name.w[1] & 0xffffffff) != 0x00646569)
		return 0;
	value = bpf_map_lookup_elem(&counts, &key);
	if (value)
		__sync_fetch_and_add(value, 1);
	return -EPERM;
}

#define AF_INET 2

SEC("lsm/socket_connect")
int BPF_PROG(deny_port_9, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	struct sockaddr_in sin = {};

	if (ret)
		return ret;
	if (addrlen < (int)sizeof(sin) || bpf_probe_read_kernel(&sin, sizeof(sin), address))
		return 0;
	if (sin.sin_family != AF_INET || sin.sin_port != __builtin_bswap16(9))
		return 0;
	return -EPERM;
}

char LICENSE[] SEC("license") = "GPL";
