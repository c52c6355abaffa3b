"""`pathfl train` -> `pathfl predict` -> `pathfl heatmap` through the real CLI, on real HDF5
features files and a real pyramidal TIFF slide; usage errors exit with code 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from slides import synthetic_tissue, write_tiled_tiff
from typer.testing import CliRunner

from pathfl.cli import app
from pathfl.survival.synthetic import make_cohort

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cli")
    # tiles of 224 px on a 4x4 grid -> inside a 1024 x 1024 slide
    c = make_cohort(root, n_patients=24, feature_dim=8, tiles=(8, 16), grid_cols=4, seed=5)
    slide = write_tiled_tiff(
        root / "P0000_S0.tiff", synthetic_tissue(1024, 1024, seed=1), mpp=0.5, levels=3
    )
    return root, c, slide


def _invoke(*args: str):
    return RUNNER.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_baseline_comparison_line() -> None:
    from pathfl.cli.train import baseline_comparison

    m = {"config": {"model": "abmil"}, "pooled_oof": {"c_index": 0.66}}
    assert baseline_comparison(m) is None  # no baseline, no line
    m["linear_cox"] = {"c_index": 0.70}
    line = baseline_comparison(m)
    assert line is not None and "0.660 vs 0.700 (0.94x)" in line and "baseline ranks" in line
    m["pooled_oof"]["c_index"] = 0.75
    assert "(1.07x): the model ranks at least as well" in str(baseline_comparison(m))
    m["pooled_oof"]["c_index"] = float("nan")
    assert baseline_comparison(m) is None


def test_train_predict_heatmap(cohort) -> None:
    root, c, slide = cohort
    run = root / "run"
    cfg = root / "train.yaml"
    cfg.write_text("epochs: 2\nhidden_dim: 16\nn_boot: 20\nlr: 0.003\n")
    r = _invoke(
        "train",
        "--features",
        c.features_dir,
        "--clinical",
        c.clinical_csv,
        "--out",
        run,
        "--folds",
        "2",
        "--threads",
        "1",
        "--config",
        cfg,
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["epochs"] == 2 and metrics["config"]["hidden_dim"] == 16  # from YAML
    assert len(metrics["folds"]) == 2 and "pooled_oof" in metrics
    config = json.loads((run / "config.json").read_text())
    # defaults: abmil with the Cox head (no time bins; a Breslow baseline for survival curves)
    assert config["model"] == "abmil" and config["loss"] == "cox" and config["time_bins"] is None
    assert config["breslow_baseline"] is not None
    assert metrics["config"]["min_steps"] == 300  # the library default, not tuned by the CLI
    assert "linear_cox" in metrics
    model_c, lc_c = metrics["pooled_oof"]["c_index"], metrics["linear_cox"]["c_index"]
    assert f"abmil vs linear-cox (OOF Harrell C): {model_c:.3f} vs {lc_c:.3f}" in r.output
    with open(run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and {r["fold"] for r in rows} == {"0", "1"}
    assert Image.open(run / "plots" / "km_risk_groups.png").size[0] > 300
    report = (run / "report.html").read_text()  # self-contained: the KM plot is embedded
    assert "data:image/png;base64," in report and 'src="plots/' not in report
    assert "Harrell C [95% CI]" in report and f"run {run.name}" in report

    out_csv = root / "new.csv"
    r = _invoke(
        "predict",
        "--run",
        run,
        "--features",
        c.features_dir,
        "--slides",
        "P0000_S0,P0001_S0",
        "--out",
        out_csv,
    )
    assert r.exit_code == 0, r.output
    with open(out_csv) as f:
        pred = list(csv.DictReader(f))
    assert [p["patient_id"] for p in pred] == ["P0000_S0", "P0001_S0"]
    assert list(pred[0]) == ["patient_id", "risk", "time", "event"]  # no empty fold column
    assert all(float(p["risk"]) == float(p["risk"]) for p in pred)  # finite numbers

    no_outcome = root / "new_patients.csv"
    no_outcome.write_text("patient_id,slide_id\nX,P0002_S0\nX,P0003_S0\nY,P0004_S0\n")
    r = _invoke(
        "predict",
        "--run",
        run,
        "--features",
        c.features_dir,
        "--clinical",
        no_outcome,
        "--out",
        out_csv,
    )
    assert r.exit_code == 0, r.output
    with open(out_csv) as f:
        pred = list(csv.DictReader(f))
    assert [(p["patient_id"], p["time"]) for p in pred] == [("X", ""), ("Y", "")]

    # S(t | x) at --times from the stored Breslow baseline; IBS / td-AUC with outcomes
    _check_survival_columns(run, c, root / "surv.csv")

    png = root / "heat.png"
    r = _invoke(
        "heatmap",
        "--run",
        run,
        "--features",
        c.features_dir,
        "--slide",
        slide,
        "--out",
        png,
        "--thumb-px",
        "512",
        "--n-top",
        "4",
    )
    assert r.exit_code == 0, r.output
    img = Image.open(png)
    assert img.size[0] > 400
    montage = Image.open(root / "heat_top_tiles.png")
    assert montage.size == (2 * 164, 2 * 180)
    n_scores = len((root / "heat_scores.csv").read_text().splitlines()) - 1
    assert n_scores == len(c.signal["P0000_S0"])
    gj = json.loads((root / "heat_tiles.geojson").read_text())  # QuPath: one tile per score
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == n_scores


def _check_survival_columns(run: Path, c, out_csv: Path) -> None:
    import numpy as np

    from pathfl.survival.losses import cox_survival

    args = ["predict", "--run", run, "--features", c.features_dir, "--clinical", c.clinical_csv]
    r = _invoke(*args, "--out", out_csv, "--times", "0.3,0.9")
    assert r.exit_code == 0, r.output
    assert "integrated brier on these patients: 0." in r.output and "mean auc" in r.output
    with open(out_csv) as f:
        pred = list(csv.DictReader(f))
    s_early, s_late = (np.array([float(p[k]) for p in pred]) for k in ("surv_0.3", "surv_0.9"))
    assert np.all((s_late <= s_early) & (s_early <= 1.0) & (s_late > 0.0)) and np.any(
        s_late < s_early
    )
    bl = json.loads((run / "config.json").read_text())["breslow_baseline"]
    risk = np.array([float(p["risk"]) for p in pred])
    want = cox_survival(risk, (bl["times"], bl["cumhaz"]), np.array([0.3, 0.9]))
    np.testing.assert_allclose(np.c_[s_early, s_late], want, rtol=1e-4, atol=1e-5)  # csv: 6 digits
    r = _invoke(*args, "--out", out_csv, "--times", "0.3,soon")
    assert r.exit_code == 2 and "'soon' is not a number" in r.output


def test_bad_inputs_exit_2(cohort, tmp_path: Path) -> None:
    _, c, _ = cohort
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,slide_id,time,event\nA,nosuchslide,5,1\nB,P0001_S0,-1,0\n")
    r = RUNNER.invoke(
        app,
        [
            "train",
            "--features",
            str(c.features_dir),
            "--clinical",
            str(bad),
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert r.exit_code == 2
    assert "line 3 (patient_id=B, slide_id=P0001_S0): time -1 must be > 0" in r.output
    r = RUNNER.invoke(
        app,
        [
            "train",
            "--features",
            str(c.features_dir),
            "--clinical",
            str(c.clinical_csv),
            "--out",
            str(tmp_path / "r"),
            "--model",
            "clam",
        ],
    )
    assert r.exit_code == 2 and "valid models: abmil, chowder, meanpool, transmil" in r.output
    r = RUNNER.invoke(
        app,
        [
            "predict",
            "--run",
            str(tmp_path),
            "--features",
            str(c.features_dir),
            "--out",
            str(tmp_path / "x.csv"),
        ],
    )
    assert r.exit_code == 2 and "not a pathfl run directory" in r.output


def test_shipped_config_names_only_train_options() -> None:
    import inspect

    from pathfl.cli.train import train
    from pathfl.config import load_yaml

    shipped = load_yaml(Path(__file__).resolve().parents[1] / "configs" / "train.yaml")
    options = set(inspect.signature(train).parameters) - {"ctx", "config"}
    assert set(shipped) <= options, set(shipped) - options


def test_unused_text_columns_are_ignored(cohort, tmp_path: Path) -> None:
    _, c, _ = cohort
    text = c.clinical_csv.read_text().splitlines()
    extra = [text[0] + ",notes"] + [line + ",free text" for line in text[1:]]
    table = tmp_path / "clinical_notes.csv"
    table.write_text("\n".join(extra) + "\n")
    r = RUNNER.invoke(
        app,
        [
            "train",
            "--features",
            str(c.features_dir),
            "--clinical",
            str(table),
            "--out",
            str(tmp_path / "run"),
            "--folds",
            "1",
            "--epochs",
            "1",
            "--hidden-dim",
            "8",
            "--threads",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "model.pt").is_file()
    assert not (tmp_path / "run" / "metrics.json").read_text().count('"pooled_oof"')
    r = RUNNER.invoke(
        app,
        [
            "train",
            "--features",
            str(c.features_dir),
            "--clinical",
            str(table),
            "--out",
            str(tmp_path / "run2"),
            "--covariates",
            "notes",
        ],
    )
    assert r.exit_code == 2 and "covariate notes='free text'" in r.output


def test_shipped_config_states_the_library_defaults() -> None:
    """configs/train.yaml documents the defaults; it must never tune them silently."""
    from pathfl.cli.train import _RENAMED
    from pathfl.config import load_yaml
    from pathfl.survival.config import default

    shipped = load_yaml(Path(__file__).resolve().parents[1] / "configs" / "train.yaml")
    for key, value in shipped.items():
        if key in ("threads",):
            continue
        assert value == default(_RENAMED.get(key, key)), key
