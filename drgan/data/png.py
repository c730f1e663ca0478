"""PNG encoding shared by the dataset writer, the phantom workers and the DALI feeder (Pillow only)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 3) array; level 1: fast, masks still compress ~50x."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
