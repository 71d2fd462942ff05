"""Replies of the guest agent as tests build them: the fields a test cares about, the
rest left blank (the agent always sends them all)."""

from __future__ import annotations

from typing import Any

from harness.guest.replies import LoadReply, MapDumpReply, TestRunReply

# what a load reply always carries, blank: the program, its types, figures, the log
BLANK_LOAD: dict[str, Any] = {
    "program": "",
    "section": "",
    "prog_type": "",
    "attach_type": "",
    "ok": False,
    "errno": 0,
    "log": "",
    "log_truncated": False,
    "libbpf_messages": "",
    "load_ns": 0,
    "insn_cnt": 0,
    "prog_id": None,
    "xlated_len": None,
    "jited_len": None,
    "verified_insns": None,
}


def load_reply(**wire: Any) -> LoadReply:
    """A load's reply from the keys a test gives, as the agent would send them."""
    return LoadReply.from_wire({**BLANK_LOAD, **wire})


def run_reply(retval: int, errno: int) -> TestRunReply:
    return TestRunReply(retval, duration_ns=0, errno=errno, data_out_hex="", ctx_out_hex="")


def map_dump(maps: dict[str, list[list[str]]]) -> MapDumpReply:
    return MapDumpReply.from_wire(maps)
