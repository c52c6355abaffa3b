"""`scripts/bench_learning.py --linear-ceiling`: linear-cox at every ridge strength on a
planted cohort, beside the hidden direction and the tile oracle (BENCHMARKS.md "learning")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_learning.py"


def test_linear_ceiling_prints_one_row_per_planted_cohort():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--linear-ceiling", "--seeds", "1",
         "--datasets", "planted-50x64", "veterans"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    rows = [r for r in out.splitlines() if r.startswith("| planted-")]
    assert len(rows) == 1 and "veterans" not in out  # no oracle there: skipped
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:2] == ["planted-50x64", "1"]
    ratios = [float(c) for c in cells[2:-1]]  # 7 ridge strengths, direction, tile oracle
    assert len(ratios) == 9 and all(0.3 < r < 1.3 for r in ratios)
    # the tile oracle reads each bag's own tiles knowing the generator: above every fit
    assert ratios[-1] > max(ratios[:7])
    assert cells[-1] in {"0.3", "1", "3", "10", "30", "100", "300"}
