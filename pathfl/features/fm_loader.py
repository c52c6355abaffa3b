"""Building and loading the foundation-model encoders of :mod:`pathfl.features.foundation`
from local files only: ``--weights FILE`` (a state dict: ``.safetensors``,
``pytorch_model.bin``, ``.pth``), ``--weights DIR`` (a local Hugging Face snapshot), or the
model's snapshot already in the Hugging Face cache. Nothing is downloaded (``HF_HUB_OFFLINE``
is set while a model is built, and configs are read with ``local_files_only``).

The architecture is built on the meta device (no memory, no random initialisation), the file's
names and shapes are checked against it (from the safetensors header, before any tensor is
read), then the tensors are loaded strictly with ``assign=True``: a model either holds the
checkpoint's tensors or is refused — random weights are never used."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pathfl.config import ConfigError
from pathfl.features import checkpoint as ckpt
from pathfl.features import weights as wts
from pathfl.features.foundation import FOUNDATION_MODELS, NOT_SUPPORTED, FoundationModel
from pathfl.io import sha256_file

if TYPE_CHECKING:
    from torch import nn

    from pathfl.features.encoders import Encoder, EncoderCfg
    from pathfl.registry import Registry

logger = logging.getLogger(__name__)

#: keys a checkpoint may carry that the feature model does not use (classifier heads, the
#: transformers pooler: features are the CLS of last_hidden_state); dropped only when the
#: model has no such key
UNUSED_PREFIXES = ("head.", "fc.", "classifier.", "head_dist.", "pooler.")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` while building, so no library call can reach the network."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _need(module: str, fm: FoundationModel) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"encoder {fm.name} needs the optional package {module}: pip install 'pathfl[encoders]'"
        ) from e


def _timm_kwargs(fm: FoundationModel) -> dict[str, Any]:
    """The entry's kwargs with layer names resolved to timm / torch classes."""
    import torch

    timm_layers = _need("timm.layers", fm)
    named = {"SwiGLUPacked": timm_layers.SwiGLUPacked, "SiLU": torch.nn.SiLU}
    return {k: named.get(v, v) if isinstance(v, str) else v for k, v in fm.kwargs.items()}


def build_meta(fm: FoundationModel) -> nn.Module:
    """The exact timm architecture of ``fm`` on the meta device (no memory, no init); CONCH
    v1.5: its timm trunk + pooler (:mod:`pathfl.features.conch`)."""
    import torch

    timm = _need("timm", fm)
    with _offline(), torch.device("meta"):
        if fm.library == "conch":
            from pathfl.features import conch

            return conch.build(fm)
        return timm.create_model(fm.arch, pretrained=False, **_timm_kwargs(fm))


def _hf_config(fm: FoundationModel, source: ckpt.Checkpoint) -> Any:
    """The snapshot's config, refused unless its ``model_type`` and sizes are the entry's."""
    transformers = _need("transformers", fm)
    if source.config is None or source.weights.name not in ckpt.WEIGHT_FILES:
        raise wts.WeightsError(
            f"{source.weights}: a transformers model loads from a local copy of {fm.hub_id}: "
            "pass --weights DIR, a folder with its config.json and "
            f"{' or '.join(ckpt.WEIGHT_FILES)}"
        )
    try:
        cfg = transformers.AutoConfig.from_pretrained(
            str(source.config.parent), local_files_only=True
        )
    except Exception as e:  # malformed or unknown config
        raise wts.WeightsError(f"{source.config}: not a usable transformers config ({e})") from e
    wrong = {k: getattr(cfg, k, None) for k, v in fm.kwargs.items() if getattr(cfg, k, None) != v}
    if cfg.model_type != fm.arch or wrong:
        want = {"model_type": fm.arch, **fm.kwargs}
        raise wts.WeightsError(
            f"{source.config}: not the {fm.name} architecture (expected {want}; the file has "
            f"model_type={cfg.model_type!r}, {wrong})"
        )
    return cfg


