"""Federation-wide statistics fixed at check-in, as pure functions of the sites' data: the
scaler from summed moments equals a pooled fit, summed per-site Cox derivatives give the
pooled site-stratified linear-cox, the automatic step budget, and DP with a step budget."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pathfl.config import ConfigError
from pathfl.fl import fed_stats
from pathfl.fl.fl_config import effective_config, policy_view
from pathfl.fl.site import SiteData
from pathfl.survival.data import PatientBag
from pathfl.survival.scaling import BagScaler, Standardizer


def _site_bags(rng: np.random.Generator, n: int, *, shift: float, scale: float, site: str):
    """Bags with a per-site feature shift/scale and an 'age' covariate; risk from both."""
    bags = []
    for i in range(n):
        k = int(rng.integers(3, 15))
        x = (rng.normal(size=(k, 6)) * scale + shift).astype(np.float32)
        age = np.array([rng.normal(60 + 5 * shift, 10)], np.float32)
        lp = 0.8 * float(x[:, 0].mean() - shift) + 0.05 * float(age[0] - 60)
        t = float(rng.exponential(np.exp(-lp))) + 1e-3
        c = float(rng.uniform(0.2, 3.0))
        bags.append(
            PatientBag(
                f"{site}{i}", x, min(t, c), int(t <= c), age, [f"{site}{i}"],
                np.zeros(k, np.int64), np.zeros((k, 2), np.int64), site,
            )
        )  # fmt: skip
    return bags


@pytest.fixture(params=[0, 1, 2])
def sites(request) -> list[SiteData]:
    rng = np.random.default_rng(request.param)
    out = []
    for name, n, shift, scale in (("a", 30, 0.0, 1.0), ("b", 45, 2.0, 3.0), ("c", 20, -1.0, 0.5)):
        bags = _site_bags(rng, n, shift=shift, scale=scale, site=name)
        cut = int(0.75 * n)
        out.append(SiteData(name, None, bags[:cut], bags[cut:], 6))  # type: ignore[arg-type]
    return out


CFG = effective_config({"covariates": ["age"], "model": "meanpool"})


def test_federated_scaler_equals_pooled_fit(sites) -> None:
    from pathfl.survival.linear_cox import bag_rows

    parts = {s.site: fed_stats.site_moments(s.train, CFG) for s in sites}
    fed = fed_stats.federated_scaler(parts, CFG)
    union = [b for s in sites for b in s.train]
    pooled = BagScaler.fit(union, ["age"])
    assert fed.columns == ["age"]
    for a, b in ((fed.features, pooled.features), (fed.covariates, pooled.covariates)):
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a.std, b.std, rtol=1e-12)
    rows = fed_stats.row_standardizer(parts)
    ref = Standardizer.fit(bag_rows(union))
    np.testing.assert_allclose(rows.mean, ref.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rows.std, ref.std, rtol=1e-12)
    # the sites differ: a scaler from one site alone would not do
    alone = BagScaler.fit(sites[1].train, ["age"])
    assert not np.allclose(alone.features.mean, pooled.features.mean, atol=0.1)
    # the config switches decide what is sent
    off = effective_config({"standardize": False, "linear_cox": False})
    assert fed_stats.site_moments(sites[0].train, off) == {}
    assert fed_stats.federated_scaler({"a": {}}, off) is None


def test_missing_moment_group_is_an_error(sites) -> None:
    parts = {s.site: fed_stats.site_moments(s.train, CFG) for s in sites}
    del parts["b"]["cov_n"], parts["b"]["cov_sum"], parts["b"]["cov_sumsq"]
    with pytest.raises(ValueError, match=r"\['b'\] sent no cov moments"):
        fed_stats.federated_scaler(parts, CFG)


def test_summed_site_derivatives_give_the_pooled_stratified_linear_cox(sites) -> None:
    """The server's Newton loop over the sites' own replies (site_derivatives) equals
    LinearCox on the pooled rows with one stratum per site; so do the pair counts."""
    from pathfl.fl.fed_linear_cox import CONFIG_KEY, site_derivatives
    from pathfl.fl.fed_stats import row_standardizer
    from pathfl.survival.linear_cox import LinearCox, bag_rows, cox_derivatives, fit_newton

    parts = {s.site: fed_stats.site_moments(s.train, CFG) for s in sites}
    rows = row_standardizer(parts)
    cfg = {**CFG, CONFIG_KEY: rows.to_dict()}
    n_train = sum(len(s.train) for s in sites)
    alpha = CFG["train"]["linear_cox_alpha"] * n_train

    def parts_at(beta):
        replies = [site_derivatives(s, cfg, [beta]) for s in sites]
        return [(r["metrics"]["loglik"], *r["derivatives"].values()) for r in replies]

    union = [b for s in sites for b in s.train]
    strata = np.concatenate([np.full(len(s.train), i) for i, s in enumerate(sites)])
    x, t = bag_rows(union), np.array([b.time for b in union])
    e = np.array([b.event for b in union])
    pooled = LinearCox(alpha_per_patient=CFG["train"]["linear_cox_alpha"]).fit(
        x, time=t, event=e, strata=strata
    )
    # one point: the per-site derivatives sum to the stratified pooled ones
    beta = np.linspace(-0.3, 0.4, x.shape[1])
    z = pooled.scaler_.transform(x).astype(np.float64)
    ref = [cox_derivatives(z[strata == i], t[strata == i], e[strata == i], beta) for i in range(3)]
    got = parts_at(beta)
    for k in range(3):
        np.testing.assert_allclose(
            sum(np.asarray(p[k]) for p in got), sum(np.asarray(p[k]) for p in ref), rtol=1e-9
        )
    fed_beta, n_iter = fit_newton(parts_at, rows.dim, alpha=alpha, tol=1e-9)
    assert n_iter < 25
    np.testing.assert_allclose(fed_beta, pooled.coef_, rtol=1e-6, atol=1e-9)
    # pooled *unstratified* would be a different model: stratification matters here
    flat = LinearCox(alpha_per_patient=CFG["train"]["linear_cox_alpha"]).fit(x, time=t, event=e)
    assert not np.allclose(flat.coef_, pooled.coef_, rtol=1e-3)
    # validation pair counts of the final beta equal those of the pooled model's risks
    from pathfl.survival.metrics import concordance_counts

    for s in sites:
        m = site_derivatives(s, cfg, [fed_beta])["metrics"]
        ev = np.array([b.event for b in s.val])
        tt = np.array([b.time for b in s.val])
        conc, comp, _ = concordance_counts(ev, tt, pooled.predict(bag_rows(s.val)))
        assert (m["val_n_concordant"], m["val_n_comparable"]) == (conc, comp)


@pytest.mark.parametrize("n_train,rounds", [(40, 10), (90, 3), (1000, 7)])
def test_auto_local_steps_give_the_pooled_budget(n_train, rounds) -> None:
    from pathfl.fl.site import train_config
    from pathfl.survival.train import steps_per_pass, total_steps

    cfg = effective_config({"rounds": rounds})
    assert cfg["local_steps"] == 0 and cfg["local_epochs"] == 0
    budget = total_steps(n_train, train_config(cfg))
    per_round = fed_stats.steps_per_round(cfg, n_train)
    assert per_round == math.ceil(budget / rounds)
    assert budget <= rounds * per_round < budget + rounds
    assert budget >= train_config(cfg).min_steps
    # the sites take exactly that many steps, each covering its share of the schedule
    run = {**cfg, "steps_per_round": per_round}
    assert fed_stats.site_steps(run, 17) == per_round
    spans = [fed_stats.round_span(run, r) for r in range(1, rounds + 1)]
    assert spans[0][0] == 0.0 and spans[-1][1] == 1.0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    # explicit alternatives
    fixed = effective_config({"rounds": rounds, "local_steps": 7})
    assert fed_stats.steps_per_round(fixed, n_train) == 7
    epochs = effective_config({"rounds": rounds, "local_epochs": 2})
    assert fed_stats.steps_per_round(epochs, n_train) == 0
    run = {**epochs, "steps_per_round": 0}
    assert fed_stats.site_steps(run, 70) == 2 * steps_per_pass(70, train_config(epochs))


def test_budget_config_validation_and_policy() -> None:
    from pathfl.fl.trust.policy import SitePolicy

    with pytest.raises(ConfigError, match="not both"):
        effective_config({"local_steps": 5, "local_epochs": 1})
    with pytest.raises(ConfigError, match=">= 0"):
        effective_config({"local_steps": -1})
    assert effective_config({})["rounds"] == 10
    policy = SitePolicy.from_dict({"max_local_steps": 50, "allowed_config_keys": ["lr"]})
    cfg = effective_config({"lr": 0.01})
    view = policy_view({**cfg, "steps_per_round": 80})
    assert "steps_per_round" in view and "local_steps" in view
    problems = policy.check(view)
    assert (
        len(problems) == 1
        and "80 optimizer steps per round exceed max_local_steps=50" in problems[0]
    )
    assert policy.check(policy_view({**cfg, "steps_per_round": 50})) == []


def test_dp_takes_the_step_budget_and_plans_noise_for_it() -> None:
    """dp_train_local with ``steps``: exactly that many DP-SGD steps; with a target ε the
    noise is chosen for planned_rounds × steps, so the last round ends within the target."""
    import torch

    from pathfl.fl.trust.accountant import PrivacyLedger
    from pathfl.fl.trust.privacy import DPConfig, dp_train_local
    from pathfl.survival.train import TrainConfig, build_model

    rng = np.random.default_rng(4)
    bags = _site_bags(rng, 24, shift=0.0, scale=1.0, site="a")
    bags = [
        PatientBag(b.patient_id, b.features, b.time, b.event, None, b.slide_ids,
                   b.tile_slide_index, b.coords)
        for b in bags
    ]  # fmt: skip
    cfg = TrainConfig(model="meanpool", loss="nll", n_bins=3, hidden_dim=8, bags_per_batch=6)
    cuts = np.quantile([b.time for b in bags], [0.33, 0.66])
    model = build_model(cfg, feature_dim=6)
    dp = DPConfig(enabled=True, noise_multiplier=None, target_epsilon=4.0, planned_rounds=3)
    ledger = PrivacyLedger()
    for r in range(1, 4):
        m = dp_train_local(
            model, bags, cfg, dp, epochs=0, steps=5, time_bins=cuts, seed=r, ledger=ledger,
            schedule_span=((r - 1) / 3, r / 3),
        )  # fmt: skip
        assert m["dp_steps"] == 5
    assert 3.0 < m["dp_epsilon"] <= 4.0 + 1e-6
    assert all(torch.isfinite(p).all() for p in model.parameters())
