"""CONCH v1.5 (Mahmood lab, ``MahmoodLab/conchv1_5``: the patch encoder of TITAN), built from
timm and loaded from its local ``pytorch_model_vision.bin``.

The published vision tower is three parts, stored under these names in the checkpoint:

* ``trunk.*`` — a timm ``VisionTransformer``: ViT-L/16 (width 1024, 24 blocks, 16 heads, MLP
  ratio 4, qkv bias, class token, LayerScale initialised at 1.0, final LayerNorm);
* ``attn_pool_contrast.*`` — an attentional pooler (CoCa's): one learned 768-d query
  (``query``), LayerNorms on the query (``ln_q``) and on the 1024-d tokens (``ln_k``), bias-free
  projections ``to_q`` (768→768), ``to_kv`` (1024→2·768) and ``to_out`` (768→768), 8 heads;
* ``ln_contrast`` — a LayerNorm on the pooled 768-d vector, which is the feature.

Input: 448 × 448 px, ImageNet mean/std. The checkpoint's position embedding is on the 14 × 14
grid of a 224-px ViT (other grids are first resampled to 14 × 14, bilinearly, as the authors'
loader does); the authors' forward pass interpolates it to the 28 × 28 grid of a 448-px tile
(bicubic, with DINO's +0.1 scale offset). pathfl does that interpolation once at load time and
builds the ViT for 448 px, which gives the same position embedding at every forward pass.
Sources: the model card (huggingface.co/MahmoodLab/conchv1_5) and TRIDENT's encoder definition
(architecture and checkpoint format only; no code is copied).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pathfl.features.foundation import FoundationModel

#: the checkpoint's position-embedding grid (a 224-px ViT/16) and the 448-px one used
BASE_GRID = 14
POS_EMBED = "trunk.pos_embed"


@functools.cache
def _classes() -> tuple[type, type]:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    class AttentionalPooler(nn.Module):
        """Learned queries attending over the tokens (multi-head, scaled dot product)."""

        def __init__(self, *, d_model: int, context_dim: int, n_head: int, n_queries: int):
            super().__init__()
            self.query = nn.Parameter(torch.randn(n_queries, d_model))
            self.heads = n_head
            self.ln_k = nn.LayerNorm(context_dim)
            self.ln_q = nn.LayerNorm(d_model)
            self.to_q = nn.Linear(d_model, d_model, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
            self.to_out = nn.Linear(d_model, d_model, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
            k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)

            def heads(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

            out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
            return self.to_out(out.transpose(1, 2).reshape(b, q.shape[1], -1))

    class ConchV15(nn.Module):
        """ViT trunk -> attentional pooling (1 query) -> LayerNorm: (B, 3, H, W) -> (B, 768)."""

        def __init__(self, trunk: nn.Module, *, dim: int, heads: int) -> None:
            super().__init__()
            self.trunk = trunk
            self.attn_pool_contrast = AttentionalPooler(
                d_model=dim, context_dim=trunk.num_features, n_head=heads, n_queries=1
            )
            self.ln_contrast = nn.LayerNorm(dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.trunk.forward_features(x)
            return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])

    return AttentionalPooler, ConchV15


def build(fm: FoundationModel) -> nn.Module:
    """The tower of ``fm`` (random weights; call inside ``torch.device("meta")`` to get the
    architecture without memory). ``fm.kwargs``: the timm ViT's, plus ``pool_dim`` and
    ``pool_heads`` of the pooler."""
    import timm

    kw = dict(fm.kwargs)
    dim, heads = kw.pop("pool_dim"), kw.pop("pool_heads")
    trunk = timm.create_model(fm.arch, pretrained=False, **kw)
    return _classes()[1](trunk, dim=dim, heads=heads)


def native_pos_embed(pos_embed: torch.Tensor, *, grid: int) -> torch.Tensor:
    """The checkpoint's ``trunk.pos_embed`` (1, 1 + g², D) as the authors' forward pass uses it
    on a ``grid`` × ``grid`` patch grid: resampled to the 14 × 14 base grid when stored on
    another (bilinear), then interpolated to ``grid`` (bicubic, scale (grid + 0.1) / 14)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    pe = pos_embed.float()
    dim = pe.shape[-1]
    g = math.isqrt(pe.shape[1] - 1)
    if g * g != pe.shape[1] - 1:
        raise ValueError(f"{POS_EMBED} {tuple(pe.shape)}: not a class token + a square grid")
    cls, patch = pe[:, :1], pe[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    if g != BASE_GRID:
        patch = F.interpolate(patch, size=(BASE_GRID, BASE_GRID), mode="bilinear")
    if grid != BASE_GRID:
        s = (grid + 0.1) / BASE_GRID
        patch = F.interpolate(patch, scale_factor=(s, s), mode="bicubic")
    return torch.cat([cls, patch.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def adapt_state(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``state`` with its position embedding on ``model``'s grid (:func:`native_pos_embed`);
    every other tensor must fit as it is."""
    pe = state.get(POS_EMBED)
    if pe is None or pe.ndim != 3:
        return state
    grid = model.trunk.patch_embed.grid_size[0]
    try:
        return {**state, POS_EMBED: native_pos_embed(pe, grid=grid)}
    except ValueError:
        return state  # reported as a shape mismatch by the strict load


def header_shapes(
    header: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """File shapes (from a safetensors header, before any tensor is read) as the model will
    see them after :func:`adapt_state`: a class token + square-grid ``trunk.pos_embed`` of
    the model's width counts as fitting."""
    pe, want = header.get(POS_EMBED), expected.get(POS_EMBED)
    if pe is None or want is None or len(pe) != 3 or pe[2] != want[2]:
        return header
    if math.isqrt(pe[1] - 1) ** 2 != pe[1] - 1:
        return header
    return {**header, POS_EMBED: want}
