"""Client-side DP-SGD (per-patient-bag clipping + Gaussian noise) and its RDP accounting, on a
real synthetic cohort written as DESIGN features files."""

from __future__ import annotations

import pytest
import torch

from pathfl.fl.trust.accountant import PrivacyLedger, epsilon_of
from pathfl.fl.trust.privacy import DPConfig, PrivacyError, clipped_grad_sum, dp_train_local
from pathfl.survival.data import load_bags, load_clinical
from pathfl.survival.synthetic import make_cohort
from pathfl.survival.train import TrainConfig, build_model, fit_time_bins


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    c = make_cohort(
        tmp_path_factory.mktemp("dp"), n_patients=24, feature_dim=8, tiles=(6, 12), seed=3
    )
    bags = load_bags(c.features_dir, load_clinical(c.clinical_csv))
    cuts = fit_time_bins([b.time for b in bags], [b.event for b in bags], n_bins=3)
    return bags, cuts


def _model(loss: str = "nll") -> tuple[torch.nn.Module, TrainConfig]:
    cfg = TrainConfig(
        model="abmil", loss=loss, n_bins=3, hidden_dim=16, attn_dim=8, bags_per_batch=6
    )
    return build_model(cfg, feature_dim=8), cfg


def test_dp_run_reports_epsilon_per_round_and_cumulative(cohort, tmp_path):
    bags, cuts = cohort
    model, cfg = _model()
    before = [p.detach().clone() for p in model.parameters()]
    dp = DPConfig(enabled=True, noise_multiplier=1.1, max_grad_norm=0.5, delta=1e-4)
    ledger_path = tmp_path / "ledger.json"
    eps = []
    for r in range(2):  # two rounds, ledger persisted between them like separate processes
        ledger = PrivacyLedger.load(ledger_path)
        m = dp_train_local(model, bags, cfg, dp, epochs=1, time_bins=cuts, seed=r, ledger=ledger)
        ledger.save(ledger_path)
        eps.append(m)
    assert eps[0]["dp_steps"] == 4  # ceil(1/q), q = 6/24
    assert 0 < eps[0]["dp_epsilon_round"] == pytest.approx(eps[0]["dp_epsilon"])
    assert eps[1]["dp_epsilon"] > eps[1]["dp_epsilon_round"] > 0  # composition grows ε
    assert eps[1]["dp_epsilon"] == pytest.approx(epsilon_of([(1.1, 0.25, 4), (1.1, 0.25, 4)], 1e-4))
    assert len(PrivacyLedger.load(ledger_path).history) == 2
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_more_noise_gives_smaller_epsilon_and_target_epsilon_is_met(cohort):
    bags, cuts = cohort
    e = [
        dp_train_local(
            _model()[0],
            bags,
            _model()[1],
            DPConfig(enabled=True, noise_multiplier=s),
            epochs=1,
            time_bins=cuts,
        )["dp_epsilon"]
        for s in (0.8, 3.0)
    ]
    assert e[1] < e[0]
    model, cfg = _model()
    dp = DPConfig(enabled=True, noise_multiplier=None, target_epsilon=3.0, planned_rounds=3)
    ledger = PrivacyLedger()
    for r in range(3):
        m = dp_train_local(model, bags, cfg, dp, epochs=1, time_bins=cuts, seed=r, ledger=ledger)
    assert m["dp_epsilon"] <= 3.0 + 1e-6
    assert m["dp_epsilon"] > 2.0  # the chosen noise is not needlessly large


def test_cox_refused_under_dp(cohort):
    bags, _ = cohort
    model, cfg = _model("cox")
    with pytest.raises(PrivacyError, match="Cox"):
        dp_train_local(model, bags, cfg, DPConfig(enabled=True), epochs=1, time_bins=None)


def test_per_bag_clipping_bounds_one_patients_influence(cohort):
    """Replacing one patient by a wildly different one moves the clipped gradient sum by at
    most 2·C (the sensitivity DP-SGD's noise is calibrated to), while the unclipped sum moves
    by much more."""
    import copy

    bags, cuts = cohort
    model, cfg = _model()
    model.eval()  # no dropout: deterministic gradients
    other = copy.deepcopy(bags)
    other[0].features = other[0].features * 50.0
    other[0].event, other[0].time = 1 - other[0].event, other[0].time * 3

    def flat(grads):
        return torch.cat([g.flatten() for g in grads])

    c = 0.2
    g1, _ = clipped_grad_sum(model, bags, cfg, time_bins=cuts, max_grad_norm=c)
    g2, _ = clipped_grad_sum(model, other, cfg, time_bins=cuts, max_grad_norm=c)
    assert float((flat(g1) - flat(g2)).norm()) <= 2 * c + 1e-5
    u1, _ = clipped_grad_sum(model, bags, cfg, time_bins=cuts, max_grad_norm=1e9)
    u2, _ = clipped_grad_sum(model, other, cfg, time_bins=cuts, max_grad_norm=1e9)
    assert float((flat(u1) - flat(u2)).norm()) > 2 * c


def test_accountant_matches_opacus_rdp():
    """Our closed-form RDP accountant equals opacus' RDPAccountant on the same orders, and is
    within a few per cent of opacus' default (with fractional orders)."""
    from opacus.accountants import RDPAccountant

    from pathfl.fl.trust.accountant import RDP_ORDERS

    for history in ([(1.1, 0.25, 4)], [(0.8, 0.01, 1000), (2.0, 0.5, 3)], [(1.0, 1.0, 5)]):
        acc = RDPAccountant()
        acc.history = list(history)
        ours = epsilon_of(history, 1e-5)
        assert ours == pytest.approx(acc.get_epsilon(1e-5, alphas=list(RDP_ORDERS)), rel=1e-9)
        assert acc.get_epsilon(1e-5) <= ours <= 1.05 * acc.get_epsilon(1e-5)


def test_dp_noise_is_not_derived_from_the_run_seed(cohort):
    """The server knows the run seed; noise it could regenerate would give no privacy. Two DP
    runs with the same seed and starting model must therefore end in different models."""
    bags, cuts = cohort
    finals = []
    for _ in range(2):
        model, cfg = _model()
        dp = DPConfig(enabled=True, noise_multiplier=1.0)
        dp_train_local(model, bags, cfg, dp, epochs=1, time_bins=cuts, seed=5)
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.allclose(finals[0], finals[1])


def test_ledger_survives_resume_but_not_a_different_run(tmp_path):
    """A resumed run gets a new Flower run id; its rounds must still be charged to the same
    ledger (else ε restarts from 0 after a crash). Another config = another ledger."""
    from pathfl.fl.trust.accountant import ledger_path

    cfg = {"rounds": 3, "dp": True, "seed": 1, "run_id": "111", "round": 2}
    resumed = {**cfg, "run_id": "222", "round": 3}
    assert ledger_path(tmp_path, cfg) == ledger_path(tmp_path, resumed)
    assert ledger_path(tmp_path, cfg) != ledger_path(tmp_path, {**cfg, "seed": 2})
