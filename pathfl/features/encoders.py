"""Tile encoders: a registry of pretrained CNN/ViT trunks mapping normalised RGB tiles to
feature vectors. Each entry carries one configuration, an :class:`EncoderCfg` (the
:class:`EncoderSpec` of its features — feature dim, input size, mean/std — and where its weights
come from), used both to build it and to list it. Random weights are never used: every factory
either loads a real checkpoint strictly or raises :class:`~pathfl.features.weights.WeightsError`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pathfl.config import ConfigError
from pathfl.features import weights as wts
from pathfl.io import sha256_file
from pathfl.registry import Registry

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class EncoderSpec:
    """What a features file must record about the encoder that made it."""

    name: str
    feature_dim: int
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fixed_input_px: bool = False  # True: tiles are resized to input_px (e.g. ViT patch grids)
    #: µm/px the encoder was trained at (several for mixed-magnification training); empty =
    #: undefined (ImageNet CNNs) or not stated by the authors: no resolution check
    native_mpp: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Encoder:
    """A loaded encoder: ``model`` maps normalised float (B, 3, H, W) to (B, feature_dim)."""

    spec: EncoderSpec
    model: nn.Module
    weights_path: Path
    weights_sha256: str = field(default="")
    config_sha256: str = ""  # of the config.json a transformers model was built from

    def __post_init__(self) -> None:
        if not self.weights_sha256:
            self.weights_sha256 = sha256_file(self.weights_path)


@dataclass(frozen=True)
class EncoderCfg:
    """One registry entry's configuration, like timm's ``pretrained_cfg``: the spec of the
    features it makes (None for ``timm:<model>``, whose spec comes from the model), where its
    weights come from, and how `pathfl encoders` tells whether they are here."""

    spec: EncoderSpec | None
    source: str
    locate: Callable[[], tuple[bool, str]]
    mpp_note: str = ""  # why native_mpp is what it is (or empty)


EncoderFactory = Callable[..., Encoder]
ENCODERS: Registry[Encoder] = Registry("encoder")


def _cfg(name: str) -> EncoderCfg:
    cfg: EncoderCfg = ENCODERS.meta(name)["cfg"]
    return cfg


# --- torchvision CNNs -------------------------------------------------------------------------
MOBILENET_V2 = EncoderCfg(
    spec=EncoderSpec("mobilenet-v2", 1280, 224, IMAGENET_MEAN, IMAGENET_STD),
    source="torchvision ImageNet MobileNetV2, packaged (offline)",
    locate=wts.MOBILENET_V2_WEIGHTS.locate,
    mpp_note="ImageNet: no native µm/px, not checked",
)
RESNET50_TRUNC = EncoderCfg(
    spec=EncoderSpec("resnet50-trunc", 1024, 224, IMAGENET_MEAN, IMAGENET_STD),
    source="torchvision ImageNet ResNet50 to layer3 + GAP (CLAM/TRIDENT); --weights or hub cache",
    locate=wts.RESNET50_WEIGHTS.locate,
    mpp_note="ImageNet: no native µm/px, not checked",
)


def _build(cfg: EncoderCfg, model: nn.Module, path: Path) -> Encoder:
    assert cfg.spec is not None
    return Encoder(spec=cfg.spec, model=model.eval(), weights_path=path)


def mobilenet_v2_imagenet(weights: str | Path | None = None) -> nn.Module:
    """The full torchvision MobileNetV2 ImageNet classifier (1000 classes), loaded strictly from
    ``weights`` or from the packaged checkpoint."""
    import torchvision

    path = wts.MOBILENET_V2_WEIGHTS.resolve(weights)
    model = torchvision.models.mobilenet_v2(weights=None)
    wts.load_strict(model, wts.load_state_dict(path), path, "mobilenet-v2")
    return model.eval()


@ENCODERS.register("mobilenet-v2", cfg=MOBILENET_V2)
def mobilenet_v2(*, weights: str | Path | None = None, **options: Any) -> Encoder:
    """MobileNetV2 convolutional trunk + global average pool: 1280-d."""
    from torch import nn

    _no_options("mobilenet-v2", options)
    path = wts.MOBILENET_V2_WEIGHTS.resolve(weights)
    full = mobilenet_v2_imagenet(path)
    trunk = nn.Sequential(full.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return _build(MOBILENET_V2, trunk, path)


@ENCODERS.register("resnet50-trunc", cfg=RESNET50_TRUNC)
def resnet50_trunc(*, weights: str | Path | None = None, **options: Any) -> Encoder:
    """ResNet50 up to layer3 + global average pool: 1024-d (the CLAM/TRIDENT baseline)."""
    import torchvision
    from torch import nn

    _no_options("resnet50-trunc", options)
    path = wts.RESNET50_WEIGHTS.resolve(weights)
    full = torchvision.models.resnet50(weights=None)
    wts.load_strict(full, wts.load_state_dict(path), path, "resnet50-trunc")
    trunk = nn.Sequential(
        full.conv1, full.bn1, full.relu, full.maxpool, full.layer1, full.layer2, full.layer3,
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
    )  # fmt: skip
    return _build(RESNET50_TRUNC, trunk, path)


# --- timm (optional extra) --------------------------------------------------------------------
def _timm_available() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        return False, "timm not installed (pip install 'pathfl[timm]'); needs --weights PATH"
    return True, "timm installed; needs --weights PATH"


TIMM = EncoderCfg(
    spec=None,
    source="timm:<model> with --weights PATH (e.g. UNI, Phikon-style ViTs); optional extra",
    locate=_timm_available,
    mpp_note="unknown for timm:<model>: not checked",
)


@ENCODERS.register("timm", cfg=TIMM)
def timm_encoder(*, model_name: str, weights: str | Path | None = None, **options: Any) -> Encoder:
    """Any timm model (``num_classes=0`` → pooled features) from a local state dict. ``options``
    go to ``timm.create_model`` except ``mean``, ``std`` and ``input_px``, which override the
    model's pretrained config (foundation models often differ from timm's defaults)."""
    try:
        import timm
    except ImportError as e:
        raise ConfigError(
            f"encoder timm:{model_name} needs the optional package timm: pip install 'pathfl[timm]'"
        ) from e
    if weights is None:
        raise wts.WeightsError(
            f"timm:{model_name} needs --weights PATH (a state dict for this architecture); "
            "pathfl never downloads weights or uses random ones"
        )
    path = Path(weights)
    mean = options.pop("mean", None)
    std = options.pop("std", None)
    input_px = options.pop("input_px", None)
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **options)
    except Exception as e:  # unknown model name or option
        raise ConfigError(f"timm cannot build {model_name!r} with {options}: {e}") from e
    state = wts.load_state_dict(path)
    head = ("head.", "fc.", "classifier.", "head_dist.", "last_linear.")
    own = set(model.state_dict())
    state = {k: v for k, v in state.items() if k in own or not k.startswith(head)}
    wts.load_strict(model, state, path, f"timm:{model_name}")
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    spec = EncoderSpec(
        name=f"{TIMM_PREFIX}{model_name}",
        feature_dim=int(model.num_features),
        input_px=int(input_px or cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(float(v) for v in (mean or cfg.get("mean", IMAGENET_MEAN))),  # type: ignore[arg-type]
        std=tuple(float(v) for v in (std or cfg.get("std", IMAGENET_STD))),  # type: ignore[arg-type]
        fixed_input_px=True,
    )
    return Encoder(spec=spec, model=model.eval(), weights_path=path)


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"encoder {name!r} takes no options, got {sorted(options)}")


# --- public helpers ---------------------------------------------------------------------------
def create_encoder(
    name: str, *, weights: str | Path | None = None, options: dict[str, Any] | None = None
) -> Encoder:
    """Build encoder ``name`` (a registry name or ``timm:<model>``) with real weights."""
    options = dict(options or {})
    if name.startswith(TIMM_PREFIX):
        model_name = name[len(TIMM_PREFIX) :]
        if not model_name:
            raise ConfigError("encoder 'timm:' needs a model name, e.g. timm:vit_base_patch16_224")
        encoder = ENCODERS.create("timm", model_name=model_name, weights=weights, **options)
    else:
        if name == "timm":
            raise ConfigError("use timm:<model>, e.g. --encoder timm:vit_large_patch16_224")
        encoder = ENCODERS.create(name, weights=weights, **options)
    logger.info(
        "encoder %s: %d-d, weights %s (sha256 %s…)",
        encoder.spec.name,
        encoder.spec.feature_dim,
        encoder.weights_path,
        encoder.weights_sha256[:12],
    )
    return encoder


def list_encoders() -> list[dict[str, Any]]:
    """One row per registry entry: name, dims, native input size and µm/px, mean/std, weights
    source and whether the weights are available on this machine (no weights are loaded)."""
    rows = []
    for name in ENCODERS.list():
        cfg = _cfg(name)
        available, where = cfg.locate()
        spec = cfg.spec
        rows.append(
            {
                "name": "timm:<model>" if name == "timm" else name,
                "feature_dim": spec.feature_dim if spec else None,
                "input_px": spec.input_px if spec else None,
                "mean": spec.mean if spec else None,
                "std": spec.std if spec else None,
                "native_mpp": list(spec.native_mpp) if spec else [],
                "mpp_note": cfg.mpp_note,
                "source": cfg.source,
                "available": available,
                "weights": where,
            }
        )
    return rows


def _register_foundation_models() -> None:
    from pathfl.features import fm_loader

    fm_loader.register_all(ENCODERS)


_register_foundation_models()
