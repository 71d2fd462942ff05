/* SPDX-License-Identifier: GPL-2.0 */
/* The test_loader annotations of the kernel's tools/testing/selftests/bpf/progs/bpf_misc.h
 * (7.x form: "comment:<counter>:<tag>"), the few these test objects use. */
#ifndef __BPF_MISC_MIN_H
#define __BPF_MISC_MIN_H
#define XSTR(s) STR(s)
#define STR(s) #s
#define __test_tag(tag) __attribute__((btf_decl_tag("comment:" XSTR(__COUNTER__) ":" tag)))
#define __success __test_tag("test_expect_success")
#define __failure __test_tag("test_expect_failure")
#define __failure_unpriv __test_tag("test_expect_failure_unpriv")
#define __msg(msg) __test_tag("test_expect_msg=" msg)
#define __msg_unpriv(msg) __test_tag("test_expect_msg_unpriv=" msg)
#define __retval(val) __test_tag("test_retval=" XSTR(val))
#define __log_level(lvl) __test_tag("test_log_level=" #lvl)
#define __auxiliary __test_tag("test_auxiliary")
#define __xlated(msg) __test_tag("test_expect_xlated=" msg)
#define POINTER_VALUE 0xbadcafe
#endif
