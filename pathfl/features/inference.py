"""Batched encoder forward: uint8 tiles → normalised float → features, on the chosen device
and precision. Normalisation happens on the device, so only uint8 crosses to a GPU."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from pathfl.config import ConfigError

if TYPE_CHECKING:
    from pathfl.features.encoders import Encoder

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA device is available here")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda[:N], got {device!r}")
    return dev


class InferenceRunner:
    """Wraps an :class:`Encoder` for inference: ``runner(uint8 (B,3,H,W)) → float32 (B,D)`` on
    the CPU. bf16/fp16 use autocast (CUDA AMP, or CPU autocast). Every precision runs in
    channels-last memory format: on CPU (oneDNN) it made fp32 MobileNetV2 1.6x faster here
    (9.4 → 15.0 tiles/s on one AVX2 core), on CUDA it is what the tensor cores want."""

    def __init__(self, encoder: Encoder, *, device: str = "cpu", precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        if self.device.type == "cpu" and precision == "fp16":
            logger.warning("fp16 on CPU is usually slower than fp32 or bf16")
        model = encoder.model.eval().to(self.device).to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
            torch.backends.cudnn.allow_tf32 = precision != "fp32"
        self.model = model
        spec = encoder.spec
        self.mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1) * 255.0)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def forward_async(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """Features (B, D) float32 left on the device (a CUDA call returns before it is done)."""
        x = batch_uint8.to(self.device, non_blocking=True).float()
        x = (x - self.mean) * self.inv_std
        x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.model(x)
        return out.float()

    def __call__(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """Features (B, D) float32 on the CPU."""
        return self.forward_async(batch_uint8).cpu()

    def submit(self, batch_uint8: torch.Tensor) -> PendingFeatures:
        """Start a batch; on CUDA the result is copied to pinned host memory asynchronously,
        so the caller can write the previous batch while this one runs."""
        out = self.forward_async(batch_uint8)
        if self.device.type != "cuda":
            return PendingFeatures(out, None)
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return PendingFeatures(host, event)


class PendingFeatures:
    """Features of a submitted batch; :meth:`numpy` waits for them."""

    def __init__(self, host: torch.Tensor, event: torch.cuda.Event | None) -> None:
        self._host = host
        self._event = event

    def numpy(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()
