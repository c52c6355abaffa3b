"""MIL survival models (registry ``MODELS``). Every model maps one bag of tile features
``x (N, D)`` (plus optional standardised covariates ``(C,)``) to :class:`MILOutput`:
``logits (n_out,)`` — one Cox log-risk (``n_out=1``) or one hazard logit per time bin (NLL) —
and ``tile_scores (N,)``, the per-tile score drawn in heatmaps (higher = more influential /
riskier, see each model). Covariates are fused late: concatenated to the bag embedding before
the output head.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from pathfl.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
COMMON_OPTIONS = ("hidden_dim", "dropout")  # every model takes these (TrainConfig fields)


def list_models() -> list[str]:
    return MODELS.list()


def model_options(name: str) -> dict[str, str]:
    """``{model kwarg: TrainConfig field}`` of the options model ``name`` takes besides
    ``feature_dim, n_out, n_covariates`` and :data:`COMMON_OPTIONS`."""
    return dict(MODELS.meta(name).get("options", {}))


def create_model(
    name: str, *, feature_dim: int, n_out: int, n_covariates: int = 0, **options: Any
) -> nn.Module:
    """Build model ``name``; ``options`` are its keyword arguments (see :func:`model_options`);
    an unknown option raises a ``ValueError`` naming the valid ones."""
    valid = {*COMMON_OPTIONS, *model_options(name)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"model {name!r} takes no option(s) {unknown}; valid: {sorted(valid)}")
    return MODELS.create(
        name, feature_dim=feature_dim, n_out=n_out, n_covariates=n_covariates, **options
    )


class MILOutput(NamedTuple):
    logits: torch.Tensor  # (n_out,)
    tile_scores: torch.Tensor  # (N,)


def _head(in_dim: int, hidden_dim: int, n_out: int, dropout: float) -> nn.Sequential:
    """Output MLP. A single output is a Cox log-risk, whose likelihood is shift-invariant, so
    its last layer has no bias (it could never be trained)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, n_out, bias=n_out > 1),
    )


def _embed(feature_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))


def _fuse(z: torch.Tensor, covariates: torch.Tensor | None, n_covariates: int) -> torch.Tensor:
    if n_covariates == 0:
        return z
    if covariates is None or covariates.shape[-1] != n_covariates:
        raise ValueError(f"model expects {n_covariates} covariates, got {covariates!r}")
    return torch.cat([z, covariates.to(z.dtype)], dim=-1)


def segment_softmax(a: torch.Tensor, seg: torch.Tensor, n_bags: int) -> torch.Tensor:
    """Softmax of ``a (N,)`` within each bag (``seg[i]`` = bag of element ``i``)."""
    amax = torch.full((n_bags,), -torch.inf, dtype=a.dtype, device=a.device)
    amax = amax.scatter_reduce(0, seg, a.detach(), reduce="amax", include_self=True)
    e = torch.exp(a - amax[seg])
    total = torch.zeros(n_bags, dtype=a.dtype, device=a.device).index_add(0, seg, e)
    return e / total[seg]


def segment_sum(x: torch.Tensor, seg: torch.Tensor, n_bags: int) -> torch.Tensor:
    """Per-bag sum of the rows of ``x (N, d)``."""
    return torch.zeros(n_bags, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, seg, x)


