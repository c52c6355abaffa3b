"""Process lifetime for commands that start other processes (``pathfl fl ...``, ``pathfl
demo``): SIGTERM and SIGINT stop the command *and* every process it started, and a child whose
pathfl parent died — even by SIGKILL, which no handler sees — exits by itself.

* :func:`stop_on_signals` (in the command): SIGTERM raises :class:`Terminated` (a
  ``KeyboardInterrupt``) in the main thread, so the ``finally``/``with`` blocks that stop
  child processes run exactly as for Ctrl-C; the command then exits 130 (SIGINT) or 143
  (SIGTERM), or 0 for a service whose normal end is being stopped (``fl server``/``fl site``).
* :func:`die_with_parent` (``preexec_fn`` of every child pathfl starts; Linux): the kernel
  sends the child SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``).
* :func:`watch_parent` (in pathfl's own processes below a command: site worker, SuperNode,
  ServerApp, ClientApp; any POSIX system): a thread that SIGTERMs its own process once the
  command named in ``PATHFL_PARENT_PID`` is gone, and ends it outright if that hangs.
* :func:`second_signal_kills` (while stopping): a second Ctrl-C/SIGTERM SIGKILLs the
  process groups at once instead of waiting for their clean exit.
* :func:`descendants` & co.: the process tree from ``/proc`` (pid + start time, so a reused
  pid is never signalled), to stop Flower's helpers that run in sessions of their own.
* :func:`python_module_argv` / :func:`python_env`: pathfl's Python children never depend on
  the caller's working directory (``python -P``: a ``./pathfl`` folder there is not
  imported) yet import the same pathfl as this process (its folder goes on ``PYTHONPATH``
  when it is not an installed package).

Flower's own helper processes (``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``)
already watch their parent (``--parent-pid``), so they follow the SuperLink/SuperNode down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import site
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pathfl.interrupts import PR_SET_PDEATHSIG, Interrupted, prctl_fn

logger = logging.getLogger(__name__)

EXIT_SIGINT = 128 + signal.SIGINT  # 130, as a shell reports a Ctrl-C'd command
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
ENV_PARENT_PID = "PATHFL_PARENT_PID"
_watcher: threading.Thread | None = None  # this process's watch_parent thread


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs."""


# What a stop request looks like here: Ctrl-C's KeyboardInterrupt, this module's Terminated,
# or the CLI-wide :class:`pathfl.interrupts.Interrupted` (SIGINT/SIGTERM under the entry point)
STOP_REQUESTS: tuple[type[BaseException], ...] = (KeyboardInterrupt, Interrupted)


def stop_signal(e: BaseException) -> int:
    """The signal a stop request stands for (SIGINT, or SIGTERM)."""
    if isinstance(e, Interrupted):
        return e.signum
    return signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_on_signals(*, service: bool = False) -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` inside the block, and an interrupt that leaves
    it into ``SystemExit``: 130 after SIGINT, 143 after SIGTERM — or 0 with ``service`` (a
    long-running process whose documented way to stop is a signal). Outside the main thread
    (where no signal handler can be set) the block runs unchanged."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    watch_parent()
    try:
        yield
    except STOP_REQUESTS as e:
        sig = stop_signal(e)
        logger.warning("stopped by %s", "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C (SIGINT)")
        raise SystemExit(0 if service else 128 + sig) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def second_signal_kills(kill_now: Callable[[], None]) -> Iterator[None]:
    """While the block stops processes (and waits for them), a further SIGINT/SIGTERM calls
    ``kill_now`` (SIGKILL the groups) instead of interrupting the clean-up half-way, which
    would leave processes behind."""
    if not _in_main_thread():
        yield
        return

    def _hurry(signum: int, frame: object) -> None:
        logger.warning("%s while stopping: killing at once", signal.Signals(signum).name)
        kill_now()

    previous = {s: signal.signal(s, _hurry) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGTERM the child when this process dies
    (``PR_SET_PDEATHSIG``; it survives ``exec``), or None where that is not available. The
    signal follows the *thread* that forks, so it is only set up from the main thread (a
    pool thread's exit would kill the child); elsewhere :func:`watch_parent` is the guard."""
    prctl = prctl_fn()
    if prctl is None or not _in_main_thread():
        return None
    parent = os.getpid()

    def _preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(EXIT_SIGTERM)

    return _preexec


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` naming this process as the parent that :func:`watch_parent` watches."""
    return {**env, ENV_PARENT_PID: str(os.getpid())}


def watch_parent(*, interval_s: float = 0.5, grace_s: float = 5.0) -> threading.Thread | None:
    """In a process started (directly or through Flower) by a pathfl command, whose pid
    ``PATHFL_PARENT_PID`` names: a daemon thread that sends this process SIGTERM once that
    command is gone (even SIGKILLed), so its own clean-up runs, and ends it outright
    ``grace_s`` later if that clean-up hangs (Flower's ServerApp retries a SuperLink that is
    gone for about a minute). Returns None when no command is named."""
    global _watcher
    try:
        parent = int(os.environ.get(ENV_PARENT_PID, ""))
    except ValueError:
        return None
    if _watcher is not None and _watcher.is_alive():
        return _watcher  # one watch per process
    started = _start_time(parent)

    def _watch() -> None:
        while _alive(parent, started):
            time.sleep(interval_s)
        logger.warning("pathfl process %d is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        logger.error("still running %.0f s after SIGTERM: exiting", grace_s)
        os._exit(EXIT_SIGTERM)

    _watcher = threading.Thread(target=_watch, name="pathfl-parent-watch", daemon=True)
    _watcher.start()
    return _watcher


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def _alive(pid: int, started: int | None) -> bool:
    """Whether ``pid`` runs and is still the process seen at first (not a reused pid)."""
    if started is None:
        if Path("/proc").is_dir():
            return False  # it was gone already when the watch began
        try:  # no /proc: signal 0 says whether the pid exists
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    f = _stat_fields(pid)
    return f is not None and _running(f[0]) and int(f[19]) == started


def kill_groups(pgids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every process group in ``pgids`` that still exists."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def python_module_argv(module: str, *args: str) -> list[str]:
    """``python -P -m MODULE ARGS`` with this interpreter: ``-P`` (Python 3.11) keeps the
    working directory off ``sys.path`` while ``PYTHONPATH`` still counts (``-I`` would drop
    it)."""
    return [sys.executable, "-P", "-m", module, *args]


def python_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the folder this pathfl was imported from first on ``PYTHONPATH``, unless
    that folder is a site-packages directory the child finds anyway (a checkout run without
    being installed then still works under ``-P``)."""
    import pathfl

    root = str(Path(pathfl.__file__).resolve().parent.parent)
    installed = {site.getusersitepackages(), *site.getsitepackages()}
    if root in {str(Path(p).resolve()) for p in installed}:
        return dict(env)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if parts[:1] != [root]:
        parts = [root, *(p for p in parts if p != root)]
    return {**env, "PYTHONPATH": os.pathsep.join(parts)}


