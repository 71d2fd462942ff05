// SPDX-License-Identifier: GPL-2.0
/* A __kconfig extern for the libbpf binding tests: the program returns the value libbpf
 * resolved from the kernel config text it was given (LoadOptions.kconfig). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

extern int CONFIG_KITL_PROBE __kconfig __weak;

SEC("xdp")
int xdp_kconfig(struct xdp_md *ctx)
{
	return CONFIG_KITL_PROBE;
}

char LICENSE[] SEC("license") = "GPL";
