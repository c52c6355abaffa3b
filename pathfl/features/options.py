"""What one ``pathfl extract`` run does (:class:`ExtractOptions`), with one help text per field
(:data:`EXTRACT_HELP`) from which the command line builds its options.

Standard library only, so the command line can read the fields without importing torch or
h5py (:mod:`pathfl.features.pipeline` runs the extraction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
}
