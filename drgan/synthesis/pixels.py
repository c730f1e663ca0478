"""Generator output in [-1, 1] -> uint8 pixels, height x width x channels, written in place.

The pixel is round((clamp(x, -1, 1) + 1) * 127.5). On the CPU the float work runs over chunks
small enough to stay in cache: four passes over a cached chunk instead of four over main memory,
and the uint8 result is written straight into the encoder's buffer.
"""
from __future__ import annotations

import numpy as np
import torch

CHUNK = 1 << 20   # floats per chunk on the CPU (4 MiB: within the last-level cache)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """The readable reference of to_pixels: (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 numpy
    pixels (training samples and fidelity scores use it; a copy is cheap there)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).numpy()


def to_pixels(image: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """image: float (B, 3, H, W) in [-1, 1], any memory layout (channels_last needs no copy);
    out: uint8 (B, H, W, 3) on the same device, filled and returned. scratch: a float buffer of
    CHUNK elements on the CPU, reused between calls (None: made here)."""
    src = image.permute(0, 2, 3, 1)
    if not src.is_contiguous():
        src = src.contiguous()
    src, dst = src.reshape(-1), out.view(-1)
    if image.device.type != "cpu":
        dst.copy_(src.clamp(-1.0, 1.0).add_(1.0).mul_(127.5).round_())
        return out
    if scratch is None:
        scratch = torch.empty(CHUNK, dtype=torch.float32)
    for start in range(0, src.numel(), CHUNK):
        x = src[start:start + CHUNK]
        tmp = scratch[:len(x)]
        torch.clamp(x, -1.0, 1.0, out=tmp).add_(1.0).mul_(127.5).round_()
        dst[start:start + CHUNK].copy_(tmp)
    return out
