"""Unseen-site evaluation (issue 15): site-preserved cross-validation of `pathfl train
--group-by site` (every fold holds one site out whole), per-site personalisation that changes
only local weights, and (slow) `pathfl fl simulate --leave-one-site-out` with real processes."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pathfl.cli import app
from pathfl.survival.synthetic import make_cohort

RUNNER = CliRunner()


def _with_sites(csv_path: Path, sites: list[str]) -> dict[str, str]:
    """Add a ``site`` column (round-robin over patients); returns {patient_id: site}."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    patients = sorted({r["patient_id"] for r in rows})
    site_of = {p: sites[i % len(sites)] for i, p in enumerate(patients)}
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "site"])
        w.writeheader()
        w.writerows({**r, "site": site_of[r["patient_id"]]} for r in rows)
    return site_of


def test_train_group_by_site_keeps_sites_whole(tmp_path: Path) -> None:
    c = make_cohort(tmp_path / "c", n_patients=30, feature_dim=6, tiles=(4, 8), seed=3)
    site_of = _with_sites(c.clinical_csv, ["a", "b", "c"])
    run = tmp_path / "run"
    args = ["train", "--features", c.features_dir, "--clinical", c.clinical_csv, "--out", run]
    args += ["--group-by", "site", "--epochs", "1", "--min-steps", "3", "--hidden-dim", "8"]
    args += ["--n-boot", "0", "--threads", "1"]
    r = RUNNER.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["group_by"] == "site"
    assert [m["held_out_site"] for m in metrics["folds"]] == ["a", "b", "c"]
    with open(run / "predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 30  # every patient predicted once, out of fold
    for row in preds:  # the fold that predicted a patient held out exactly its site
        held = metrics["folds"][int(row["fold"])]["held_out_site"]
        assert site_of[row["patient_id"]] == held
    for m in metrics["folds"]:
        assert m["n"] == sum(1 for s in site_of.values() if s == m["held_out_site"])
    assert "site a" in r.output  # the table names the held-out site


def test_train_group_by_needs_sites(tmp_path: Path) -> None:
    c = make_cohort(tmp_path / "c", n_patients=12, feature_dim=4, tiles=(2, 4), seed=1)
    args = ["train", "--features", c.features_dir, "--clinical", c.clinical_csv]
    args += ["--out", tmp_path / "run", "--group-by", "site", "--epochs", "1", "--min-steps", "3"]
    r = RUNNER.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2 and "site" in r.output
    assert not (tmp_path / "run").exists()


@functools.cache
def _tiny_fit(model: str = "abmil"):
    """A small trained model (pathfl train's fit_one) and its site's bags, in memory (shared
    by the tests: fine-tuning works on a copy, which the tests check)."""
    from pathfl.survival.cohorts import planted_cohort
    from pathfl.survival.cv import fit_one
    from pathfl.survival.train import TrainConfig

    cohort = planted_cohort(n_patients=40, feature_dim=6, tiles=(4, 8), seed=2)
    cfg = TrainConfig(model=model, loss="cox", hidden_dim=8, min_steps=3, epochs=1, n_boot=0)
    return fit_one(cohort.bags[:24], cfg), cohort.bags[24:], cfg


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_personalise_head_changes_only_the_head() -> None:
    import torch

    from pathfl.survival.personalise import fine_tune

    fit, site_bags, cfg = _tiny_fit()
    before = _state(fit["model"])
    p = fine_tune(
        fit["model"], fit["scaler"], site_bags, cfg, part="head", time_bins=None, steps=5, seed=0
    )
    after = _state(p.model)
    assert p.trained and all(n.startswith("head.") for n in p.trained)
    for k, v in before.items():
        same = torch.equal(v, after[k])
        assert same != (k in p.trained), k  # head weights moved, every other weight is global
        assert torch.equal(v, _state(fit["model"])[k])  # the global model is untouched
    assert p.scaler is fit["scaler"]
    assert all(p.requires_grad for p in p.model.parameters())  # nothing left frozen


def test_personalise_norm_refits_the_scaler_and_norm_layers_only() -> None:
    import numpy as np
    import torch

    from pathfl.survival.personalise import fine_tune

    # abmil has no normalisation layers: only the input standardisation becomes local
    fit, site_bags, cfg = _tiny_fit()
    p = fine_tune(
        fit["model"], fit["scaler"], site_bags, cfg, part="norm", time_bins=None, steps=5, seed=0
    )
    assert p.trained == [] and p.stats["steps"] == 0
    assert all(torch.equal(v, _state(p.model)[k]) for k, v in _state(fit["model"]).items())
    assert not np.allclose(p.scaler.features.mean, fit["scaler"].features.mean)
    # transmil: its LayerNorm affine parameters are adapted, nothing else
    fit, site_bags, cfg = _tiny_fit("transmil")
    p = fine_tune(
        fit["model"], fit["scaler"], site_bags, cfg, part="norm", time_bins=None, steps=5, seed=0
    )
    assert p.trained and all("norm" in n for n in p.trained)
    after = _state(p.model)
    for k, v in _state(fit["model"]).items():
        assert torch.equal(v, after[k]) or k in p.trained, k


def test_personalised_model_stays_on_the_site(tmp_path: Path) -> None:
    """The site writes its personalised run into its own state folder; the federation has no
    message that could carry it (a reply with such a record is refused)."""
    from pathfl.fl.personalise import personalise_site
    from pathfl.fl.site import SiteData, handle
    from pathfl.fl.trust.records import REPLY_WHITELIST, ReplyNotAllowedError, check_reply
    from pathfl.survival.run import load_run

    fit, bags, cfg = _tiny_fit()
    run_cfg = {"train": cfg.to_dict(), "seed": 0}
    data = SiteData("hosp_a", tmp_path, bags[:10], bags[10:], 6, state_dir=tmp_path / "site")
    rows = personalise_site(data, fit, run_cfg, part="head", n_boot=20)
    assert [r["method"] for r in rows] == ["global", "personalised head"]
    assert all(r["n"] == 6 and r["site"] == "hosp_a" for r in rows)
    run = tmp_path / "site" / "personalised-head"
    _model, _, extras = load_run(run)  # `pathfl predict` can use it, on the site
    assert extras["personalised"] == "head" and extras["site"] == "hosp_a"
    assert not any("personal" in k for k in REPLY_WHITELIST)
    with pytest.raises(ReplyNotAllowedError):
        check_reply("personalise", {})
    with pytest.raises(ValueError, match="unknown request kind"):
        node = {"site": "hosp_a", "features": str(tmp_path), "clinical": str(tmp_path / "x")}

        class _Cache:
            def get(self, *_a):
                return data

        handle("personalise", node, run_cfg, [], cache=_Cache())  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three federations; 15+ min at load 25 on 2 cores, ~4 min idle
def test_leave_one_site_out_real_processes(tmp_path: Path) -> None:
    """`pathfl fl simulate --leave-one-site-out --personalise head`: three federations of two
    sites each (real SuperLink/SuperNode processes, 1 round), each scored on the third site."""
    from pathfl.survival.synthetic import split_into_sites

    c = make_cohort(tmp_path / "all", n_patients=60, feature_dim=6, tiles=(4, 8), seed=4)
    sites = split_into_sites(c, tmp_path, ["a", "b", "c"])
    cfg = tmp_path / "fl.yaml"
    cfg.write_text(
        "rounds: 1\nlocal_steps: 3\nmodel: meanpool\nloss: cox\nhidden_dim: 8\nval_folds: 3\n"
        "min_steps: 3\nn_boot: 20\nlinear_cox: false\nround_timeout_s: 240\n"
        "connect_timeout_s: 180\n"
    )
    out = tmp_path / "loso"
    args = ["fl", "simulate", *(x for s in sites for x in ("--site", s)), "--out", out]
    args += ["--config", cfg, "--insecure", "--leave-one-site-out", "--personalise", "head"]
    r = RUNNER.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with open(out / "unseen_site.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n_site = {}  # patients (not slides) per site
    for s in sites:
        with open(s / "clinical.csv", newline="") as f:
            n_site[s.name] = len({r["patient_id"] for r in csv.DictReader(f)})
    for held in ("a", "b", "c"):
        mine = {r["method"]: r for r in rows if r["held_out_site"] == held}
        others = sorted({"a", "b", "c"} - {held})
        expected = {"federated", "pooled", "local-only (mean)"}
        expected |= {f"local-only {s}" for s in others}
        expected |= {"federated (unseen site's validation part)", "federated + personalised head"}
        assert set(mine) == expected
        for m in ("federated", "pooled", "local-only (mean)"):  # every patient of the site
            assert int(mine[m]["n"]) == n_site[held]
            lo, c_, hi = (float(mine[m][k]) for k in ("ci_low", "c_index", "ci_high"))
            assert 0 <= lo <= hi <= 1 and 0 <= c_ <= 1  # a percentile CI need not hold C
        fed_run = json.loads((out / f"held_out_{held}" / "metrics.json").read_text())
        assert sorted(fed_run["sites"]) == others  # the held-out site never took part
    assert "federated" in r.output and (out / "unseen_site.md").is_file()
    # a re-run reuses the finished folds: no new federation
    mtime = (out / "held_out_a" / "metrics.json").stat().st_mtime
    r = RUNNER.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0 and (out / "held_out_a" / "metrics.json").stat().st_mtime == mtime


def test_simulate_usage_errors_before_any_process(tmp_path: Path) -> None:
    """A bad --personalise, or --leave-one-site-out with two sites: ConfigError (exit 2 via
    main()) before anything starts or is written."""
    from pathfl.config import ConfigError

    sites = []
    for name in ("a", "b"):
        (tmp_path / name / "features").mkdir(parents=True)
        (tmp_path / name / "clinical.csv").write_text("patient_id,slide_id,time,event\n")
        sites += ["--site", str(tmp_path / name)]
    out = tmp_path / "out"
    for extra, words in (
        (["--personalise", "everything"], "head, norm"),
        (["--leave-one-site-out"], "at least three site folders"),
    ):
        r = RUNNER.invoke(app, ["fl", "simulate", *sites, "--out", str(out), *extra])
        assert isinstance(r.exception, ConfigError) and words in str(r.exception), r.output
        assert not out.exists()


def test_personalise_sites_of_a_simulation(tmp_path: Path) -> None:
    """`fl simulate --personalise head`'s step: every site adapts the run's global model on its
    training part, writes it into its own state folder, and both are scored on its
    validation part."""
    from pathfl.fl.fl_config import effective_config
    from pathfl.fl.flower.simulate import site_specs
    from pathfl.fl.personalise import personalise_sites
    from pathfl.survival.cohorts import planted_cohort, write_sites
    from pathfl.survival.data import bags_fingerprint
    from pathfl.survival.run import save_run

    fit, _, tcfg = _tiny_fit()
    cohort = planted_cohort(n_patients=36, feature_dim=6, tiles=(4, 8), seed=2, n_sites=2)
    specs = site_specs(write_sites(cohort, tmp_path / "sites"))
    run = tmp_path / "run"
    save_run(
        run, fit["model"], tcfg, feature_dim=6, fingerprint=bags_fingerprint(cohort.bags),
        time_bins=None, scaler=fit["scaler"], metrics=None, predictions=None,
    )  # fmt: skip
    cfg = effective_config({**tcfg.to_dict(), "val_folds": 3, "n_boot": 0})
    rows = personalise_sites(specs, cfg, run, part="head", n_boot=0)
    assert [(r["site"], r["method"]) for r in rows] == [
        (s.name, m) for s in specs for m in ("global", "personalised head")
    ]
    for s in specs:
        assert (run / "federation" / "sites" / s.name / "personalised-head" / "model.pt").is_file()
