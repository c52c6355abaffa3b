"""glibc malloc tuning of CPU extraction (pathfl.features.malloc): idempotent, returns what it
set, does nothing when disabled, and really keeps freed buffers in the heap (no page faults
when a large buffer is allocated again; measured in fresh processes, no timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pathfl.features import malloc

GLIBC = malloc._glibc() is not None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc Linux only")


@needs_glibc
def test_tune_malloc_is_idempotent_and_returns_what_it_set(monkeypatch):
    monkeypatch.delenv(malloc.ENV_VAR, raising=False)
    first = malloc.tune_malloc()
    assert first == {name: value for name, (_p, value) in malloc.SETTINGS.items()}

    def no_second_mallopt():
        raise AssertionError("mallopt called again")

    monkeypatch.setattr(malloc, "_glibc", no_second_mallopt)
    assert malloc.tune_malloc() == first
    assert malloc.tune_malloc(enabled=True) == first


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_disabled_by_environment_does_nothing(monkeypatch, value):
    def must_not_load():
        raise AssertionError("libc loaded although tuning is disabled")

    monkeypatch.setattr(malloc, "_applied", None)
    monkeypatch.setattr(malloc, "_glibc", must_not_load)
    monkeypatch.setenv(malloc.ENV_VAR, value)
    assert not malloc.tuning_enabled()
    assert malloc.tune_malloc() == {}
    assert malloc._applied is None  # nothing recorded: a later enabled call would still tune
    assert malloc.tune_malloc(enabled=False) == {}


# allocate and free a 64 MiB buffer, then count the page faults of five more rounds
_FAULTS = """
import json, resource, numpy as np
from pathfl.features.malloc import tune_malloc
applied = tune_malloc()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(2**23); del a
f0 = faults()
for _ in range(5):
    a = np.ones(2**23); del a
print(json.dumps({"applied": applied, "faults": faults() - f0}))
"""


def _faults(tuning: str) -> dict:
    env = {**os.environ, malloc.ENV_VAR: tuning}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_glibc
def test_tuning_keeps_freed_buffers_in_the_heap():
    untuned, tuned = _faults("0"), _faults("1")
    assert untuned["applied"] == {} and tuned["applied"]
    # untuned: every 64 MiB buffer is a fresh mmap the kernel zero-fills (faults per page or
    # per huge page); tuned: the freed heap memory is reused
    assert untuned["faults"] >= 5 * 16
    assert tuned["faults"] < untuned["faults"] / 4
