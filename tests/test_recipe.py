"""The default training recipe: step budget, learning-rate schedule, early stopping with the
best weights restored, packed batches, survival-head and model registries."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pathfl.registry import UnknownNameError
from pathfl.survival.cohorts import planted_cohort
from pathfl.survival.heads import create_head, list_heads
from pathfl.survival.models import create_model, list_models
from pathfl.survival.train import (
    TrainConfig,
    bags_logits,
    build_model,
    evaluate_loss,
    forward_bag,
    lr_factor,
    passes_per_budget,
    steps_per_pass,
    total_steps,
    train_local,
)


@pytest.fixture(scope="module")
def bags():
    return planted_cohort(n_patients=40, feature_dim=8, tiles=(5, 25), seed=4).bags


def test_budget_has_a_minimum_number_of_steps() -> None:
    cfg = TrainConfig(epochs=10, min_steps=300, bags_per_batch=32)
    assert steps_per_pass(100, cfg) == 4
    assert passes_per_budget(100, cfg) == 75  # 10 passes = 40 steps < 300
    assert total_steps(100, cfg) == 300
    assert total_steps(10_000, cfg) == 10 * 313  # large cohorts: epochs decide
    assert passes_per_budget(100, cfg, epochs=0) == 0


def test_cox_batches_never_hold_a_single_bag() -> None:
    head = create_head("cox")
    rng = np.random.default_rng(0)
    for n in (2, 3, 33, 65, 97):
        ev = (rng.random(n) < 0.5).astype(int)
        batches = head.batches(ev, 32, rng)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert min(len(b) for b in batches) >= 2
    ev = np.array([1] * 4 + [0] * 60)
    assert all(sum(ev[b]) >= 1 for b in head.batches(ev, 16, rng))  # events spread


def test_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(warmup_fraction=0.1, min_lr_fraction=0.02)
    assert lr_factor(0.05, cfg) == pytest.approx(0.5)
    assert lr_factor(0.1, cfg) == pytest.approx(1.0)
    assert lr_factor(1.0, cfg) == pytest.approx(0.02)
    xs = [lr_factor(p, cfg) for p in np.linspace(0.1, 1, 20)]
    assert all(a >= b for a, b in itertools.pairwise(xs))
    assert lr_factor(0.7, TrainConfig(lr_schedule="constant")) == 1.0


def test_train_local_takes_exactly_the_budget(bags) -> None:
    cfg = TrainConfig(epochs=2, min_steps=7, bags_per_batch=8)
    model = build_model(cfg, feature_dim=8)
    stats = train_local(model, bags, cfg, epochs=cfg.epochs, time_bins=None)
    assert stats["steps"] == total_steps(len(bags), cfg) == 10  # 2 passes of 5 < 7 -> 2 passes
    stats = train_local(model, bags, cfg, epochs=1, time_bins=None, steps=13)
    assert stats["steps"] == 13  # a federated round: exactly its share


def test_early_stopping_restores_the_best_weights(bags) -> None:
    cfg = TrainConfig(epochs=40, min_steps=0, bags_per_batch=8, lr=3e-2, early_stopping_patience=3)
    model = build_model(cfg, feature_dim=8)
    fit, val = bags[:30], bags[30:]
    stats = train_local(model, fit, cfg, epochs=cfg.epochs, time_bins=None, val_bags=val)
    assert stats["best_epoch"] <= stats["epochs_run"]
    assert evaluate_loss(model, val, cfg, time_bins=None) == pytest.approx(stats["val_loss"])


def test_packed_forward_equals_per_bag_forward(bags) -> None:
    for name in ("abmil", "meanpool"):
        model = build_model(TrainConfig(model=name), feature_dim=8).eval()
        with torch.no_grad():
            packed = bags_logits(model, bags)
            single = torch.stack([forward_bag(model, b, None, None) for b in bags])
        torch.testing.assert_close(packed, single, rtol=1e-5, atol=1e-6)


def test_registries_list_valid_names() -> None:
    assert {"cox", "nll"} <= set(list_heads())
    assert {"abmil", "chowder", "meanpool", "transmil"} <= set(list_models())
    with pytest.raises(UnknownNameError, match="valid survival heads: cox, nll"):
        create_head("weibull")
    with pytest.raises(ValueError, match="takes no option"):
        create_model("abmil", feature_dim=4, n_out=1, k=3)
    m = create_model("chowder", feature_dim=4, n_out=1, k=3)
    assert m.k == 3
    with pytest.raises(ValueError, match="bags_per_batch >= 2"):
        TrainConfig(loss="cox", bags_per_batch=1)


def test_risk_ridge_by_hand() -> None:
    cox = create_head("cox")
    logits = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    event = torch.tensor([1, 0, 1, 0])
    # mean 3, squared deviations 4 + 1 + 0 + 9 = 14, 2 events: 0.5 * 2 * 14 / 2
    assert float(cox.ridge(logits, event, 2.0)) == pytest.approx(7.0)
    assert float(cox.ridge(logits, event, 0.0)) == 0.0
    assert float(cox.ridge(logits + 5.0, event, 2.0)) == pytest.approx(7.0)  # shift-invariant
    assert float(cox.ridge(logits[:1], event[:1], 2.0)) == 0.0  # one bag has no spread
    nll = create_head("nll")
    assert float(nll.ridge(torch.randn(4, 3), event, 2.0)) == 0.0  # not a single log-risk
    with pytest.raises(ValueError, match="risk_ridge"):
        TrainConfig(risk_ridge=-1.0)


def test_risk_ridge_of_a_linear_model_is_the_linear_cox_penalty() -> None:
    """Log-risks ``z β`` of standardised, uncorrelated rows ``z``: the penalty equals
    linear-cox's ``½ α n ‖β‖²`` on the loss's scale (÷ events)."""
    n, d, alpha = 12, 3, 1.0
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(n, d + 1)))
    q = q[:, 1:] - q[:, 1:].mean(axis=0)
    q, _ = np.linalg.qr(q)  # centred orthonormal columns
    z = q * np.sqrt(n)  # each column: mean 0, variance 1, uncorrelated
    beta = np.array([0.3, -1.2, 0.7])
    event = torch.tensor([1, 1, 0] * 4)
    penalty = create_head("cox").ridge(torch.from_numpy(z @ beta)[:, None], event, alpha)
    assert float(penalty) == pytest.approx(0.5 * alpha * n * beta @ beta / 8)


def test_risk_ridge_shrinks_the_trained_log_risks(bags) -> None:
    spread = {}
    for strength in (0.0, 10.0):
        cfg = TrainConfig(epochs=1, min_steps=60, bags_per_batch=8, risk_ridge=strength)
        model = build_model(cfg, feature_dim=8)
        train_local(model, bags, cfg, epochs=cfg.epochs, time_bins=None, seed=1)
        with torch.no_grad():
            spread[strength] = float(bags_logits(model.eval(), bags).std())
    assert spread[10.0] < 0.5 * spread[0.0], spread