@MODELS.register(
    "abmil",
    paper="Ilse, Tomczak & Welling 2018 (gated attention)",
    options={"attn_dim": "attn_dim"},
)
class GatedABMIL(nn.Module):
    """Gated attention MIL (Ilse et al. 2018): ``h_i = ReLU(W x_i)``;
    ``a_i = w^T (tanh(V h_i) ⊙ sigmoid(U h_i))``; ``z = Σ softmax(a)_i h_i``; head(z ⊕ cov).
    ``tile_scores`` = the attention weights softmax(a) (sum to 1 over the bag). ``w`` starts at
    zero, so an untrained model pools uniformly (the mean of the embeddings)."""

    def __init__(
        self,
        *,
        feature_dim: int,
        n_out: int,
        n_covariates: int = 0,
        hidden_dim: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.n_covariates = n_covariates
        self.embed = _embed(feature_dim, hidden_dim, dropout)
        self.attn_v = nn.Linear(hidden_dim, attn_dim)
        self.attn_u = nn.Linear(hidden_dim, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)
        self.head = _head(hidden_dim + n_covariates, hidden_dim // 2, n_out, dropout)
        # The attention scorer starts at zero: every bag begins as the mean of its tile
        # embeddings and attention departs from uniform only where the gradients support it
        # (on 50-patient cohorts this took default train from 0.925x to 0.970x linear-cox,
        # mean over 4 seeds; BENCHMARKS.md).
        nn.init.zeros_(self.attn_w.weight)
        nn.init.zeros_(self.attn_w.bias)

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> MILOutput:
        h = self.embed(x)
        a = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
        weights = torch.softmax(a, dim=0)
        z = weights @ h
        return MILOutput(self.head(_fuse(z, covariates, self.n_covariates)), weights)

    def forward_batch(
        self, x: torch.Tensor, seg: torch.Tensor, n_bags: int, covariates: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits ``(n_bags, n_out)`` of several bags packed into ``x`` (tiles of bag ``b``
        where ``seg == b``): the same function as :meth:`forward`, in one pass."""
        h = self.embed(x)
        a = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
        z = segment_sum(segment_softmax(a, seg, n_bags).unsqueeze(-1) * h, seg, n_bags)
        return self.head(_fuse(z, covariates, self.n_covariates))


@MODELS.register("chowder", paper="Courtiol et al. 2018 (Owkin)", options={"k": "chowder_k"})
class Chowder(nn.Module):
    """Chowder (Courtiol et al. 2018): one linear score per tile (after a small embedding), the
    ``k`` highest and ``k`` lowest scores (min-max layer) feed an MLP. Bags with fewer than
    ``k`` tiles repeat their extreme scores. ``tile_scores`` = the per-tile scores."""

    def __init__(
        self,
        *,
        feature_dim: int,
        n_out: int,
        n_covariates: int = 0,
        hidden_dim: int = 256,
        k: int = 5,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.k = k
        self.n_covariates = n_covariates
        self.embed = _embed(feature_dim, hidden_dim, dropout)
        self.score = nn.Linear(hidden_dim, 1)
        self.head = nn.Sequential(
            nn.Linear(2 * k + n_covariates, 200),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(200, 100),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(100, n_out, bias=n_out > 1),  # Cox: shift-invariant, no bias
        )

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> MILOutput:
        s = self.score(self.embed(x)).squeeze(-1)
        order = torch.sort(s, descending=True).values
        n = order.shape[0]
        idx = torch.arange(self.k, device=s.device).clamp(max=n - 1)
        top = order[idx]
        bottom = order.flip(0)[idx]
        z = torch.cat([top, bottom])
        return MILOutput(self.head(_fuse(z, covariates, self.n_covariates)), s)


class NystromAttention(nn.Module):
    """Multi-head self-attention with the Nyström approximation (Xiong et al. 2021), as in the
    TransMIL paper: ``m`` landmarks = means of ``m`` contiguous token segments; softmax(QK^T)V ≈
    softmax(Q K̃^T) · pinv(softmax(Q̃ K̃^T)) · softmax(Q̃ K^T) V with the pseudo-inverse from 6
    Newton–Schulz iterations. Cost O(N·m). For N ≤ m it is exact softmax attention."""

    def __init__(self, dim: int, heads: int = 8, n_landmarks: int = 64, dropout: float = 0.1):
        super().__init__()
        self.heads = heads
        self.m = n_landmarks
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    @staticmethod
    def _pinv(a: torch.Tensor, iters: int = 6) -> torch.Tensor:
        eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        z = a.transpose(-1, -2) / (
            a.abs().sum(-1).amax(-1, keepdim=True).unsqueeze(-1)
            * a.abs().sum(-2).amax(-1, keepdim=True).unsqueeze(-1)
        )
        for _ in range(iters):
            az = a @ z
            z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, dim)
        n, dim = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.heads, dim // self.heads).permute(1, 2, 0, 3)
        q = q * self.scale
        if n <= self.m:
            o = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        else:
            seg = torch.arange(n, device=x.device) * self.m // n  # segment id per token
            counts = torch.bincount(seg, minlength=self.m).to(x.dtype).view(1, self.m, 1)
            ql = torch.zeros(self.heads, self.m, q.shape[-1], dtype=x.dtype, device=x.device)
            kl = torch.zeros_like(ql)
            ql = ql.index_add(1, seg, q) / counts
            kl = kl.index_add(1, seg, k) / counts
            k1 = torch.softmax(q @ kl.transpose(-1, -2), -1)
            k2 = torch.softmax(ql @ kl.transpose(-1, -2), -1)
            k3 = torch.softmax(ql @ k.transpose(-1, -2), -1)
            o = (k1 @ self._pinv(k2)) @ (k3 @ v)
        return self.out(o.permute(1, 0, 2).reshape(n, dim))


class _PPEG(nn.Module):
    """TransMIL's pyramid position encoding: tokens laid on a square grid (padded by
    repetition), depthwise 7/5/3 convolutions added residually."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.c7 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.c5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.c3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        n, dim = tokens.shape
        side = int(torch.ceil(torch.tensor(n**0.5)).item())
        pad = side * side - n
        t = torch.cat([tokens, tokens[:pad]]) if pad else tokens
        while t.shape[0] < side * side:  # tiny bags: repeat until the grid is full
            t = torch.cat([t, tokens[: side * side - t.shape[0]]])
        g = t.transpose(0, 1).reshape(1, dim, side, side)
        g = g + self.c7(g) + self.c5(g) + self.c3(g)
        t = g.reshape(dim, side * side).transpose(0, 1)[:n]
        return torch.cat([cls, t])


@MODELS.register(
    "transmil",
    paper="Shao et al. 2021",
    attention="Nystrom, 64 landmarks",
    options={"heads": "transmil_heads", "n_landmarks": "transmil_landmarks"},
)
class TransMIL(nn.Module):
    """TransMIL (Shao et al. 2021): linear embedding, class token, Nyström self-attention layer
    (see :class:`NystromAttention`, 64 landmarks — exact for bags ≤ 64 tiles), PPEG position
    encoding, a second Nyström layer, class-token head. ``tile_scores`` = the class token's
    exact softmax attention over tiles in the last layer (averaged over heads), computed
    in O(N) since only one query row is needed."""

    def __init__(
        self,
        *,
        feature_dim: int,
        n_out: int,
        n_covariates: int = 0,
        hidden_dim: int = 256,
        heads: int = 4,
        n_landmarks: int = 64,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.n_covariates = n_covariates
        self.embed = _embed(feature_dim, hidden_dim, dropout)
        self.cls = nn.Parameter(torch.randn(1, hidden_dim) * 0.02)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.attn1 = NystromAttention(hidden_dim, heads, n_landmarks, dropout)
        self.ppeg = _PPEG(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.attn2 = NystromAttention(hidden_dim, heads, n_landmarks, dropout)
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.head = _head(hidden_dim + n_covariates, hidden_dim // 2, n_out, dropout)

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> MILOutput:
        h = self.embed(x)
        t = torch.cat([self.cls, h])
        t = t + self.attn1(self.norm1(t))
        t = self.ppeg(t[:1], t[1:])
        t2 = self.norm2(t)
        # class-token attention over tiles in layer 2 (for heatmaps)
        a2 = self.attn2
        n, dim = t2.shape
        with torch.no_grad():
            q, k, _ = a2.qkv(t2).view(n, 3, a2.heads, dim // a2.heads).permute(1, 2, 0, 3)
            cls_attn = torch.softmax((q[:, :1] * a2.scale) @ k.transpose(-1, -2), -1)  # (h,1,n)
            scores = cls_attn.mean(0)[0, 1:]
        t = t + a2(t2)
        z = self.norm_out(t[0])
        return MILOutput(self.head(_fuse(z, covariates, self.n_covariates)), scores)


@MODELS.register("meanpool", paper="baseline")
class MeanPoolMLP(nn.Module):
    """Baseline: per-tile MLP embedding, mean over tiles, MLP head. ``tile_scores`` = the
    head applied to each tile's embedding alone (mean over outputs; for Cox this is the tile's
    log-risk, for NLL its mean hazard logit)."""

    def __init__(
        self,
        *,
        feature_dim: int,
        n_out: int,
        n_covariates: int = 0,
        hidden_dim: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.n_covariates = n_covariates
        self.embed = _embed(feature_dim, hidden_dim, dropout)
        self.head = _head(hidden_dim + n_covariates, hidden_dim // 2, n_out, dropout)

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> MILOutput:
        h = self.embed(x)
        z = h.mean(0)
        out = self.head(_fuse(z, covariates, self.n_covariates))
        with torch.no_grad():
            hc = h
            if self.n_covariates:
                hc = torch.cat([h, covariates.to(h.dtype).expand(h.shape[0], -1)], -1)  # type: ignore[union-attr]
            scores = self.head(hc).mean(-1)
        return MILOutput(out, scores)

    def forward_batch(
        self, x: torch.Tensor, seg: torch.Tensor, n_bags: int, covariates: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits ``(n_bags, n_out)`` of several packed bags (see ``GatedABMIL``)."""
        h = self.embed(x)
        counts = torch.bincount(seg, minlength=n_bags).clamp(min=1).to(h.dtype).unsqueeze(-1)
        z = segment_sum(h, seg, n_bags) / counts
        return self.head(_fuse(z, covariates, self.n_covariates))
