"""Pathology foundation-model encoders: one :class:`FoundationModel` per published checkpoint,
with the architecture, feature dim, normalisation, native tile size and native µm/px, pooling
and licence *as the authors specify them* (sources in each entry's comment), loaded from local
files only (:mod:`pathfl.features.fm_loader`).

Every value below was taken from the authors' model card / code, or from TRIDENT
(``mahmoodlab/TRIDENT``, ``trident/patch_encoder_models/load.py``), which reproduces them; a
value the sources do not state is left empty and said so (``mpp_note``), never guessed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class FoundationModel:
    """One checkpoint's recipe. ``library`` is ``timm`` (``arch`` = a timm model name built with
    ``kwargs``), ``conch`` (CONCH v1.5: a timm trunk + pooler, :mod:`pathfl.features.conch`)
    or ``transformers`` (``arch`` = the ``model_type`` its ``config.json`` must have;
    ``kwargs`` = config values that must match). ``pooling``: ``cls`` (the class token),
    ``cls+mean`` (class token concatenated with the mean of the patch tokens, which start
    after ``prefix_tokens`` class + register tokens) or ``attn-pool`` (CONCH v1.5's learned
    attentional pooler). ``native_mpp``: µm/px the model was
    trained at (several for mixed-magnification training; empty = not stated)."""

    name: str
    library: str
    arch: str
    kwargs: dict[str, Any]
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_px: int
    native_mpp: tuple[float, ...]
    pooling: str
    hub_id: str
    licence: str
    mpp_note: str = ""
    prefix_tokens: int = 1
    #: parameters of the architecture as timm builds it (checked by the tests; GigaPath's is
    #: also the count its authors' demo prints); 0 for the transformers models
    params: int = 0
    summary: str = field(default="")


FOUNDATION_MODELS: dict[str, FoundationModel] = {}


def _add(fm: FoundationModel) -> None:
    FOUNDATION_MODELS[fm.name] = fm


# Phikon (Owkin): iBOT ViT-B/16, HF transformers ViTModel; features = last_hidden_state[:, 0]
# (model card huggingface.co/owkin/phikon; TRIDENT PhikonInferenceEncoder: ViTModel with
# add_pooling_layer=False, ImageNet mean/std, 224 px). Tiles 224 px at 20x = 0.5 µm/px
# (Filiot et al. 2023, medRxiv 2023.07.21.23292757).
_add(
    FoundationModel(
        name="phikon",
        library="transformers",
        arch="vit",
        kwargs={"hidden_size": 768, "num_hidden_layers": 12, "patch_size": 16, "image_size": 224},
        feature_dim=768,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        input_px=224,
        native_mpp=(0.5,),
        pooling="cls",
        hub_id="owkin/phikon",
        licence="Owkin non-commercial licence (see the model card)",
        summary="Owkin Phikon, iBOT ViT-B/16 (transformers ViTModel)",
    )
)
# Phikon-v2 (Owkin): DINOv2 ViT-L/16, transformers AutoModel (Dinov2Model); features =
# last_hidden_state[:, 0] (model card huggingface.co/owkin/phikon-v2; TRIDENT
# Phikonv2InferenceEncoder: ImageNet mean/std, Resize+CenterCrop 224). Tiles 224 px at 20x =
# 0.5 µm/px (Filiot et al. 2024, arXiv 2409.09173).
_add(
    FoundationModel(
        name="phikon-v2",
        library="transformers",
        arch="dinov2",
        kwargs={"hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 16},
        feature_dim=1024,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        input_px=224,
        native_mpp=(0.5,),
        pooling="cls",
        hub_id="owkin/phikon-v2",
        licence="Owkin non-commercial licence (see the model card)",
        summary="Owkin Phikon-v2, DINOv2 ViT-L/16 (transformers Dinov2Model)",
    )
)
# UNI (Mahmood lab): timm vit_large_patch16_224 with img_size 224, patch_size 16, init_values
# 1e-5, num_classes 0, dynamic_img_size True; CLS token; ImageNet mean/std (model card
# huggingface.co/MahmoodLab/UNI; TRIDENT UNIInferenceEncoder). Trained on tiles at 20x =
# 0.5 µm/px (Chen et al., Nature Medicine 2024). 303,350,784 parameters (counted, timm 1.0).
_add(
    FoundationModel(
        name="uni",
        library="timm",
        arch="vit_large_patch16_224",
        kwargs={
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        feature_dim=1024,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        input_px=224,
        native_mpp=(0.5,),
        pooling="cls",
        hub_id="MahmoodLab/UNI",
        licence="CC-BY-NC-ND 4.0 (gated; see the model card)",
        params=303_350_784,
        summary="Mahmood lab UNI, DINOv2 ViT-L/16 (timm)",
    )
)
# UNI2-h (Mahmood lab): timm vit_giant_patch14_224 with the kwargs of the model card
# (huggingface.co/MahmoodLab/UNI2-h, also TRIDENT UNIv2InferenceEncoder): ViT-H/14, 24 blocks,
# 24 heads, width 1536, SwiGLUPacked MLP (ratio 2.66667*2) with SiLU, 8 register tokens,
# no_embed_class; CLS token; ImageNet mean/std; 224 px. The sources do not state the µm/px of
# the 200M training tiles, so none is checked.
_add(
    FoundationModel(
        name="uni2-h",
        library="timm",
        arch="vit_giant_patch14_224",
        kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            "mlp_layer": "SwiGLUPacked",
            "act_layer": "SiLU",
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
        feature_dim=1536,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        input_px=224,
        native_mpp=(),
        mpp_note="training µm/px not stated by the model card: not checked (UNI used 0.5)",
        pooling="cls",
        prefix_tokens=9,
        hub_id="MahmoodLab/UNI2-h",
        licence="CC-BY-NC-ND 4.0 (gated; see the model card)",
        params=681_394_176,
        summary="Mahmood lab UNI2-h, ViT-H/14 + 8 registers, SwiGLU (timm)",
    )
)
# Virchow2 (Paige): timm vit_huge_patch14_224 with img_size 224, init_values 1e-5, 4 register
# tokens, mlp_ratio 5.3375, SwiGLUPacked + SiLU, global_pool "" (all tokens out); embedding =
# concat(class token, mean of patch tokens output[:, 5:]) = 2 x 1280 = 2560 (model card
# huggingface.co/paige-ai/Virchow2; TRIDENT Virchow2InferenceEncoder). ImageNet mean/std,
# 224 px. Mixed-magnification training at 5x, 10x, 20x, 40x (Zimmermann et al. 2024, arXiv
# 2408.00738), i.e. about 2, 1, 0.5, 0.25 µm/px: tiles at any of these are native.
_add(
    FoundationModel(
        name="virchow2",
        library="timm",
        arch="vit_huge_patch14_224",
        kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "reg_tokens": 4,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            "mlp_layer": "SwiGLUPacked",
            "act_layer": "SiLU",
        },
        feature_dim=2560,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        input_px=224,
        native_mpp=(2.0, 1.0, 0.5, 0.25),
        mpp_note="mixed-magnification training (5x, 10x, 20x, 40x)",
        pooling="cls+mean",
        prefix_tokens=5,
        hub_id="paige-ai/Virchow2",
        licence="CC-BY-NC-ND 4.0 (gated; see the model card)",
        params=631_239_424,
        summary="Paige Virchow2, ViT-H/14 + 4 registers, SwiGLU (timm); CLS + mean patch",
    )
)
# H-optimus-0 (Bioptimus): timm vit_giant_patch14_reg4_dinov2 with init_values 1e-5,
# num_classes 0, global_pool "token" (CLS), 224 px; mean (0.707223, 0.578729, 0.703617), std
# (0.211883, 0.230117, 0.177517); 224 x 224 tiles at 0.5 µm/px (model card
# huggingface.co/bioptimus/H-optimus-0; TRIDENT HOptimus0InferenceEncoder).
_add(
    FoundationModel(
        name="h-optimus-0",
        library="timm",
        arch="vit_giant_patch14_reg4_dinov2",
        kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "global_pool": "token",
            "dynamic_img_size": False,
        },
        feature_dim=1536,
        mean=(0.707223, 0.578729, 0.703617),
        std=(0.211883, 0.230117, 0.177517),
        input_px=224,
        native_mpp=(0.5,),
        pooling="cls",
        prefix_tokens=5,
        hub_id="bioptimus/H-optimus-0",
        licence="Apache-2.0 (see the model card)",
        params=1_134_774_272,
        summary="Bioptimus H-optimus-0, ViT-g/14 + 4 registers (timm)",
    )
)
# Prov-GigaPath tile encoder: timm vit_giant_patch14_dinov2 overridden to patch_size 16,
# embed_dim 1536, depth 40, 24 heads, mlp_ratio 5.33334, init_values 1e-5, num_classes 0; CLS
# token; ImageNet mean/std (hf config of prov-gigapath/prov-gigapath, as in TRIDENT
# GigaPathInferenceEncoder; demo/3_load_tile_encoder.py of prov-gigapath/prov-gigapath).
# The authors cut 256-px tiles at 0.5 µm/px and centre-crop 224 px, so the model sees 224 px
# at 0.5 µm/px: tile 224 px at 0.5 µm/px here. 1,134,953,984 parameters (the demo's count).
_add(
    FoundationModel(
        name="gigapath",
        library="timm",
        arch="vit_giant_patch14_dinov2",
        kwargs={
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
            "num_classes": 0,
        },
        feature_dim=1536,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        input_px=224,
        native_mpp=(0.5,),
        mpp_note="authors: 256-px tiles at 0.5 µm/px, centre crop 224",
        pooling="cls",
        hub_id="prov-gigapath/prov-gigapath",
        licence="Prov-GigaPath licence, research use (gated; see the model card)",
        params=1_134_953_984,
        summary="Prov-GigaPath tile encoder, ViT-g/16 DINOv2 (timm)",
    )
)
# Kaiko "towards large pathology FMs" (kaiko.ai, arXiv 2404.15217): DINO/DINOv2 ViTs trained on
# TCGA; timm vit_small_patch16_224 / vit_base_patch16_224 with num_classes 0 (CLS token),
# mean = std = (0.5, 0.5, 0.5), 224 px (TRIDENT KaikoInferenceEncoder; timm ports
# 1aurent/vit_*_patch16_224.kaiko_ai_towards_large_pathology_fms, licence kaiko-non-commercial).
# Trained at several magnifications; the sources give no single native µm/px: not checked.
for _size, _dim, _params in (("small", 384, 21_665_664), ("base", 768, 85_798_656)):
    _add(
        FoundationModel(
            name=f"kaiko-vit{_size[0]}16",
            library="timm",
            arch=f"vit_{_size}_patch16_224",
            kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
            feature_dim=_dim,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            input_px=224,
            native_mpp=(),
            mpp_note="multi-magnification training: no single native µm/px, not checked",
            pooling="cls",
            hub_id=f"1aurent/vit_{_size}_patch16_224.kaiko_ai_towards_large_pathology_fms",
            licence="kaiko-non-commercial (see the model card)",
            params=_params,
            summary=f"kaiko.ai ViT-{_size[0].upper()}/16 (timm)",
        )
    )

# CONCH v1.5 (Mahmood lab; TITAN's patch encoder, Ding et al. 2024, arXiv 2411.19666): a
# ViT-L/16 trunk (timm vit_large_patch16_224 layout, LayerScale init 1.0, class token, final
# LayerNorm) at 448 px, then an attentional pooler (1 query, 768-d, 8 heads, over the trunk's
# 1024-d tokens) and a LayerNorm: 768-d features (TRIDENT Conchv15InferenceEncoder, img_size
# 448, ImageNet mean/std; weights pytorch_model_vision.bin of huggingface.co/MahmoodLab/
# conchv1_5). Built by pathfl.features.conch. The sources give the 448-px input but not the
# µm/px of the training tiles (TITAN extracts its patches at 20x): not checked.
_add(
    FoundationModel(
        name="conch-v1.5",
        library="conch",
        arch="vit_large_patch16_224",
        kwargs={
            "img_size": 448,
            "patch_size": 16,
            "init_values": 1.0,
            "num_classes": 0,
            "dynamic_img_size": False,
            "variant": "v1.5",
            "pool_dim": 768,
            "pool_heads": 8,
        },
        feature_dim=768,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        input_px=448,
        native_mpp=(),
        mpp_note="training µm/px not stated by the sources at hand (TITAN: 20x patches)",
        pooling="attn-pool",
        hub_id="MahmoodLab/conchv1_5",
        licence="CC-BY-NC-ND 4.0 (gated; see the model card)",
        params=306_711_296,
        summary="Mahmood lab CONCH v1.5, ViT-L/16 at 448 px + attentional pooler (timm)",
    )
)

OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# CONCH (Mahmood lab; Lu et al., Nature Medicine 2024): the vision tower of a CoCa model — timm
# ViT-B/16 at 448 px, then an attentional pooler (1 query, 512-d, nn.MultiheadAttention with 8
# heads over the 768-d tokens) and a LayerNorm: 512-d features before the contrastive projection
# (CONCH repo, conch/open_clip_custom: config conch_ViT-B-16, vision_tower.py, coca_model.py;
# OpenAI CLIP mean/std, 448 px; CLAM and TRIDENT extract encode_image(proj_contrast=False,
# normalize=False)). Weights: pytorch_model.bin of huggingface.co/MahmoodLab/CONCH (the whole
# CoCa model; pathfl.features.conch keeps its visual part). µm/px of training: not stated.
_add(
    FoundationModel(
        name="conch",
        library="conch",
        arch="vit_base_patch16_224",
        kwargs={
            "img_size": 448,
            "patch_size": 16,
            "num_classes": 0,
            "dynamic_img_size": True,
            "variant": "v1",
            "pool_dim": 512,
            "pool_heads": 8,
        },
        feature_dim=512,
        mean=OPENAI_CLIP[0],
        std=OPENAI_CLIP[1],
        input_px=448,
        native_mpp=(),
        mpp_note="training µm/px not stated by the sources at hand",
        pooling="attn-pool",
        hub_id="MahmoodLab/CONCH",
        licence="CC-BY-NC-ND 4.0 (gated; see the model card)",
        params=87_567_104,
        summary="Mahmood lab CONCH, CoCa vision tower: ViT-B/16 at 448 px + attentional pooler",
    )
)

#: listed but not supported, and why (none at present: CONCH is built without open_clip)
NOT_SUPPORTED: dict[str, str] = {}
