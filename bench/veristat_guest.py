"""Inside one guest: veristat and kitl's guest agent on the same objects, in turns.

    python3 bench/veristat_guest.py LIBBPF_SO VERISTAT ROUNDS OBJECT...

Each round times `veristat -o csv OBJECTS` (its whole process) and then kitl's agent
loading and releasing every program as kitl verify's cells do (a load request, verify-only
with statistics first, then a release with its leak check), in the agent's own process,
without the host round trips; then the agent again at log level 4 only ("kitl-stats"):
one load per program, as veristat does, no reload of a failure for its whole log, so the
two kitl figures show what the saved logs of failures cost.  Prints one JSON line: the
times of each round, veristat's CSV and each program's verdict and verification time as
kitl saw it.  Run by
bench/verify.py --veristat through `kitl exec`, with the host's interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.bpf.verifier_log import parse_log
from harness.guest.agent import Agent
from harness.guest.libbpf_object import BpfObject
from harness.guest.protocol import Answer


def main() -> int:
    libbpf_so, veristat, rounds, objects = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    os.environ["KITL_LIBBPF"] = libbpf_so  # read at the agent's first load
    agent = Agent()
    programs = [(o, n) for o in objects for n, _ in BpfObject.programs_in(agent.libbpf(), o)]
    times: dict[str, list[float]] = {"veristat": [], "kitl": [], "kitl-stats": []}
    csv_text, seen = "", {}
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run(
            [veristat, "-o", "csv", *objects], capture_output=True, text=True, check=False
        )
        times["veristat"].append(time.perf_counter() - started)
        csv_text = done.stdout
        for mode, settings in MODES.items():
            started = time.perf_counter()
            for number, (obj, program) in enumerate(programs):
                args = {"object": obj, "program": program, "verify_only": True, **settings}
                answer = agent.handle({"id": number, "op": "load", "args": args})
                agent.handle({"id": number, "op": "release", "args": {}})
                if mode == "kitl":
                    seen[f"{Path(obj).name}/{program}"] = _verdict(answer)
            agent.prepared.close()
            times[mode].append(time.perf_counter() - started)
    print(json.dumps({"programs": len(programs), "times": times, "csv": csv_text, "kitl": seen}))
    return 0


# kitl verify's loads, and the same at statistics only (veristat's: no full log of failures)
MODES: dict[str, dict[str, Any]] = {
    "kitl": {"log_failures_only": True},
    "kitl-stats": {"log_level": 4},
}


def _verdict(answer: Answer) -> list[Any]:
    result = answer.get("result")
    load: dict[str, Any] = result if isinstance(result, dict) else {}
    stats = parse_log(load.get("stats_log") or load.get("log") or "").stats
    return [bool(load.get("ok")), stats.duration_us]


if __name__ == "__main__":
    raise SystemExit(main())
