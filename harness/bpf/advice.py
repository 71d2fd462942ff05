"""The verifier's common complaints in plain words, with the fixes an eBPF developer reaches
for first: data, read by harness.bpf.explain.  Pure, no I/O.

Each entry is a regular expression searched in the verifier's message (all its lines), what
it means, and the usual fixes.  The first entry that matches wins, so specific messages come
before general ones ("invalid access to packet" before the range messages that follow it on
the next line).  The patterns keep to words every kernel since 5.10 prints (the unit tests
check them on the saved logs of tests/data/verifier and the selftests' messages).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Advice:
    pattern: str
    meaning: str
    fixes: tuple[str, ...]
    topic: str  # a short name: "packet bounds", "NULL check"...


_NULL_FIXES = (
    "check the pointer right after the call that returned it: `if (!val) return 0;`",
    "test the same variable you then use; a check on a copy made before the call, or on "
    "a value re-read afterwards, does not count",
)
_CLAMP_FIXES = (
    "bound the index or offset before the access: `if (i >= ARRAY_SIZE(arr)) return 0;` "
    "or `i &= N - 1` for a power-of-two N",
    "use an unsigned type for indexes and lengths, so the lower bound is 0",
    "check the bound on the register the access uses: the compiler may test one copy and "
    "use another (`barrier_var(i)` after the check, or `volatile`, keeps them together)",
)
_COMPLEXITY_FIXES = (
    "cut the paths: fewer branches inside loops, smaller loop bounds, no unrolling",
    "loop with bpf_loop() (5.17+) or bpf_for()/bpf_repeat() (6.4+), verified once per body",
    "split the work into global (non-static) functions or tail calls: each is verified on its own",
)

TABLE: tuple[Advice, ...] = (
    Advice(
        r"invalid access to packet|offset is outside of the packet",
        "the program reads or writes packet data the verifier cannot prove lies before data_end",
        (
            "compare `ptr + size` with data_end before the access, on the pointer you then "
            "dereference: `if ((void *)(eth + 1) > data_end) return XDP_DROP;`",
            "recheck after calls that move the packet (bpf_xdp_adjust_head, "
            "bpf_skb_pull_data, bpf_skb_change_*): they invalidate every earlier check",
            "for a variable offset, bound it first (`off &= 0xff`) so the range is known",
        ),
        "packet bounds",
    ),
    Advice(
        r"invalid mem access '\w*or_null\w*'|pointer arithmetic on \w*or_null"
        r"|type=\w*_or_null expected",
        "a pointer that may be NULL (a map lookup's or a kfunc's result) is used before "
        "a NULL check",
        _NULL_FIXES,
        "NULL check",
    ),
    Advice(
        r"Possibly NULL pointer passed|NULL pointer passed to trusted",
        "a kfunc argument that must not be NULL may be NULL here",
        _NULL_FIXES,
        "NULL check",
    ),
    Advice(
        r"invalid mem access '(?:scalar|inv)'",
        "a plain number is dereferenced as a pointer: the register holds a scalar, not a "
        "pointer the verifier tracks",
        (
            "read kernel memory with bpf_probe_read_kernel() or BPF_CORE_READ(), not `*ptr`",
            "do not launder pointers through integers (casts, masks, arithmetic on a "
            "pointer's value)",
            "a pointer read from a map or from a structure is a number to the verifier "
            "unless its BTF type says otherwise (use a kptr or its id)",
        ),
        "pointer type",
    ),
    Advice(
        r"!read_ok",
        "a register is read before anything was written to it; a helper or function call "
        "also clobbers R1-R5",
        (
            "initialize the variable on every path before it is used",
            "set a return value on every path of the program and of each function (R0)",
            "in inline asm, keep what must survive a call in R6-R9",
        ),
        "uninitialized register",
    ),
    Advice(
        r"invalid (?:indirect )?read from stack|invalid size of register fill",
        "the program reads stack memory that was never written (or reads a spilled value "
        "with another size)",
        (
            "zero-initialize buffers and structs before passing them to helpers: `= {}` or "
            "__builtin_memset()",
            "struct padding counts: memset the whole struct, not member by member",
        ),
        "uninitialized stack",
    ),
    Advice(
        r"combined stack size|stack depth \d+ exceeds|stack limit|too large stack",
        "the stack exceeds 512 bytes (all frames of a chain of calls together)",
        (
            "move large buffers to a one-entry BPF_MAP_TYPE_PERCPU_ARRAY used as scratch space",
            "make helpers __always_inline, or split them, so their frames do not add up",
            "with tail calls and bpf2bpf calls together, each frame gets at most 256 bytes",
        ),
        "stack size",
    ),
    Advice(
        r"invalid (?:variable-offset )?write to stack|stack pointer arithmetic goes out"
        r"|variable stack access prohibited|invalid stack off",
        "a stack access is out of the frame, or at an offset the verifier cannot bound",
        (
            "use constant offsets into stack buffers, or bound a variable index first",
            "for an unprivileged loader, variable stack offsets are refused: index a map "
            "value instead",
        ),
        "stack access",
    ),
    Advice(
        r"unbounded memory access|unbounded min value|min value is negative"
        r"|pointer be out of bounds"
        r"|value is outside of the allowed memory range|goes out of range"
        r"|invalid access to (?:map value|memory)|invalid zero-sized read",
        "an index, offset or size is not bounded: the verifier cannot prove the access "
        "stays inside the object",
        _CLAMP_FIXES,
        "bounds",
    ),
    Advice(
        r"back-edge from insn|infinite loop detected|loop detected",
        "the verifier found a loop it cannot prove ends (before 5.3: any backward jump)",
        (
            "give the loop a constant bound the verifier can see: "
            "`for (i = 0; i < 64 && i < n; i++)`",
            "use bpf_loop() (5.17+) or bpf_for() (6.4+); before 5.3, `#pragma unroll`",
            "a loop on a value re-read from memory (volatile) never converges: bound it",
        ),
        "loop",
    ),
    Advice(
        r"BPF program is too large|too many states|complexity limit",
        "the verifier explored a million instructions over all paths without finishing",
        _COMPLEXITY_FIXES,
        "complexity",
    ),
    Advice(
        r"The sequence of \d+ jumps is too complex",
        "too many branches are pending on one path (8192): the program branches too much "
        "for the verifier to follow",
        _COMPLEXITY_FIXES,
        "complexity",
    ),
    Advice(
        r"failed to resolve CO-RE relocation|<invalid CO-RE relocation>|unknown#195896080\b",
        "a field, type or enum the program reads through CO-RE is not in this kernel's BTF "
        "(libbpf replaced the instruction with a call that always fails)",
        (
            "guard the read with bpf_core_field_exists() / bpf_core_type_exists() and give "
            "the older kernel a fallback",
            "for a field renamed across kernels, declare both layouts (`struct "
            "task_struct___old`) and pick with bpf_core_field_exists()",
        ),
        "CO-RE relocation",
    ),
    Advice(
        r"invalid func unknown#\d+",
        "the program calls a helper this kernel does not have (its id is past this "
        "kernel's last helper)",
        (
            "probe before use: `bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_x)` "
            "with a fallback, or libbpf_probe_bpf_helper() in the loader",
            "or require a kernel that has it (its arrival is named above)",
        ),
        "missing helper",
    ),
    Advice(
        r"unknown func \S+#\d+|program of this type cannot use helper"
        r"|calling kernel function \S+ is not allowed|kernel function \S+ is not allowed",
        "the helper or kfunc exists, but this program type may not call it on this kernel",
        (
            "check which program types may call it (bpf-helpers(7), or the kfunc's "
            "registration in the kernel source); later kernels often allow more",
            "call it from a program type that may (a tracing program instead of a socket "
            "filter), or use another helper",
        ),
        "helper not allowed",
    ),
    Advice(
        r"Unreleased reference|would lead to reference leak",
        "a reference was taken (a socket lookup, bpf_ringbuf_reserve, a kfunc that "
        "acquires) and not released on every path",
        (
            "release it on every path before return: bpf_sk_release(), "
            "bpf_ringbuf_submit()/discard(), the kfunc's release (bpf_task_release...)",
            "look at the early returns and error paths first",
        ),
        "reference leak",
    ),
    Advice(
        r"At program exit the register R0|R0 has value .* should have been",
        "the program's return value is outside what its hook accepts",
        (
            "return only the values the program type defines (0/1 for cgroup programs, "
            "XDP_* for XDP, TC_ACT_* for tc)",
            "make R0 a known constant on every path, not a computed value",
        ),
        "return value",
    ),
    Advice(
        r"leaks addr",
        "a kernel pointer would leak: returned, stored in a map or memory, or passed where "
        "a number is expected",
        (
            "store ids or values, not pointers, in maps and output",
            "tracing programs need CAP_PERFMON for pointer leaks to be allowed",
        ),
        "pointer leak",
    ),
    Advice(
        r"invalid bpf_context access|dereference of modified ctx ptr|invalid \w+ access off=",
        "the program reads a context (or socket) field that this program type lacks, or "
        "with the wrong size or through a moved pointer",
        (
            "read ctx fields by their declared names and sizes (`ctx->data` as __u32 in "
            "xdp_md and __sk_buff)",
            "read fields from the ctx pointer directly, not from `ctx + n`",
        ),
        "context access",
    ),
    Advice(
        r"math between \w+ pointer and|pointer arithmetic|pointer comparison prohibited"
        r"|unsupported alu operation|pointer \+= pointer|tried to (?:add|subtract)",
        "arithmetic or a comparison on a pointer the verifier does not allow",
        (
            "bound the value added to a pointer first (see bounds), and add it to the "
            "pointer, not the pointer to it",
            "compare packet pointers only with data_end; do no arithmetic on map, ctx or "
            "not-yet-checked pointers",
        ),
        "pointer arithmetic",
    ),
    Advice(
        r"type=\w+ expected=|cannot pass map_type \d+ into func|expected pointer to"
        r"|cannot pass in dynptr|arg#\d+ expected",
        "a helper or kfunc argument has the wrong type (a number where a pointer, map or "
        "callback is expected, or a map type the helper does not take)",
        (
            "pass what the helper's prototype asks for (bpf-helpers(7)); a pointer to a "
            "stack variable for `fp`, a map for `map_ptr`",
            "check the map type: e.g. bpf_map_lookup_elem takes no prog array or perf event array",
        ),
        "argument type",
    ),
    Advice(
        r"must be a rcu pointer|must be referenced or trusted|rcu_read_lock",
        "a kfunc wants a trusted or RCU-protected pointer, and this one is not",
        (
            "take the pointer from a trusted source (the program's arguments, a kfunc "
            "acquire) and call it inside bpf_rcu_read_lock()/unlock() where required",
        ),
        "trusted pointer",
    ),
    Advice(
        r"cannot write into rdonly|write into map forbidden|cannot write into",
        "the program writes to read-only memory (a .rodata map, a read-only map, a "
        "read-only pointer)",
        ("write to .data/.bss or a writable map; keep const data const",),
        "read-only memory",
    ),
    Advice(
        r"release (?:kfunc|helper) \S+ expects referenced",
        "a release function got a pointer that holds no reference (not acquired, already "
        "released, or moved off its start)",
        (
            "release exactly the pointer the acquire returned, once, on each path",
            "do not release pointers the program only borrowed (its arguments, a lookup "
            "without acquire)",
        ),
        "reference misuse",
    ),
    Advice(
        r"while holding a lock|Active lock|cannot be used inside bpf_\w+|bpf_spin_lock",
        "a section that must stay balanced (bpf_spin_lock, bpf_rcu_read_lock, "
        "bpf_preempt_disable, bpf_local_irq_save) is left open, or holds a forbidden call",
        (
            "unlock/restore on every path before return, in the reverse order of locking",
            "inside a spin lock call nothing but the unlock: copy the data out, unlock, "
            "then call helpers",
        ),
        "locking",
    ),
    Advice(
        r"(?i)expected an initialized (?:dynptr|iter\w*|irq)|cannot overwrite referenced dynptr",
        "a dynptr, iterator or irq-flag slot on the stack is used before it is initialized, "
        "or overwritten while it still holds a reference",
        (
            "initialize it first (bpf_dynptr_from_mem, bpf_ringbuf_reserve_dynptr, "
            "bpf_iter_num_new...) and destroy or submit it before reusing the slot",
        ),
        "dynptr/iterator",
    ),
    Advice(
        r"misaligned|unaligned",
        "an access is not naturally aligned (checked with BPF_F_STRICT_ALIGNMENT, and "
        "always for some pointer types)",
        ("read through a properly aligned type, or copy into an aligned local first",),
        "alignment",
    ),
    Advice(
        r"unreachable insn|jump out of range|last insn is not an exit",
        "the instructions themselves are malformed: dead code or a jump outside the program",
        (
            "rebuild with a current clang (-O2 -g -target bpf); hand-written asm must end "
            "every path with exit",
        ),
        "malformed program",
    ),
)


# "R6 invalid mem access 'scalar'" where the state says R6=0: not a number taken for a
# pointer but a NULL pointer (initialized to NULL, or a lookup's failed path) dereferenced
NULL_DEREFERENCE = Advice(
    r"R(\d+) invalid mem access '(?:scalar|inv)'",
    "the register is 0 on this path: a pointer that is NULL here (set to NULL, or the "
    "result of a lookup on the path where it failed) is dereferenced",
    _NULL_FIXES,
    "NULL check",
)


@cache
def _compiled() -> tuple[tuple[re.Pattern[str], Advice], ...]:
    return tuple((re.compile(a.pattern), a) for a in TABLE)


def advise(message: str) -> Advice | None:
    """The first entry whose pattern is in the verifier's message, or None."""
    return next((a for pattern, a in _compiled() if pattern.search(message)), None)
