"""Survival losses on hand-computed cases, the Breslow baseline, and a real-data sanity check:
a linear model trained with pathfl's Cox loss on GBSG2 matches sksurv's CoxPHSurvivalAnalysis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pathfl.registry import UnknownNameError
from pathfl.survival.heads import create_head
from pathfl.survival.losses import (
    LOSSES,
    breslow_baseline,
    cox_loss,
    cox_survival,
    discrete_survival_at,
    nll_loss,
    time_to_bin,
)


def _t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def test_time_to_bin_edges() -> None:
    cuts = np.array([5.0, 10.0])
    assert time_to_bin(np.array([1.0, 5.0, 5.1, 10.0, 99.0]), cuts).tolist() == [0, 0, 1, 1, 2]


def test_nll_hand_computed() -> None:
    # two bins split at t=5; logits 0 -> hazards 0.5, S = [0.5, 0.25]
    logits = torch.zeros(2, 2, dtype=torch.float64)
    event, time = _t(1, 0), _t(3, 7)
    # event in bin 0: -log S_{-1} - log h_0 = log 2 ; censored in bin 1: -log S_1 = log 4
    full = nll_loss(logits, event, time, time_bins=np.array([5.0]), alpha=0.0)
    assert float(full) == pytest.approx((math.log(2) + math.log(4)) / 2)
    only_unc = nll_loss(logits, event, time, time_bins=np.array([5.0]), alpha=1.0)
    assert float(only_unc) == pytest.approx(math.log(2) / 2)
    mix = nll_loss(logits, event, time, time_bins=np.array([5.0]), alpha=0.4)
    assert float(mix) == pytest.approx(0.6 * float(full) + 0.4 * float(only_unc))


def test_nll_event_in_later_bin() -> None:
    # hazards sigmoid(logits); event in bin 1: -log(1-h0) - log h1
    logits = _t(0.3, -0.7).view(1, 2)
    h = torch.sigmoid(logits)[0]
    want = -math.log(1 - float(h[0])) - math.log(float(h[1]))
    got = nll_loss(logits, _t(1), _t(6), time_bins=np.array([5.0]))
    assert float(got) == pytest.approx(want)


def test_nll_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="logits"):
        nll_loss(torch.zeros(2, 3), _t(1, 0), _t(1, 2), time_bins=np.array([5.0]))


def test_cox_hand_computed() -> None:
    # times 1,2,3; events 1,1,0; eta 0, ln2, 0
    eta = _t(0.0, math.log(2), 0.0).view(3, 1)
    loss = cox_loss(eta, _t(1, 1, 0), _t(1, 2, 3))
    # event@1: 0 - log(1+2+1); event@2: ln2 - log(2+1); mean over the 2 events
    want = -((0 - math.log(4)) + (math.log(2) - math.log(3))) / 2
    assert float(loss) == pytest.approx(want)


def test_cox_breslow_ties() -> None:
    # two events tied at t=1 share the full risk set {1,1,2} (Breslow)
    loss = cox_loss(torch.zeros(3, 1, dtype=torch.float64), _t(1, 1, 0), _t(1, 1, 2))
    assert float(loss) == pytest.approx(math.log(3))


def test_cox_without_events_is_zero_with_grad() -> None:
    eta = torch.randn(4, 1, requires_grad=True)
    loss = cox_loss(eta, _t(0, 0, 0, 0), _t(1, 2, 3, 4))
    loss.backward()
    assert float(loss.detach()) == 0.0 and eta.grad is not None


def test_registry_and_risk() -> None:
    assert LOSSES.list() == ["cox", "nll"]
    with pytest.raises(UnknownNameError, match="valid loss"):
        LOSSES.get("hinge")
    logits = torch.tensor([[-3.0, -3.0], [2.0, 2.0]])  # second bag: high hazards -> riskier
    r = create_head("nll").risk(logits)
    assert r[1] > r[0]
    assert create_head("cox").risk(torch.tensor([[0.5], [-1.0]])).tolist() == [0.5, -1.0]


def test_breslow_baseline_hand_computed() -> None:
    # risks 0, events at t=1 (2 at risk, both exp(0)=1) and t=2 (1 at risk)
    t, h = breslow_baseline(np.zeros(3), np.array([1, 1, 0]), np.array([1.0, 2.0, 3.0]))
    assert t.tolist() == [1.0, 2.0]
    assert h.tolist() == pytest.approx([1 / 3, 1 / 3 + 1 / 2])
    s = cox_survival(np.array([0.0, math.log(2)]), (t, h), np.array([0.5, 1.0, 2.5]))
    assert s[0].tolist() == pytest.approx([1.0, math.exp(-1 / 3), math.exp(-5 / 6)])
    assert s[1, 2] == pytest.approx(math.exp(-2 * 5 / 6))


def test_discrete_survival_steps_at_upper_edges() -> None:
    s_bins = np.array([[0.8, 0.5, 0.1]])
    got = discrete_survival_at(s_bins, np.array([5.0, 10.0]), np.array([1.0, 5.0, 7.0, 12.0]))
    assert got[0].tolist() == [1.0, 0.8, 0.8, 0.5]


def test_gbsg2_linear_cox_matches_sksurv() -> None:
    """Real-data sanity: full-batch training of a linear model with pathfl's Cox loss reaches
    the C-index of scikit-survival's CoxPHSurvivalAnalysis (same data, same features)."""
    from sksurv.datasets import load_gbsg2
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.preprocessing import OneHotEncoder

    from pathfl.survival.metrics import harrell_c

    x_df, y = load_gbsg2()
    x_df = x_df.copy()
    x_df["tgrade"] = x_df["tgrade"].astype(str).map({"I": 1.0, "II": 2.0, "III": 3.0})
    x = OneHotEncoder().fit_transform(x_df).to_numpy(dtype=float)
    x = (x - x.mean(0)) / x.std(0)
    event, time = y["cens"].astype(int), y["time"].astype(float)
    ref = CoxPHSurvivalAnalysis(ties="breslow").fit(x, y)
    c_ref = harrell_c(event, time, ref.predict(x))

    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], 1, bias=False).double()
    xt, ev, tt = torch.from_numpy(x), torch.from_numpy(event), torch.from_numpy(time)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = cox_loss(lin(xt), ev, tt)
        loss.backward()
        return loss

    opt.step(closure)
    c_ours = harrell_c(event, time, lin(xt).detach().numpy().ravel())
    assert c_ref > 0.65  # the known GBSG2 Cox performance, i.e. the reference is meaningful
    assert abs(c_ours - c_ref) <= 0.01, (c_ours, c_ref)
    # the same partial likelihood (Breslow ties) -> the same coefficients
    np.testing.assert_allclose(lin.weight.detach().numpy().ravel(), ref.coef_, atol=1e-3)
