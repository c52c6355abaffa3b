"""CONCH (Mahmood lab, ``MahmoodLab/CONCH``) and CONCH v1.5 (``MahmoodLab/conchv1_5``: the patch
encoder of TITAN) vision towers, built from timm + a small attentional pooler and loaded from
their local checkpoints (``pytorch_model.bin``; ``pytorch_model_vision.bin``) — no open_clip.

CONCH v1.5's vision tower is three parts, stored under these names in the checkpoint:

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

CONCH (v1) is the vision tower of a CoCa model: the checkpoint holds the whole model
(``visual.*``, ``text.*``, ``text_decoder.*``, ``logit_scale``); only ``visual.trunk.*`` (a timm
ViT-B/16 at 448 px: width 768, 12 blocks, 12 heads, no LayerScale, final LayerNorm),
``visual.attn_pool_contrast.*`` (one learned 512-d query, LayerNorms ``ln_q``/``ln_k``, a
``torch.nn.MultiheadAttention`` of 8 heads with 768-d keys/values: ``attn.q_proj_weight``,
``k_proj_weight``, ``v_proj_weight``, ``in_proj_bias``, ``out_proj``) and ``visual.ln_contrast``
are used. The feature is the 512-d LayerNorm output before the contrastive projection, not
L2-normalised (``encode_image(..., proj_contrast=False, normalize=False)``, as CLAM and TRIDENT
extract it); the caption pooler, ``proj_contrast`` and the text towers are dropped. OpenAI CLIP
mean/std, 448 px.

Sources: the model cards (huggingface.co/MahmoodLab/CONCH, /conchv1_5), the ``conch`` package
(github.com/mahmoodlab/CONCH: ``open_clip_custom``, config ``conch_ViT-B-16``) and TRIDENT's
encoder definitions (architecture and checkpoint format only; no code is copied).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pathfl.features.foundation import FoundationModel

#: CONCH v1.5's checkpoint position-embedding grid (a 224-px ViT/16)
BASE_GRID = 14
POS_EMBED = "trunk.pos_embed"
#: CONCH v1: the vision tower's prefix in the CoCa checkpoint, and its unused parts
V1_PREFIX = "visual."
V1_UNUSED = ("attn_pool_caption.", "ln_caption.", "proj_contrast")


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

        def __init__(self, trunk: nn.Module, *, dim: int, heads: int, pooler: type) -> None:
            super().__init__()
            self.trunk = trunk
            self.attn_pool_contrast = pooler(
                d_model=dim, context_dim=trunk.num_features, n_head=heads, n_queries=1
            )
            self.ln_contrast = nn.LayerNorm(dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.trunk.forward_features(x)
            return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])

    class MultiheadPooler(nn.Module):
        """CONCH v1's pooler: learned queries through ``nn.MultiheadAttention``."""

        def __init__(self, *, d_model: int, context_dim: int, n_head: int, n_queries: int):
            super().__init__()
            self.query = nn.Parameter(torch.randn(n_queries, d_model))
            self.attn = nn.MultiheadAttention(
                d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True
            )
            self.ln_q = nn.LayerNorm(d_model)
            self.ln_k = nn.LayerNorm(context_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.ln_k(x)
            q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
            return self.attn(q, x, x, need_weights=False)[0]

    return AttentionalPooler, ConchV15, MultiheadPooler


def build(fm: FoundationModel) -> nn.Module:
    """The tower of ``fm`` (random weights; call inside ``torch.device("meta")`` to get the
    architecture without memory). ``fm.kwargs``: the timm ViT's, plus ``pool_dim`` and
    ``pool_heads`` of the pooler."""
    import timm

    kw = dict(fm.kwargs)
    dim, heads, variant = kw.pop("pool_dim"), kw.pop("pool_heads"), kw.pop("variant")
    trunk = timm.create_model(fm.arch, pretrained=False, **kw)
    pool_cls, tower, mha_cls = _classes()
    return tower(trunk, dim=dim, heads=heads, pooler=mha_cls if variant == "v1" else pool_cls)


def rename(fm: FoundationModel, entries: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's entries (tensors, or shapes from a header) under the tower's names:
    CONCH v1 keeps its ``visual.*`` part less the caption pooler and the projection."""
    if fm.kwargs.get("variant") != "v1" or not any(k.startswith(V1_PREFIX) for k in entries):
        return entries
    out = {k[len(V1_PREFIX) :]: v for k, v in entries.items() if k.startswith(V1_PREFIX)}
    return {k: v for k, v in out.items() if not k.startswith(V1_UNUSED)}


def native_pos_embed(pos_embed: torch.Tensor, *, grid: int, base: int | None) -> torch.Tensor:
    """The checkpoint's ``trunk.pos_embed`` (1, 1 + g², D) as the authors' forward pass uses it
    on a ``grid`` × ``grid`` patch grid. CONCH v1.5 (``base`` 14): resampled to the 14 × 14 base
    grid when stored on another (bilinear), then interpolated to ``grid`` (bicubic, scale
    (grid + 0.1) / 14). CONCH v1 (``base`` None): resampled to ``grid`` when stored on another
    (bilinear)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    pe = pos_embed.float()
    dim = pe.shape[-1]
    g = math.isqrt(pe.shape[1] - 1)
    if g * g != pe.shape[1] - 1:
        raise ValueError(f"{POS_EMBED} {tuple(pe.shape)}: not a class token + a square grid")
    cls, patch = pe[:, :1], pe[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    first = base or grid
    if g != first:
        patch = F.interpolate(patch, size=(first, first), mode="bilinear")
    if first != grid:
        s = (grid + 0.1) / first
        patch = F.interpolate(patch, scale_factor=(s, s), mode="bicubic")
    return torch.cat([cls, patch.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def adapt_state(fm: FoundationModel, state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``state`` (already :func:`rename`-d) with its position embedding on ``model``'s grid
    (:func:`native_pos_embed`); every other tensor must fit as it is."""
    pe = state.get(POS_EMBED)
    if pe is None or pe.ndim != 3:
        return state
    grid = model.trunk.patch_embed.grid_size[0]
    base = None if fm.kwargs.get("variant") == "v1" else BASE_GRID
    if base is None and pe.shape[1] == 1 + grid * grid:
        return state
    try:
        return {**state, POS_EMBED: native_pos_embed(pe, grid=grid, base=base)}
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
