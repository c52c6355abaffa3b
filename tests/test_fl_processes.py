"""Stopping a managed process stops its whole process group: no member still runs when
``stop``/``kill`` return, including children orphaned when the leader dies (the race behind a
CI failure: the check ran while the orphans were still exiting)."""

from __future__ import annotations

import sys
import time

import pytest

from pathfl.fl.flower.processes import group_running, start_process

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups via /proc")

# a leader that starts two children which ignore SIGTERM, like helpers that outlive a parent
_SCRIPT = "trap '' TERM; (trap '' TERM; sleep 300) & (trap '' TERM; sleep 300) & wait"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_stop_leaves_no_member_of_the_group_running(tmp_path, how: str) -> None:
    proc = start_process("grp", ["bash", "-c", _SCRIPT], log_path=tmp_path / "log", env={})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _members(proc.pid) < 3:
        time.sleep(0.05)
    assert _members(proc.pid) == 3 and group_running(proc.pid)
    if how == "stop":
        proc.stop(timeout_s=0.5)  # SIGTERM is ignored: falls through to SIGKILL
    else:
        proc.kill()
    assert not proc.alive()
    assert not group_running(proc.pid)  # immediately, not after init reaped the orphans


def test_group_running_is_false_for_an_unknown_group() -> None:
    assert not group_running(2**22 + 12345)  # above Linux's default pid_max


def _members(pgid: int) -> int:
    """Running members of the group, counted with ps, independently of the code under test."""
    import subprocess

    out = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True).stdout
    return sum(
        1
        for line in out.splitlines()
        if line.split()[0] == str(pgid) and line.split()[1][0] not in "ZX"
    )
