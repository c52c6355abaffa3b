"""glibc malloc tuning for CPU extraction.

With glibc's defaults, every activation buffer above the (dynamic) mmap threshold is a fresh
``mmap`` that the kernel must zero-fill page by page, and freeing it is a ``munmap``; a forward
pass allocates and frees such buffers per layer, so on CPU half the time went to the kernel
(sys time ≈ user time; MobileNetV2 batch 32, one thread: 4.3 tiles/s untuned, 8.9 tuned).
:func:`tune_malloc` raises the mmap threshold and the trim threshold with ``mallopt`` (the
same effect as ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...``,
without the environment variable), so freed buffers stay in the heap and are reused.

The cost: memory freed by the process is no longer returned to the kernel while it runs, so the
resident size stays at its peak (it is not higher than the untuned peak; see BENCHMARKS.md).
``PATHFL_MALLOC_TUNING=0`` turns it off. On anything but glibc Linux it does nothing (logged at
debug level). Settings are process-wide and inherited by forked DataLoader workers."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

ENV_VAR = "PATHFL_MALLOC_TUNING"

# mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: what is set: allocations up to 2 GiB - 1 come from the heap; the heap top is never trimmed
#: below 2 GiB - 1 of free space (mallopt takes a C int, so this is the largest value)
SETTINGS: dict[str, tuple[int, int]] = {
    "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 2**31 - 1),
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 2**31 - 1),
}

_applied: dict[str, int] | None = None


def tuning_enabled() -> bool:
    """False when ``PATHFL_MALLOC_TUNING`` is 0/false/no/off."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # only glibc has it (musl does not)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(*, enabled: bool | None = None) -> dict[str, int]:
    """Apply :data:`SETTINGS` with ``mallopt`` once per process; returns what was set
    (name → value), or ``{}`` when disabled (``enabled=False`` or ``PATHFL_MALLOC_TUNING=0``)
    or not on glibc. Idempotent: later calls return the same mapping without calling
    ``mallopt`` again. Call it before the big allocations: buffers already mapped stay mapped
    until they are freed."""
    global _applied
    if enabled is None:
        enabled = tuning_enabled()
    if not enabled:
        logger.debug("malloc tuning disabled (%s=0)", ENV_VAR)
        return {}
    if _applied is not None:
        return dict(_applied)
    libc = _glibc()
    if libc is None:
        logger.debug("malloc tuning skipped: not glibc Linux (%s)", sys.platform)
        _applied = {}
        return {}
    applied = {}
    for name, (param, value) in SETTINGS.items():
        if libc.mallopt(param, value) == 1:
            applied[name] = value
        else:
            logger.debug("mallopt(%s, %d) refused", name, value)
    logger.debug("malloc tuning applied: %s", applied)
    _applied = applied
    return dict(applied)
