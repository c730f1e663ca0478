"""Image and mask files decoded to uint8 arrays.

What can be converted safely is converted and noted (grayscale, RGBA, palette or 16-bit files);
what cannot raises DrganError: one line naming the file and the reason.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from drgan.config import MIN_SIDE
from drgan.errors import DrganError
from drgan.io import check_regular_file

# The largest fundus cameras write about 24 MP (a 45 MP full-frame sensor is the extreme); one
# decoded 50 MP RGB image is 150 MB, its eight masks 400 MB more. A larger header is refused before
# decoding: a 100-byte PNG can declare 30000x30000 px (2.7 GB of pixels).
MAX_PIXELS = 50_000_000


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 else None


def open_image(path: str | Path) -> Image.Image:
    """An image file opened from its header only (Pillow decodes lazily), refused unless it is a
    regular file and its size is within MAX_PIXELS: every reader of image files goes through here."""
    path = Path(path)
    check_regular_file(path)
    too_large = f"{path}: image too large ({{}}over the limit of {MAX_PIXELS:,} pixels)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            img = Image.open(path)
    except Image.DecompressionBombError:  # Pillow's own limit, far above MAX_PIXELS
        raise DrganError(too_large.format("")) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DrganError(f"{path}: unreadable image ({exc})") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise DrganError(too_large.format(f"{w}x{h} px, "))
    return img


def decode_image(path: Path) -> Image.Image:
    """open_image, then its pixels decoded: a truncated or corrupt file is one DrganError here."""
    img = open_image(path)
    try:
        img.load()           # decode now: a truncated file fails here, not later
    except (OSError, SyntaxError, ValueError) as exc:
        img.close()
        raise DrganError(f"{path}: unreadable image ({exc})") from None
    return img


def pixels_to_uint8(arr: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """8-bit pixels: 16-bit ones keep their high byte (noted in `notes`), other types are refused."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return np.where(arr, 255, 0).astype(np.uint8)
    if arr.dtype in (np.uint16, np.int32) and arr.min() >= 0 and arr.max() <= 65535:
        notes.append(f"{path}: 16-bit converted to 8-bit")
        return (arr.astype(np.uint32) >> 8).astype(np.uint8)
    raise DrganError(f"{path}: unsupported pixel type {arr.dtype}")


def read_rgb(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """An image file as uint8 (H, W, 3), with notes about the safe conversions applied."""
    path = Path(path)
    img = decode_image(path)
    notes: list[str] = []
    if _png_bit_depth(path) == 16 and img.mode == "RGB":
        notes.append(f"{path}: 16-bit converted to 8-bit")   # Pillow keeps the high byte
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        notes.append(f"{path}: alpha channel dropped")
        img = img.convert("RGBA").convert("RGB")
    elif img.mode == "P":
        notes.append(f"{path}: palette converted to RGB")
        img = img.convert("RGB")
    elif img.mode == "CMYK" or img.mode == "YCbCr":
        notes.append(f"{path}: {img.mode} converted to RGB")
        img = img.convert("RGB")
    arr = np.asarray(img)
    arr = pixels_to_uint8(arr, path, notes)
    if arr.ndim == 2:
        notes.append(f"{path}: grayscale converted to RGB")
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DrganError(f"{path}: expected an RGB image, got mode {img.mode}")
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise DrganError(f"{path}: too small ({w}x{h} px, need at least {MIN_SIDE})")
    return np.ascontiguousarray(arr), notes


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """A mask file as uint8 (H, W); `shape` (H, W) is the image's size it must match."""
    path = Path(path)
    img = decode_image(path)
    notes: list[str] = []
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "RGB", "RGBA", "LA", "CMYK"):
        notes.append(f"{path}: {img.mode} mask reduced to one channel (maximum)")
        img = img.convert("RGB")
    arr = pixels_to_uint8(np.asarray(img), path, notes)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if shape is not None and arr.shape != tuple(shape):
        raise DrganError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} px but its image is {shape[1]}x{shape[0]}")
    return np.ascontiguousarray(arr), notes
