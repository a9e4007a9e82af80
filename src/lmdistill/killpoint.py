"""Test hook: die with SIGKILL at a named point of a run, to test that `--resume` recovers from it.

`LMDISTILL_TEST_KILL_AT=<point>:<n>` (or `arm(point, n)` in a forked test process) kills the process
the n-th time `hit(point)` is reached. The points are one-line calls placed where a run writes
state (a checkpoint, a stage result, the cached teacher, the student, the report) or between
optimizer steps. Unarmed, which is always the case outside the tests, `hit` is one comparison.
"""

from __future__ import annotations

import os
import signal

_armed: tuple[str, int] | None = None
_count = 0
hits: dict[str, int] = {}  # filled in counting mode, arm("*"): how often each point was reached


def arm(point: str | None, n: int = 1) -> None:
    """Kill the process at the n-th `hit(point)` from now on; `arm(None)` disarms; `arm("*")` kills
    nowhere and counts every point's hits in `hits`."""
    global _armed, _count
    _armed, _count = ((point, int(n)) if point else None), 0
    hits.clear()


def _arm_from_env() -> None:
    spec = os.environ.get("LMDISTILL_TEST_KILL_AT")
    if spec:
        point, _, n = spec.rpartition(":")
        arm(point, int(n)) if point else arm(spec, 1)


def hit(point: str) -> None:
    """Mark that the run reached `point`; dies here when this is the armed point's n-th hit."""
    global _count
    if _armed is None:
        return
    if _armed[0] == "*":
        hits[point] = hits.get(point, 0) + 1
        return
    if _armed[0] != point:
        return
    _count += 1
    if _count == _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)


_arm_from_env()
