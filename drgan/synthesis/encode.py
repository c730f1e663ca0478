"""Image encoders of the runner: libjpeg-turbo and libpng through imagecodecs on the host (both
release the GIL, so encoder threads run in parallel), nvJPEG through torchvision on the GPU.

PNG speed comes from the settings, not only the library: for fundus images (camera noise,
smooth background) SUB filtering with run-length matching compresses as well as zlib's level 6
with adaptive filtering, at a fifth of the time (README, "Encoding").
"""
from __future__ import annotations

from typing import Callable

import imagecodecs
import numpy as np

PNG_LEVELS = range(0, 10)
JPEG_QUALITIES = range(1, 101)


def encode_image(image: np.ndarray, fmt: str, quality: int, png_level: int) -> bytes:
    """uint8 (H, W, 3) or (H, W) -> file bytes; the same bytes for the same pixels and settings.

    png_level: 0 stores, 1 is the fast setting (SUB filter, run-length matching), 2-9 are zlib's
    levels with adaptive filtering (smaller only for smooth images, several times slower).
    """
    if fmt == "jpeg":
        return imagecodecs.jpeg8_encode(image, level=quality, subsampling="444")
    png = imagecodecs.PNG
    if png_level <= 1:
        return imagecodecs.png_encode(image, level=png_level, filter=png.FILTER.SUB, strategy=png.STRATEGY.RLE)
    return imagecodecs.png_encode(image, level=png_level, filter=png.FILTER.ALL)


def gpu_jpeg_encoder(quality: int) -> Callable | None:
    """Batch JPEG encoding on the GPU (nvJPEG through torchvision) or None where unavailable.

    torchvision is optional (it does not import beside every torch build): without it the
    runner encodes on host threads. The returned function takes uint8 (B, 3, H, W) on the GPU and
    returns one uint8 tensor of JPEG bytes per image, still on the GPU.
    """
    try:
        import torch
        from torchvision.io import encode_jpeg
    except (ImportError, RuntimeError):
        return None

    def encode(pixels: torch.Tensor) -> list[torch.Tensor]:
        # nvJPEG runs on a stream of torchvision's own that does not wait for the caller's: pixels
        # written on a side stream were read before they were there (H200, torchvision 0.26: a
        # batch of black images). The wait costs nothing measurable: encoding blocks the host anyway.
        # (The synthesis runner calls this from a thread of its own, after waiting for an event
        # recorded on its stream once the pixels were queued.)
        torch.cuda.current_stream(pixels.device).synchronize()
        return encode_jpeg(list(pixels), quality=quality)
    return encode
