// SPDX-License-Identifier: GPL-2.0
/* Programs annotated the way the kernel's verifier selftests are, one per thing test_loader
 * checks: a verdict with a return value, a rejection with its messages in order, a program
 * unprivileged users may not load as it is, an auxiliary program, and a check kitl skips. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bpf_misc_min.h"

SEC("xdp")
__success __retval(2)
int passes(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
__failure __msg("invalid access to packet") __msg("processed {{[0-9]+}} insns")
int reads_past_the_packet(struct xdp_md *ctx)
{
	return *(u8 *)(long)ctx->data; /* no bounds check */
}

SEC("socket")
__success __failure_unpriv __msg_unpriv("R0 leaks addr as return value")
__retval(POINTER_VALUE)
long returns_a_pointer(struct __sk_buff *skb)
{
	return (long)skb;
}

SEC("socket")
__auxiliary
int helper_for_the_others(struct __sk_buff *skb)
{
	return 0;
}

SEC("xdp")
__success __xlated("0: r0 = 2")
int checks_the_program_text(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