def _load_hf(fm: FoundationModel, source: ckpt.Checkpoint) -> nn.Module:
    """``from_pretrained`` of the local snapshot (``local_files_only``; transformers maps the
    checkpoint's names onto its modules), refused unless every tensor of the model came from
    the file: transformers would otherwise initialise missing ones at random."""
    import torch

    transformers = _need("transformers", fm)
    cfg = _hf_config(fm, source)
    cls = transformers.ViTModel if fm.arch == "vit" else transformers.AutoModel
    extra: dict[str, Any] = {"add_pooling_layer": False} if fm.arch == "vit" else {}
    # fp32 whatever the file's dtype (transformers 5 would keep it); `dtype` from 4.56 on
    new_kw = int(transformers.__version__.split(".")[0]) >= 5
    extra["dtype" if new_kw else "torch_dtype"] = torch.float32
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # its load report; ours below names the file
    transformers.utils.logging.disable_progress_bar()
    try:
        with _offline():
            model, info = cls.from_pretrained(
                str(source.weights.parent), config=cfg, local_files_only=True,
                output_loading_info=True, ignore_mismatched_sizes=True, **extra,
            )  # fmt: skip
    except Exception as e:  # unreadable weights in many ways
        raise wts.WeightsError(f"{source.weights}: cannot load {fm.name} ({e})") from e
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(UNUSED_PREFIXES))
    report = ckpt.key_report(
        missing=sorted(info["missing_keys"]),
        unexpected=unexpected,
        shapes=sorted(f"{m[0]} file {list(m[1])} vs model {list(m[2])}" if isinstance(m, tuple)
                      else str(m) for m in info["mismatched_keys"]),
    )  # fmt: skip
    if report or info.get("error_msgs"):
        raise wts.WeightsError(
            f"{source.weights}: weights do not fit encoder {fm.name!r}: "
            f"{report or info['error_msgs'][:3]}"
        )
    return model


def adapt_keys(state: dict[str, Any], own: set[str]) -> dict[str, Any]:
    """Drop classifier-head tensors the feature model does not have (a timm checkpoint saved
    with its head); everything else must fit exactly."""
    return {k: v for k, v in state.items() if k in own or not k.startswith(UNUSED_PREFIXES)}


def load_model(fm: FoundationModel, source: ckpt.Checkpoint) -> nn.Module:
    """``fm``'s architecture holding the tensors of ``source`` (strict; names the file)."""
    if fm.library == "transformers":
        return FeatureHead(_load_hf(fm, source), fm).eval()
    from pathfl.features import conch

    model = build_meta(fm)
    expected = ckpt.shapes_of(model.state_dict())
    header = ckpt.file_shapes(source.weights)
    if header is not None:  # refuse a wrong safetensors file before reading its tensors
        if fm.library == "conch":
            header = conch.header_shapes(conch.rename(fm, header), expected)
        kept = adapt_keys(dict.fromkeys(header), set(expected))
        ckpt.check_fit(expected, {k: header[k] for k in kept}, source.weights, fm.name)
    state = wts.load_state_dict(source.weights)
    if fm.library == "conch":  # the vision tower's tensors; position embedding at 448 px
        state = conch.adapt_state(fm, conch.rename(fm, state), model)
    state = adapt_keys(state, set(expected))
    # assign=True keeps the file's dtype: fp16/bf16 checkpoints become fp32 (precision is
    # chosen at inference, --precision)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    wts.load_strict(model, state, source.weights, fm.name, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # non-persistent buffers are not in any checkpoint
        raise wts.WeightsError(f"{fm.name}: tensors not initialised by the checkpoint: {left[:5]}")
    return (model if fm.library == "conch" else FeatureHead(model, fm)).eval()


@functools.cache
def _feature_head_cls() -> type:
    from torch import nn

    class _FeatureHead(nn.Module):
        """The authors' pooling on top of a backbone: CLS, or CLS + mean of patch tokens."""

        def __init__(self, backbone: nn.Module, fm: FoundationModel) -> None:
            super().__init__()
            self.backbone = backbone
            self.library, self.pooling, self.prefix = fm.library, fm.pooling, fm.prefix_tokens

        def forward(self, x: Any) -> Any:
            import torch

            if self.library == "transformers":
                tokens = self.backbone(pixel_values=x).last_hidden_state
            elif self.pooling == "cls":
                return self.backbone(x)  # timm num_classes=0, global_pool "token": the CLS
            else:
                tokens = self.backbone.forward_features(x)
            cls = tokens[:, 0]
            if self.pooling == "cls":
                return cls
            return torch.cat([cls, tokens[:, self.prefix :].mean(1)], dim=-1)

    return _FeatureHead


