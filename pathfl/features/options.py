"""What one ``pathfl extract`` run does (:class:`ExtractOptions`), with one help text per field
(:data:`EXTRACT_HELP`) from which the command line builds its options.

Standard library only, so the command line can read the fields without importing torch or
h5py (:mod:`pathfl.features.pipeline` runs the extraction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: values of ``--stain-norm`` (:mod:`pathfl.features.stain`)
STAIN_NORMS = ("none", "macenko", "reinhard")
#: values of ``--reader`` (:data:`pathfl.features.dataset.TILE_READERS`)
TILE_READERS = ("auto", "native", "openslide")


@dataclass
class ExtractOptions:
    encoder: str = "mobilenet-v2"
    weights: Path | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    device: str = "cpu"
    precision: str = "fp32"
    dtype: str = "float32"  # storage dtype of the features dataset (float16 halves the files)
    workers: int = 2
    shard: tuple[int, int] | None = None
    overwrite: bool = False
    slide_dir: Path | None = None
    threads: int | None = None  # intra-op threads of the encoder; None = torch's default
    allow_resolution_mismatch: bool = False  # encode tiles not at the encoder's native mpp/px
    # stain normalisation / augmentation (pathfl.features.stain; docs/extract.md)
    stain_norm: str = "none"
    stain_ref: Path | None = None
    stain_augment: int = 0
    stain_sigma: float = 0.05
    stain_bias: float = 0.02
    stain_seed: int = 0
    reader: str = "auto"  # tile reader: native-tile reader where it covers the slide, or not

    def check(self) -> None:
        """Refuse impossible values (:class:`~pathfl.config.ConfigError` naming the option)."""
        from pathfl.config import ConfigError
        from pathfl.formats.features_h5 import FEATURE_DTYPES

        if self.batch_size < 1:
            raise ConfigError("--batch-size must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("--threads must be >= 1")
        if self.workers < 0:
            raise ConfigError("--workers must be >= 0")
        if self.dtype not in FEATURE_DTYPES:
            raise ConfigError(
                f"--dtype must be one of {', '.join(FEATURE_DTYPES)}, got {self.dtype!r}"
            )
        if self.reader not in TILE_READERS:
            raise ConfigError(
                f"--reader must be one of {', '.join(TILE_READERS)}, got {self.reader!r}"
            )
        if self.stain_augment < 0 or self.stain_sigma < 0 or self.stain_bias < 0:
            raise ConfigError("--stain-augment, --stain-sigma and --stain-bias must be >= 0")


#: help text of each :class:`ExtractOptions` field (``pathfl extract --help``)
EXTRACT_HELP: dict[str, str] = {
    "encoder": "Encoder (see `pathfl encoders`)",
    "weights": "Local weights file, or a folder (a local Hugging Face snapshot).",
    "encoder_options": "Keyword options of timm encoders (mean, std, input_px, …).",
    "batch_size": "Tiles per forward pass.",
    "device": "cpu | cuda | cuda:N.",
    "precision": "Autocast precision",
    "dtype": "Storage dtype of the features (float16 halves the files)",
    "workers": "Tile-reading processes.",
    "shard": "(K, N): this job's share of the slides (0 <= K < N).",
    "overwrite": "Recompute features files made with other settings.",
    "slide_dir": "Where the slides are, if not at the tiles manifest's paths.",
    "threads": "Encoder threads on CPU (None: torch's default).",
    "allow_resolution_mismatch": (
        "Encode tiles whose µm/px or px differ from the encoder's native ones by over 10 % "
        "(resized to its input; recorded in the fingerprint) instead of refusing them."
    ),
    "stain_norm": "Stain normalisation of every tile before the encoder",
    "stain_ref": "Stain reference JSON (`pathfl stain-ref fit`); needed by --stain-norm.",
    "stain_augment": "K HED-jittered copies per tile, stored in features_aug (0: none).",
    "stain_sigma": "HED jitter: each stain's concentration scaled by U(1 ± sigma).",
    "stain_bias": "HED jitter: each stain's concentration shifted by U(± bias) (OD units).",
    "stain_seed": "Seed of the HED jitter (with the slide id and row: re-runs give the same).",
    "reader": (
        "auto: read tiled JPEG / JPEG 2000 TIFF and SVS levels from their compressed tiles "
        "(native reader), other slides with OpenSlide; native: only the native reader (other "
        "slides fail); openslide: always the slide backend."
    ),
}
