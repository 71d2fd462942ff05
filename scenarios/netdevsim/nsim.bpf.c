// SPDX-License-Identifier: GPL-2.0
/* XDP on a netdevsim port: natively (drv) and offloaded to the simulated device (hw).
 * An offloaded program is checked by the kernel verifier and by the device's own
 * (netdevsim says "Hello from netdevsim!" in the log); it may use only maps bound to the
 * same device, so a host map is refused. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

SEC("xdp")
int nsim_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int nsim_count(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&counts, &key);

	if (value)
		__sync_fetch_and_add(value, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