def FeatureHead(backbone: nn.Module, fm: FoundationModel) -> nn.Module:  # noqa: N802
    """A module mapping normalised (B, 3, H, W) to (B, feature_dim) with ``fm``'s pooling."""
    return _feature_head_cls()(backbone, fm)


def resolve(fm: FoundationModel, weights: str | os.PathLike[str] | None) -> ckpt.Checkpoint:
    """``--weights`` (file or folder), else the snapshot of ``fm.hub_id`` in the HF cache."""
    if weights is not None:
        return ckpt.locate_checkpoint(weights)
    snap = ckpt.hf_cache_snapshot(fm.hub_id)
    if snap is None:
        raise wts.WeightsError(_missing(fm))
    return ckpt.locate_checkpoint(snap)


def _missing(fm: FoundationModel) -> str:
    cache = ckpt.hf_hub_cache() / f"models--{fm.hub_id.replace('/', '--')}"
    return (
        f"{fm.name}: weights not found. Pass --weights FILE (a state dict: .safetensors, "
        f"pytorch_model.bin or .pth) or --weights DIR (a local copy of the Hugging Face repo "
        f"{fm.hub_id}, e.g. `huggingface-cli download {fm.hub_id} --local-dir DIR` on a machine "
        f"with internet, after accepting its licence: {fm.licence}), or pre-fill the Hugging "
        f"Face cache ({cache}). pathfl never downloads weights or uses random ones."
    )


def locate(fm: FoundationModel) -> tuple[bool, str]:
    """``(available, where)`` for `pathfl encoders` (the HF cache; nothing is loaded)."""
    snap = ckpt.hf_cache_snapshot(fm.hub_id)
    if snap is not None:
        return True, str(snap)
    return False, f"--weights FILE|DIR (a local copy of {fm.hub_id}); not in the HF cache"


def config_sha256(source: ckpt.Checkpoint) -> str:
    """sha256 of the architecture config a transformers model was built from ("" for timm),
    canonical JSON so that formatting does not count."""
    if source.config is None:
        return ""
    from pathfl.io import sha256_json

    return sha256_json(json.loads(source.config.read_text()))


def create(fm: FoundationModel, cfg: EncoderCfg, weights: Any) -> Encoder:
    """The :class:`~pathfl.features.encoders.Encoder` of ``fm`` from local ``weights``."""
    from pathfl.features.encoders import Encoder

    source = resolve(fm, weights)
    model = load_model(fm, source)
    assert cfg.spec is not None
    extra = config_sha256(source) if fm.library == "transformers" else ""
    return Encoder(
        spec=cfg.spec,
        model=model,
        weights_path=source.weights,
        weights_sha256=sha256_file(source.weights),
        config_sha256=extra,
    )


def register_all(registry: Registry[Encoder]) -> None:
    """Add one registry entry per foundation model (and the listed unsupported ones)."""
    from pathfl.features.encoders import EncoderCfg, EncoderSpec

    for fm in FOUNDATION_MODELS.values():
        spec = EncoderSpec(
            fm.name, fm.feature_dim, fm.input_px, fm.mean, fm.std, fixed_input_px=True,
            native_mpp=fm.native_mpp,
        )  # fmt: skip
        cfg = EncoderCfg(
            spec=spec,
            source=f"{fm.summary}; {fm.pooling}; {fm.licence}",
            locate=lambda fm=fm: locate(fm),
            mpp_note=fm.mpp_note,
        )
        registry.register(fm.name, cfg=cfg)(_factory(fm, cfg))
    for name, why in NOT_SUPPORTED.items():
        short = "not supported: needs open_clip (see docs/extract.md)"
        cfg = EncoderCfg(spec=None, source=short, locate=lambda: (False, "not supported"))
        registry.register(name, cfg=cfg)(_unsupported(why))


def _factory(fm: FoundationModel, cfg: EncoderCfg) -> Any:
    def factory(*, weights: Any = None, **options: Any) -> Encoder:
        if options:
            raise ConfigError(f"encoder {fm.name!r} takes no options, got {sorted(options)}")
        return create(fm, cfg, weights)

    factory.__doc__ = f"{fm.summary}: {fm.feature_dim}-d ({fm.pooling})."
    return factory


def _unsupported(why: str) -> Any:
    def factory(**_: Any) -> Encoder:
        raise ConfigError(why)

    return factory
