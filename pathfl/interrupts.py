"""Ctrl-C and SIGTERM for every command: stop within seconds, keep what is done, leave no
process behind.

The CLI entry point installs one handler for SIGINT and SIGTERM (:func:`handling_signals`).
The first signal raises :class:`Interrupted` in the main thread, so ``finally`` blocks and
context managers run: queued work is cancelled, temporary files are removed, manifests keep
the rows of finished slides. The exit code is ``128 + signal number``: 130 for SIGINT, 143
for SIGTERM. A second signal ends the process at once (``os._exit``).

Worker processes (tile's process pool, extract's ``DataLoader`` workers, the demo's slide
generator) call :func:`worker_setup` first: they ignore SIGINT (a terminal sends it to the
whole process group; the parent decides what a Ctrl-C does), keep the default SIGTERM (the
parent stops them with it) and, on Linux, get SIGKILL when their parent dies, so nothing
survives even a SIGKILL of the parent. :class:`WorkerPool` wraps the
process pools; commands that start whole pathfl/Flower processes use
:mod:`pathfl.fl.flower.lifetime` (own session, parent-death signal, signal forwarding)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import functools
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143
PR_SET_PDEATHSIG = 1

_received: list[int] = []
_active: list[bool] = []  # non-empty inside handling_signals()


class Interrupted(BaseException):
    """The first SIGINT or SIGTERM, raised in the main thread once :func:`handling_signals`
    is active. A ``BaseException`` (as ``KeyboardInterrupt``) so that the ``except Exception``
    blocks that keep a batch going do not swallow it; not a ``KeyboardInterrupt``, so the
    command-line framework does not turn it into "Aborted!" with exit code 1."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handle(signum: int, _frame: FrameType | None) -> None:
    if _received:
        name = signal.Signals(signum).name
        os.write(2, f"\npathfl: second {name}, stopping now\n".encode())
        os._exit(128 + signum)
    _received.append(signum)
    raise Interrupted(signum)


def received() -> int | None:
    """The signal that interrupted this process, if any."""
    return _received[0] if _received else None


def checkpoint() -> None:
    """Raise :class:`Interrupted` if a signal came. Long loops call this once per item: a
    signal that arrives while Python runs a finaliser or weakref callback (garbage
    collection) raises there, and Python prints "Exception ignored" and goes on — the
    signal is recorded but its exception is lost. Outside :func:`handling_signals` (library
    use, a signal that already ended an earlier command) it does nothing."""
    if _active and _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM raise :class:`Interrupted` (a second one exits at
    once); the previous handlers come back afterwards unless a signal came. Only the main
    thread can install handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _handle) for s in STOP_SIGNALS}
    _active.append(True)
    try:
        yield
    finally:
        _active.clear()
        if not _received:  # once interrupted, a second signal must still end the process
            for s, h in previous.items():
                signal.signal(s, h)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block SIGINT/SIGTERM in this thread while it starts worker processes: they inherit
    the mask and unblock it only after :func:`worker_setup` ignored SIGINT, so a Ctrl-C during
    their start-up never kills them half-started. For this process the signal stays pending
    (or another thread takes it): it is handled, not lost."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@functools.cache
def prctl_fn() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux; the running program's own symbols, no library search), or
    None elsewhere. Looked up once (a ``preexec_fn`` must not load libraries after fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) to send ``sig`` to this process when
    its parent ends; exits at once if the parent (``parent_pid``) is already gone. Returns
    whether it is armed (False on other systems)."""
    prctl = prctl_fn()
    if prctl is None or prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the signal was armed
    return True


def worker_setup(parent_pid: int | None = None) -> None:
    """First thing in a worker process: ignore SIGINT, default SIGTERM, die with the parent,
    then unblock the signals :func:`signals_blocked` held during the start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _received.clear()  # a forked worker inherits the parent's state
    die_with_parent(parent_pid)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _pool_init(parent_pid: int, initializer: Callable[..., None] | None, args: tuple) -> None:
    worker_setup(parent_pid)
    if initializer is not None:
        initializer(*args)


class WorkerPool:
    """A ``ProcessPoolExecutor`` whose workers ignore SIGINT and die with this process, and
    that is stopped — not waited for — when its ``with`` block is left by an exception:
    queued work is cancelled and the workers are terminated. ``context`` is a
    multiprocessing start method (None: the platform's default)."""

    def __init__(
        self,
        n_workers: int,
        *,
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
        context: str | None = "spawn",
    ) -> None:
        self.executor = cf.ProcessPoolExecutor(
            max_workers=n_workers,
            mp_context=mp.get_context(context),
            initializer=_pool_init,
            initargs=(os.getpid(), initializer, initargs),
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        with signals_blocked():  # workers start on demand, inside submit
            return self.executor.submit(fn, *args, **kwargs)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterator[Any]:
        """Results in order, like ``Executor.map``."""
        futures = [self.submit(fn, item) for item in items]
        return (f.result() for f in futures)

    def stop(self, *, futures: Iterable[cf.Future] = (), grace_s: float = 0.0) -> None:
        """Cancel what has not started; give ``futures`` still running up to ``grace_s``
        seconds to finish; terminate the workers (SIGKILL after 2 s) and reap them."""
        procs = list((getattr(self.executor, "_processes", None) or {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        running = [f for f in futures if not f.done()]
        if running and grace_s > 0:
            cf.wait(running, timeout=grace_s)
        for p in procs:
            with contextlib.suppress(Exception):
                p.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                p.join(timeout=2)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=2)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.executor.shutdown(wait=True)
        else:
            self.stop()