def wait_forwarding_signals(popen: subprocess.Popen, *, grace_s: float = 60.0) -> int:
    """Wait for ``popen`` (started in its own session, so a terminal's Ctrl-C reaches it only
    through here). On Ctrl-C/SIGTERM the same signal goes once to its process group, which
    then has ``grace_s`` to stop cleanly before SIGKILL (at once on a second signal); the
    interrupt is then re-raised. Returns the exit code."""
    try:
        return popen.wait()
    except STOP_REQUESTS as e:
        sig = stop_signal(e)
        with second_signal_kills(lambda: kill_groups([popen.pid])):
            kill_groups([popen.pid], sig)
            try:
                popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                kill_groups([popen.pid])
                popen.wait()
        raise


# ---------------------------------------------------------------- the process table (/proc)
Proc = tuple[int, int]  # (pid, start time in clock ticks): a pid reused later is another Proc


def _proc_stats() -> list[tuple[Proc, str, int, int]]:
    """``((pid, start), state, ppid, pgrp)`` of every process in ``/proc`` (empty without)."""
    rows = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ... starttime(22nd)": comm may hold spaces
            f = stat.read_text().rsplit(")", 1)[1].split()
            rows.append(((int(stat.parent.name), int(f[19])), f[0], int(f[1]), int(f[2])))
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return rows


def _running(state: str) -> bool:
    return state not in ("Z", "X")  # zombies have exited (they wait to be reaped)


def group_running(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs. Zombies (exited, waiting for init
    to reap them — orphaned children of a killed leader may wait a second or two) count as
    gone. Without ``/proc``, any member, zombie or not, counts as running."""
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    return any(pgrp == pgid and _running(state) for _, state, _, pgrp in _proc_stats())


def descendants(pids: Iterable[int]) -> set[Proc]:
    """Every running process below ``pids`` (children, their children, ...), whatever
    session it moved to — Flower starts its SuperExec in a session of its own."""
    children: dict[int, list[Proc]] = {}
    for proc, state, ppid, _ in _proc_stats():
        if _running(state):
            children.setdefault(ppid, []).append(proc)
    found: set[Proc] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def still_running(procs: Iterable[Proc]) -> set[Proc]:
    """Those of ``procs`` that still run (same pid *and* start time)."""
    wanted = set(procs)
    return {p for p, state, _, _ in _proc_stats() if p in wanted and _running(state)}


def signal_procs(procs: Iterable[Proc], sig: int) -> None:
    """Send ``sig`` to those of ``procs`` that still run (never to a reused pid)."""
    for pid, _ in still_running(procs):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(procs: Iterable[Proc], *, deadline: float, poll_s: float = 0.05) -> bool:
    """Wait until none of ``procs`` runs or ``time.monotonic()`` passes ``deadline``."""
    procs = set(procs)
    while procs:
        procs = still_running(procs)
        if not procs or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return not procs


def stop_descendants(*, grace_s: float = 2.0) -> None:
    """SIGTERM every process below this one, SIGKILL what still runs ``grace_s`` later (for
    a process that is about to exit and must not leave its children behind)."""
    procs = descendants([os.getpid()])
    signal_procs(procs, signal.SIGTERM)
    if not wait_gone(procs, deadline=time.monotonic() + grace_s):
        signal_procs(procs | descendants([os.getpid()]), signal.SIGKILL)
