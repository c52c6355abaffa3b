"""Checkpoint files of encoders: a state-dict file (``model.safetensors``, ``pytorch_model.bin``,
``.pth``) or a local Hugging Face snapshot folder (``config.json`` beside the weights), found
without any network access; the tensor names and shapes of a safetensors file read from its
header alone (so a wrong 4.5 GB file is refused before it is loaded); and the error that says
exactly how a file does not fit an architecture."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathfl.config import ConfigError

#: weight files of a Hugging Face snapshot, preferred first
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
#: how many names of each kind a fit error lists
SHOW = 5

Shapes = dict[str, tuple[int, ...]]


class WeightsError(ConfigError):
    """Encoder weights are missing or do not fit the architecture (a configuration error)."""


@dataclass(frozen=True)
class Checkpoint:
    """The state-dict file to load and the ``config.json`` beside it (None if absent)."""

    weights: Path
    config: Path | None


def locate_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """``--weights PATH``: a weights file, or a folder (a Hugging Face snapshot) holding
    ``model.safetensors`` or ``pytorch_model.bin`` (else exactly one ``*.safetensors|bin|pth``)."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.index.json")):
            raise WeightsError(
                f"{path}: sharded checkpoints (*.index.json) are not supported; "
                "merge the shards into one model.safetensors"
            )
        named = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
        found = named or sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES
        )
        if len(found) != 1 and not named:
            listed = ", ".join(p.name for p in found) or "none"
            raise WeightsError(
                f"{path}: expected one weights file (model.safetensors or pytorch_model.bin) "
                f"in this folder, found {listed}"
            )
        file = found[0]
    elif path.is_file():
        file = path
    else:
        raise WeightsError(f"{path}: weights file not found")
    config = file.parent / "config.json"
    return Checkpoint(weights=file, config=config if config.is_file() else None)


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, as ``huggingface_hub`` computes it (``HF_HUB_CACHE``,
    else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), without importing it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    home = os.environ.get("HF_HOME", os.path.join(xdg, "huggingface"))
    return Path(os.path.expanduser(home)) / "hub"


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` already in the hub cache (the ``main`` ref, else the
    only snapshot), or None. Nothing is downloaded."""
    repo = hf_hub_cache() / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = repo / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted(p for p in (repo / "snapshots").glob("*") if p.is_dir())
    return snaps[0] if len(snaps) == 1 else None


def file_shapes(path: Path) -> Shapes | None:
    """Tensor names → shapes of a safetensors file, from its header (no tensor data is read);
    None for other formats (they must be loaded to be inspected)."""
    if path.suffix != ".safetensors":
        return None
    safe_open = _safetensors().safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # header errors come in several types
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e


def read_safetensors(path: Path) -> dict[str, Any]:
    """All tensors of a safetensors file, on the CPU."""
    try:
        return dict(_safetensors().torch.load_file(str(path), device="cpu"))
    except Exception as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e


def _safetensors() -> Any:
    try:
        import safetensors
        import safetensors.torch
    except ImportError as e:
        raise ConfigError(
            "reading .safetensors weights needs the optional package safetensors: "
            "pip install 'pathfl[encoders]'"
        ) from e
    return safetensors


def _names(keys: list[str]) -> str:
    more = f", … (+{len(keys) - SHOW})" if len(keys) > SHOW else ""
    return ", ".join(keys[:SHOW]) + more


def fit_report(expected: Shapes, found: Shapes) -> str:
    """ "" when ``found`` (the file's names → shapes) is exactly ``expected`` (the model's);
    else what differs: missing and unexpected names and mismatched shapes, the first few of
    each with their counts."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != found[k])
    shown = [f"{k} file {list(found[k])} vs model {list(expected[k])}" for k in shapes]
    report = key_report(missing=missing, unexpected=unexpected, shapes=shown)
    if not report:
        return ""
    some = [f"{k} {list(v)}" for k, v in list(expected.items())[:3]]
    return report + f" (the model expects {len(expected)} tensors: {', '.join(some)}, …)"


def key_report(*, missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    """ "Missing / unexpected / mismatched" with counts and the first few names; "" if none."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {_names(shapes)}")
    return "; ".join(parts)


def check_fit(expected: Shapes, found: Shapes, path: Path, encoder: str) -> None:
    """Raise :class:`WeightsError` naming ``path`` when :func:`fit_report` finds a difference."""
    report = fit_report(expected, found)
    if report:
        raise WeightsError(f"{path}: weights do not fit encoder {encoder!r}: {report}")


def shapes_of(state: dict[str, Any]) -> Shapes:
    """Names → shapes of a state dict (or of ``model.state_dict()``, also on the meta device)."""
    return {k: tuple(v.shape) for k, v in state.items()}
