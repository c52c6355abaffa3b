"""pathfl: whole-slide tiling, feature extraction, MIL survival models and federated training."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pathfl")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
