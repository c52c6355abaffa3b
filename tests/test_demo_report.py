"""Pieces of the demo report that compute numbers: tile/mask overlap, AUC, table rows."""

from __future__ import annotations

import numpy as np
import pytest

from pathfl.demo.evaluate import tile_fractions
from pathfl.demo.report import _auc
from pathfl.demo.report_sections import verdict
from pathfl.demo.tables import c_index_rows


def test_tile_fractions_match_the_mask():
    mask = np.zeros((100, 100), np.uint8)  # 4 µm/px
    mask[:, 50:] = 255  # right half is phenotype
    coords = np.array([[0, 0], [400, 0], [200, 0]])  # level-0 px at 0.5 µm/px
    side = 200.0  # 100 µm = 25 mask px
    f = tile_fractions(mask, coords, side, 0.5, 4.0)
    assert f == pytest.approx([0.0, 1.0, 0.0])
    f = tile_fractions(mask, np.array([[300, 0]]), side, 0.5, 4.0)  # straddles the border
    assert f[0] == pytest.approx(13 / 25, abs=0.05)


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = rng.normal(size=200) + y
    assert _auc(s, y) == pytest.approx(roc_auc_score(y, s))


def _summary(c, n=30, events=12, pairs=200, ci=None):
    return {"c_index": c, "n": n, "n_events": events, "n_comparable": pairs, "c_index_ci95": ci}


def _model(c, within, per_site):
    return {
        **_summary(c, ci=(c - 0.1, c + 0.1)),
        "ci95": [c - 0.1, c + 0.1],
        "c_index_within_site": within,
        "within_site": _summary(within, pairs=80, ci=(within - 0.2, within + 0.1)),
        "per_site": per_site,
        "per_site_detail": {s: _summary(v, n=3, events=1, pairs=2) for s, v in per_site.items()},
    }


def test_table_rows_and_verdict():
    ev = {
        "models": {
            "oracle": _model(0.85, 0.86, {"A": 0.9}),
            "federated": _model(0.78, 0.79, {"A": 0.8}),
            "pooled": _model(0.79, 0.80, {"A": 0.8}),
            "local_A": _model(0.70, 0.71, {"A": 0.7}),
            "local_B": _model(0.72, 0.73, {"A": 0.7}),
        },
        "local_only_mean_c_index": 0.71,
        "local_own_site_c_index_within_site": 0.74,
        "n_val_patients": 30,
    }
    rows = c_index_rows(ev)
    assert [r["model"] for r in rows] == [
        "oracle (true risk)",
        "federated",
        "pooled",
        "local-only A",
        "local-only B",
        "local-only mean",
        "local-only, own site",
    ]
    assert rows[1]["C-index, all pairs"] == (
        "0.780 (95% CI 0.68–0.88; 30 patients, 12 events, 200 comparable pairs)"
    )
    assert rows[1]["within-site C"].startswith("0.790 (95% CI 0.59–0.89; 30 patients")
    # a site with 3 validation patients: no C-index, the reason instead
    assert rows[1]["site A"] == "— (3 patients, 1 event, 2 comparable pairs < 10)"
    assert rows[-2]["within-site C"] == "0.720"
    text = verdict(ev)
    assert "federated ≥ pooled − 0.02: yes (federated 0.780 vs pooled 0.790 − 0.02 = 0.770)" in text
    assert "local-only models: yes (federated 0.780 vs local-only mean 0.710)" in text
    # the federated CI (0.68–0.88) holds both compared values
    assert "95% CI on these 30 validation patients is 0.68–0.88" in text
    assert "pooled and local-only mean lie inside it" in text
    ev["models"]["federated"] = _model(0.70, 0.7, {})
    text = verdict(ev)
    assert text.count("NO") == 2 and "(federated 0.700 vs pooled 0.790 − 0.02 = 0.770)" in text
    assert "(federated 0.700 vs local-only mean 0.710)" in text
    assert "is 0.60–0.80; pooled and local-only mean lie inside it" in text
    ev["models"]["federated"] = {**_model(0.95, 0.9, {}), "ci95": [0.90, 0.99]}
    text = verdict(ev)
    assert "neither pooled nor the local-only mean lies inside it" in text
    ev["models"]["federated"] = {**_model(0.74, 0.7, {}), "ci95": [0.60, 0.75]}
    assert "0.60–0.75; local-only mean lies inside it" in verdict(ev)
