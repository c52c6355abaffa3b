"""`pathfl fl personalise`: a site of a real federation adapts the final global model on its
own machine (issue 15, item 4). The federated run dir here is written with the same function
the ServerApp uses (save_run + fl_config.json), so the test needs no federation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from pathfl.cli import app

RUNNER = CliRunner()


def _federated_run(tmp_path: Path):
    """A planted 2-site cohort on disk and a 'federated' run dir of a model fitted on it."""
    from pathfl.fl.fl_config import effective_config
    from pathfl.fl.rundir import RunDir
    from pathfl.survival.cohorts import planted_cohort, write_sites
    from pathfl.survival.cv import fit_one
    from pathfl.survival.data import bags_fingerprint
    from pathfl.survival.run import save_run
    from pathfl.survival.train import TrainConfig

    cohort = planted_cohort(n_patients=40, feature_dim=6, tiles=(4, 8), seed=3, n_sites=2)
    sites = write_sites(cohort, tmp_path / "sites")
    tcfg = TrainConfig(hidden_dim=8, min_steps=3, epochs=1, n_boot=0)
    fit = fit_one(cohort.bags, tcfg)
    run = tmp_path / "fedrun"
    save_run(
        run, fit["model"], tcfg, feature_dim=6, fingerprint=bags_fingerprint(cohort.bags),
        time_bins=None, scaler=fit["scaler"], metrics=None, predictions=None,
    )  # fmt: skip
    cfg = effective_config({**tcfg.to_dict(), "val_folds": 3, "n_boot": 0})
    RunDir(run).write_json("fl_config.json", {"config": cfg, "mode": "run"})
    RunDir(run).write_status("completed", run_id="42")
    return run, sites


def test_site_personalises_the_federated_model(tmp_path: Path) -> None:
    run, sites = _federated_run(tmp_path)
    site = sites[0]
    before = {k: v.clone() for k, v in torch.load(run / "model.pt").items()}
    out, audit = tmp_path / "mine", tmp_path / "site-audit.jsonl"
    args = ["fl", "personalise", "--run", run, "--features", site / "features"]
    args += ["--clinical", site / "clinical.csv", "--name", site.name, "--out", out]
    args += ["--steps", "5", "--audit-log", audit]
    r = RUNNER.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert "personalised head" in r.output and "global" in r.output
    rows = json.loads((out / "personalised.json").read_text())["rows"]
    assert [x["method"] for x in rows] == ["global", "personalised head"]
    n_site = len((site / "clinical.csv").read_text().splitlines()) - 1
    assert 0 < rows[0]["n"] < n_site  # scored on the site's validation part only
    # only the head moved; the global run is untouched
    mine = torch.load(out / "model.pt")
    changed = {k for k, v in mine.items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    assert all(torch.equal(v, torch.load(run / "model.pt")[k]) for k, v in before.items())
    entry = json.loads(audit.read_text().splitlines()[-1])
    assert entry["event"] == "personalised" and entry["site"] == site.name
    assert entry["run_id"] == "42" and entry["part"] == "head"
    # the personalised run is a run dir `pathfl predict` reads
    pred = tmp_path / "pred.csv"
    args = ["predict", "--run", out, "--features", site / "features", "--out", pred]
    r = RUNNER.invoke(app, [str(a) for a in [*args, "--clinical", site / "clinical.csv"]])
    assert r.exit_code == 0, r.output
    assert pred.is_file()


def test_personalise_usage_errors(tmp_path: Path) -> None:
    """A bad --part, or a run dir that is no federated run: ConfigError (exit 2 via main())
    before anything is written."""
    from pathfl.config import ConfigError

    site = tmp_path / "s"
    (site / "features").mkdir(parents=True)
    (site / "clinical.csv").write_text("patient_id,slide_id,time,event\n")
    base = ["fl", "personalise", "--features", str(site / "features")]
    base += ["--clinical", str(site / "clinical.csv"), "--name", "a", "--out", str(tmp_path / "o")]
    for extra, words in ((["--part", "all"], "head, norm"), ([], "no fl_config.json")):
        r = RUNNER.invoke(app, [*base, "--run", str(tmp_path), *extra])
        assert isinstance(r.exception, ConfigError) and words in str(r.exception), r.output
    assert not (tmp_path / "o").exists()
