"""Flower's SuperNode with a shorter idle poll (``python -m pathfl.fl.flower.fast_supernode ARGS``,
the same arguments as ``flower-supernode``).

flwr 1.42's SuperNode sleeps a fixed 3 s whenever the SuperLink has no message for it
(``flwr/supernode/start_client_internal.py``), which adds 1.5 s on average — up to 3 s — to
every round's latency, and waits in 0.5 s steps for the ClientApp's reply before it sends it
on (another 0.25 s on average per message). This entry point caps the idle sleeps at
``PATHFL_SUPERNODE_POLL_S`` seconds (default 0.5) and the shorter waits at
``PATHFL_SUPERNODE_WAIT_S`` (default 0.05: they only look at the SuperNode's own in-memory
state) by giving that module a ``time`` whose ``sleep`` is capped; nothing else changes. It
relies on that module's ``time`` import, so it checks the pinned Flower version and falls back
to the unmodified SuperNode for any other one. It also starts every ClientApp process through
:mod:`pathfl.fl.flower.fast_clientapp` (fewer imports per message). ``pathfl fl site
--flower-poll`` (and the simulation with ``fast_poll=False``) use the unmodified SuperNode.

It also ties the SuperNode's lifetime to the pathfl command that started it
(:func:`pathfl.fl.flower.lifetime.watch_parent`) and, on its way out, stops the SuperExec and
ClientApps below it (:func:`pathfl.fl.flower.lifetime.stop_descendants`).
"""

from __future__ import annotations

import logging
import os
import sys
import time as _time
from typing import Any

logger = logging.getLogger(__name__)

PATCHED_FLOWER = "1.42.0"
ENV_POLL = "PATHFL_SUPERNODE_POLL_S"
ENV_WAIT = "PATHFL_SUPERNODE_WAIT_S"
ENV_FULL_CLIENTAPP = "PATHFL_FULL_CLIENTAPP"  # set: Flower's own flwr-clientapp (benchmark)
IDLE_SLEEP_S = 1.0  # Flower's sleeps from this long on are idle polls (3 s); shorter are waits


class _CappedTime:
    """The ``time`` module, except that ``sleep`` waits at most ``cap_s`` (idle polls) or
    ``wait_cap_s`` (sleeps shorter than :data:`IDLE_SLEEP_S`)."""

    def __init__(self, cap_s: float, wait_cap_s: float | None = None) -> None:
        self.cap_s = cap_s
        self.wait_cap_s = cap_s if wait_cap_s is None else wait_cap_s

    def sleep(self, seconds: float) -> None:
        seconds = float(seconds)
        cap = self.cap_s if seconds >= IDLE_SLEEP_S else self.wait_cap_s
        _time.sleep(min(seconds, cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def patch_poll(cap_s: float, wait_cap_s: float | None = None) -> bool:
    """Cap the SuperNode's idle sleeps; returns False (and changes nothing) when the installed
    Flower is not the version this was checked against."""
    import flwr
    from flwr.supernode import start_client_internal as sci

    version = getattr(flwr, "__version__", "")
    if version != PATCHED_FLOWER or getattr(sci, "time", None) is not _time:
        logger.warning("flwr %s: SuperNode poll left at Flower's default", version)
        return False
    sci.time = _CappedTime(cap_s, wait_cap_s)  # type: ignore[assignment]
    return True


def main() -> None:
    from pathfl.fl.flower.lifetime import stop_descendants, watch_parent

    watch_parent()  # pathfl gone (even SIGKILLed) → SIGTERM → Flower's own clean exit,
    # which then also ends this SuperNode's SuperExec and ClientApps (Flower leaves them to
    # notice by themselves; a ClientApp can retry the gone SuperNode for many seconds)
    try:
        from flwr.supercore.exit import add_exit_handler

        add_exit_handler(stop_descendants, run_before_force_exit=True)
    except ImportError:  # another Flower version: its children watch their parent alone
        logger.warning("flwr without supercore.exit: SuperNode children not stopped on exit")
    patched = patch_poll(
        float(os.environ.get(ENV_POLL, "0.5")), float(os.environ.get(ENV_WAIT, "0.05"))
    )
    if patched and not os.environ.get(ENV_FULL_CLIENTAPP):
        from pathlib import Path

        from pathfl.fl.flower.fast_clientapp import install_shim

        install_shim(Path.cwd() / "bin")  # the working directory is the SuperNode's log folder
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
