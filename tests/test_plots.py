"""Figures and the numbers printed beside them: attention flatness (uniform vs peaked), the
QuPath GeoJSON of tile scores, Kaplan–Meier number-at-risk counts and censoring marks, the
one C-index formatter ("—" with the reason), and risk-group cut points fixed on training
data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pathfl.survival.data import load_bags, load_clinical
from pathfl.survival.heatmaps import (
    attention_flatness,
    is_attention,
    score_scale,
    tiles_geojson,
    write_tiles_geojson,
)
from pathfl.survival.metrics import (
    MIN_COMPARABLE_PAIRS,
    c_index_summary,
    format_c_index,
    harrell_c,
    stratified_c_summary,
)
from pathfl.survival.plots import KMPanel, at_risk, km_panels, time_axis_label


def test_flatness_of_uniform_and_peaked_attention() -> None:
    n = 55
    uniform = np.full(n, 1 / n)
    f = attention_flatness(uniform)
    assert f.entropy == pytest.approx(1.0) and f.max_rel == pytest.approx(1.0)
    assert f.near_uniform and f.caption().startswith("near-uniform attention: max 1.00×")
    # the CMU-1-Small-Region case: 0.0160-0.0202 over 55 tiles (uniform 0.018)
    a = np.linspace(0.0160, 0.0202, n)
    a /= a.sum()
    f = attention_flatness(a)
    assert f.near_uniform and 1.1 < f.max_rel < 1.2 and f.entropy > 0.99
    assert "near-uniform" in score_scale(a).caption
    peaked = np.full(n, 0.1 / (n - 1))
    peaked[7] = 0.9
    f = attention_flatness(peaked)
    assert not f.near_uniform and f.max_rel == pytest.approx(0.9 * n)
    assert f.entropy < 0.3 and f.top10_share >= 0.9
    assert f.caption().startswith("attention: max 49.50× uniform")
    # the colour scale never stretches a near-uniform map: at least 0.5x-2x around 1
    norm = score_scale(a).norm
    assert norm.vmin == pytest.approx(0.5) and norm.vmax == pytest.approx(2.0)


def test_non_attention_scores_are_labelled_as_model_units() -> None:
    s = np.array([-1.5, 0.2, 3.0])
    assert not is_attention(s)
    sc = score_scale(s)
    assert "not attention" in sc.caption and sc.label == "tile score"
    np.testing.assert_array_equal(sc.values, s)


def test_tiles_geojson_is_qupath_tiles_in_level0_pixels(tmp_path: Path) -> None:
    coords = np.array([[0, 0], [512, 0], [1024, 256]])
    scores = np.array([0.2, 0.5, 0.3])
    path = write_tiles_geojson(tmp_path / "t.geojson", coords, scores, tile_l0=256, slide_id="S")
    gj = json.loads(path.read_text())
    assert gj == tiles_geojson(coords, scores, tile_l0=256, slide_id="S")
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(coords)
    for (x, y), s, f in zip(coords, scores, gj["features"], strict=True):
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        ring = f["geometry"]["coordinates"][0]
        assert ring == [[x, y], [x + 256, y], [x + 256, y + 256], [x, y + 256], [x, y]]
        props = f["properties"]
        assert props["objectType"] == "tile" and props["classification"]["name"]
        assert props["measurements"]["score"] == pytest.approx(s)
        assert props["measurements"]["attention x uniform"] == pytest.approx(s * 3)
    assert [f["properties"]["measurements"]["rank"] for f in gj["features"]] == [3, 1, 2]


def test_number_at_risk_by_hand() -> None:
    time = np.array([1.0, 2.0, 2.0, 3.5, 5.0, 8.0])
    # at t: patients with follow-up >= t
    assert at_risk(time, [0, 2, 3, 5, 6, 10]) == [6, 5, 3, 2, 1, 0]
    assert time_axis_label("months") == "time (months)"
    assert "not stated" in time_axis_label("")


def test_km_figure_with_at_risk_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 40
    risk = rng.normal(size=n)
    time = rng.exponential(10 * np.exp(-risk))
    event = rng.random(n) < 0.7
    high = risk > 0.0
    res = km_panels(
        tmp_path / "km.png",
        [KMPanel("test", time, event, high, "split at 0")],
        time_unit="months",
    )[0]
    assert res["n_high"] == int(high.sum()) and 0 <= res["p_value"] <= 1
    from PIL import Image

    assert Image.open(tmp_path / "km.png").size[1] > 400


def test_c_index_formatter() -> None:
    m = {
        "c_index": 0.7123,
        "c_index_ci95": (0.601, 0.823),
        "n": 40,
        "n_events": 12,
        "n_comparable": 310,
    }
    assert format_c_index(m) == (
        "0.712 (95% CI 0.60–0.82; 40 patients, 12 events, 310 comparable pairs)"
    )
    # a site's metrics (val_ prefix, no CI: the sites share pair counts only)
    site = {"val_c_index": 0.8, "val_n_samples": 10.0, "val_n_events": 6.0, "val_n_comparable": 34}
    assert format_c_index(site, prefix="val_", no_ci="no CI (counts)") == (
        "0.800 (no CI (counts); 10 patients, 6 events, 34 comparable pairs)"
    )
    # undefined: no comparable pair
    assert format_c_index({"c_index": float("nan"), "n": 3, "n_events": 0, "n_comparable": 0}) == (
        "— (3 patients, 0 events, 0 comparable pairs)"
    )
    # defined but resting on too few pairs: a site with 3 validation patients showing C 0.000
    few = {"c_index": 0.0, "n": 3, "n_events": 1, "n_comparable": 2}
    assert (
        format_c_index(few)
        == f"— (3 patients, 1 event, 2 comparable pairs < {MIN_COMPARABLE_PAIRS})"
    )


def test_c_index_summaries_count_what_they_rest_on() -> None:
    rng = np.random.default_rng(1)
    e, t, r = rng.random(30) < 0.6, rng.exponential(5, 30), rng.normal(size=30)
    s = c_index_summary(e, t, r, n_boot=50)
    assert s["n"] == 30 and s["n_events"] == int(e.sum())
    assert s["c_index"] == pytest.approx(harrell_c(e, t, r))
    assert s["c_index_ci95"][0] <= s["c_index"] <= s["c_index_ci95"][1]
    tiny = c_index_summary([1, 0, 0], [1.0, 2.0, 3.0], [0.3, 0.1, 0.2], n_boot=50)
    assert tiny["n_comparable"] == 2 and np.isnan(tiny["c_index_ci95"][0])  # too few pairs
    # within-group pairs only: the summed counts of the groups
    g = {"a": (e[:15], t[:15], r[:15]), "b": (e[15:], t[15:], r[15:])}
    total, per = stratified_c_summary(g, n_boot=50)
    assert total["n_comparable"] == per["a"]["n_comparable"] + per["b"]["n_comparable"]
    assert total["n"] == 30 and total["n_events"] == int(e.sum())


def test_risk_groups_are_split_at_the_training_median(tmp_path: Path) -> None:
    """Each fold's cut point is the median risk of that fold's *training* patients under the
    fold's model, and the out-of-fold risk groups (predictions.csv, KM plot) use it."""
    from pathfl.survival.cv import cross_validate
    from pathfl.survival.synthetic import make_cohort
    from pathfl.survival.train import TrainConfig, predict

    torch.set_num_threads(1)
    c = make_cohort(tmp_path / "c", n_patients=30, feature_dim=6, tiles=(5, 10), seed=2)
    bags = load_bags(c.features_dir, load_clinical(c.clinical_csv))
    cfg = TrainConfig(
        hidden_dim=8, attn_dim=4, epochs=1, min_steps=0, bags_per_batch=8, folds=2, n_boot=0,
        time_unit="months",
    )  # fmt: skip
    train_medians: list[float] = []

    def on_fold(k: int, fit: dict, val_idx: np.ndarray) -> None:
        p = predict(fit["model"], fit["train_bags"], cfg, time_bins=fit["time_bins"])
        train_medians.append(float(np.median(p.risk)))

    m = cross_validate(bags, cfg, tmp_path / "run", on_fold=on_fold, final_model=False)
    cuts = m["km_logrank"]["cut_points"]
    assert cuts == pytest.approx(train_medians)
    with open(tmp_path / "run" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        high = float(r["risk"]) > cuts[int(r["fold"])]
        assert r["risk_group"] == ("high" if high else "low")
    assert (tmp_path / "run" / "plots" / "km_risk_groups.png").is_file()


def test_fl_comparison_table_carries_the_basis_of_every_c(tmp_path: Path) -> None:
    from pathfl.fl.baselines import FED_NO_CI, comparison_rows, write_comparison

    def site(c, n, ev, pairs, conc):
        keys = ("c_index", "n_samples", "n_events", "n_comparable", "n_concordant")
        return {f"val_{k}": v for k, v in zip(keys, (c, n, ev, pairs, conc), strict=True)}

    federated = {"final_per_site": {"a": site(0.8, 10.0, 6.0, 35.0, 28.0),
                                    "b": site(0.0, 3.0, 1.0, 2.0, 0.0)}}  # fmt: skip
    rng = np.random.default_rng(0)
    arrays = {
        "a": (rng.random(10) < 0.6, rng.exponential(5, 10), rng.normal(size=10)),
        "b": (np.array([1, 0, 0]), np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.3, 0.2])),
    }
    total, per = stratified_c_summary(arrays, n_boot=50)
    baselines = {"pooled": {"total": total, "per_site": per}}
    md = write_comparison(tmp_path / "c.csv", comparison_rows(federated, baselines))
    fed_line, pooled_line = md.splitlines()[2:4]
    # federated: 37 pairs in all, 28 concordant -> 0.757; site b has 2 pairs -> "—"
    assert f"0.757 ({FED_NO_CI}; 13 patients, 7 events, 37 comparable pairs)" in fed_line
    assert "— (3 patients, 1 event, 2 comparable pairs < 10)" in fed_line
    assert pooled_line.startswith("| pooled | ") and "95% CI" in pooled_line
    with open(tmp_path / "c.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["method"] == "federated" and rows[0]["n_comparable"] == "37.0000"
    assert rows[0]["n_b"] == "3.0000" and rows[1]["n"] == "13"
