"""Every MIL model: finite outputs of the right shapes, a gradient for every parameter,
per-tile scores for heatmaps, late fusion of covariates, registry errors."""

from __future__ import annotations

import pytest
import torch

from pathfl.registry import UnknownNameError
from pathfl.survival.losses import cox_loss, nll_loss
from pathfl.survival.models import MODELS, NystromAttention
from pathfl.survival.train import TrainConfig, build_model

D = 24


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _loss_of_bags(model: torch.nn.Module, loss: str, n_cov: int) -> torch.Tensor:
    torch.manual_seed(0)
    # bag sizes: 1 tile, fewer than Chowder's k, more than TransMIL's landmarks
    sizes = [1, 3, 40, 70]
    outs = []
    for n in sizes:
        cov = torch.randn(n_cov) if n_cov else None
        out = model(torch.randn(n, D), cov)
        assert out.tile_scores.shape == (n,)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.tile_scores).all()
        outs.append(out.logits)
    logits = torch.stack(outs)
    assert logits.shape == (len(sizes), 4 if loss == "nll" else 1)
    event, time = torch.tensor([1, 0, 1, 1]), torch.tensor([2.0, 5.0, 7.0, 1.0])
    if loss == "nll":
        return nll_loss(logits, event, time, time_bins=[2.5, 5.0, 7.5])
    return cox_loss(logits, event, time)


@pytest.mark.parametrize("name", MODELS.list())
@pytest.mark.parametrize(("loss", "n_cov"), [("nll", 0), ("cox", 3)])
def test_every_parameter_gets_a_gradient(name: str, loss: str, n_cov: int) -> None:
    """Every parameter gets a finite gradient, non-zero within two SGD steps (abmil's attention
    scorer starts at zero, so its inner layers only receive gradient after the first step)."""
    cfg = TrainConfig(model=name, loss=loss, hidden_dim=32, attn_dim=16, transmil_landmarks=8)
    model = build_model(cfg, feature_dim=D, n_covariates=n_cov)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    moved: set[str] = set()
    for _ in range(2):
        opt.zero_grad()
        _loss_of_bags(model, loss, n_cov).backward()
        missing = [
            n
            for n, p in model.named_parameters()
            if p.grad is None or not torch.isfinite(p.grad).all()
        ]
        assert not missing, f"{name}: no/invalid gradient for {missing}"
        moved |= {n for n, p in model.named_parameters() if float(p.grad.abs().sum()) > 0.0}
        opt.step()
    zero = sorted({n for n, _ in model.named_parameters()} - moved)
    assert not zero, f"{name}: all-zero gradient for {zero}"


def test_untrained_abmil_pools_uniformly() -> None:
    """The zero-initialised attention scorer: an untrained abmil is mean pooling."""
    model = build_model(TrainConfig(model="abmil", hidden_dim=32), feature_dim=D).eval()
    x = torch.randn(9, D)
    with torch.no_grad():
        out = model(x)
        mean_pooled = model.head(model.embed(x).mean(0))
    torch.testing.assert_close(out.tile_scores, torch.full((9,), 1 / 9))
    torch.testing.assert_close(out.logits, mean_pooled)


def test_abmil_scores_are_attention_weights() -> None:
    model = build_model(TrainConfig(model="abmil", hidden_dim=32), feature_dim=D).eval()
    with torch.no_grad():
        s = model(torch.randn(17, D)).tile_scores
    assert float(s.sum()) == pytest.approx(1.0, abs=1e-5) and bool((s > 0).all())


def test_covariates_are_required_when_fused() -> None:
    model = build_model(TrainConfig(model="meanpool", hidden_dim=32), feature_dim=D, n_covariates=2)
    with pytest.raises(ValueError, match="2 covariates"):
        model(torch.randn(5, D), None)


def test_nystrom_exact_below_landmarks_and_close_above() -> None:
    torch.manual_seed(0)
    attn = NystromAttention(16, heads=2, n_landmarks=32, dropout=0.0).eval()
    x = torch.randn(20, 16)
    n, dim = x.shape
    q, k, v = attn.qkv(x).view(n, 3, 2, 8).permute(1, 2, 0, 3)
    exact = torch.softmax((q * attn.scale) @ k.transpose(-1, -2), -1) @ v
    exact = attn.out(exact.permute(1, 0, 2).reshape(n, dim))
    torch.testing.assert_close(attn(x), exact)
    # smooth tokens (low-rank attention) are well approximated with few landmarks
    xs = torch.linspace(0, 1, 200).unsqueeze(1) * torch.randn(1, 16)
    with torch.no_grad():
        attn.m = 16
        approx = attn(xs)
        attn.m = 1000
        full = attn(xs)
    assert float((approx - full).norm() / full.norm()) < 0.05


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="abmil, chowder, meanpool, transmil"):
        TrainConfig(model="clam")
