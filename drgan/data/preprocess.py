"""Preprocessing: field-of-view detection and crop, pad to square, resize.

The field of view (FOV) is the largest connected region brighter than FOV_THRESHOLD in the
brightest channel; the crop is its bounding box, padded with black to a centred square. Images
are resized with Pillow's antialiased bilinear filter (area-like when shrinking), and masks with
the same filter as their image: a thin vessel keeps its partial coverage instead of breaking into
dots. The DALI pipeline
(`drgan.data.loaders`) applies the same geometry with its own operators.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from drgan.errors import DrganError

FOV_THRESHOLD = 20       # 8-bit level separating the camera's black surround from the fundus
MIN_CONTRAST = 8         # grey levels between the 1st and 99th percentile: below, no fundus is in the image


def check_has_content(image: np.ndarray, name: object) -> None:
    """Refuse an RGB uint8 photograph of one flat colour (a blank capture, a failed export): the
    mask extractor would place a disc on it anyway. A fundus spans far more levels (its black
    surround, the disc)."""
    step = -(-max(image.shape[:2]) // 256)  # about 256x256 samples: the importer checks every photograph whole
    lo, hi = np.percentile(image[::step, ::step].max(axis=2), (1, 99))
    if hi - lo < MIN_CONTRAST:
        raise DrganError(f"{name}: one flat colour (grey levels {lo:.0f}-{hi:.0f}), no fundus in it")


def fov_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the largest bright region of an RGB uint8 image: pixels joined by
    their edges, as DALI's random_object_bbox joins them (the DALI loader crops with it)."""
    bright = image.max(axis=2) > FOV_THRESHOLD
    labels, n = ndimage.label(bright)
    if n == 0:
        return 0, 0, image.shape[0], image.shape[1]
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    return rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start


def detect_fov(image: np.ndarray) -> np.ndarray:
    """Boolean field-of-view mask: the largest bright region, holes filled."""
    bright = image.max(axis=2) > FOV_THRESHOLD
    labels, n = ndimage.label(bright, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.ones(image.shape[:2], bool)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def square_window(box: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """(top, left, side) of the centred square around a box; it may reach outside the image (padding)."""
    top, left, h, w = box
    side = max(h, w)
    return top - (side - h) // 2, left - (side - w) // 2, side


def crop_square(arr: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """Cut a square window out of arr (H, W[, C]), zero-padding where it leaves the array."""
    top, left, side = window
    out = np.zeros((side, side) + arr.shape[2:], arr.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + side, arr.shape[0]), min(left + side, arr.shape[1])
    out[r0 - top:r1 - top, c0 - left:c1 - left] = arr[r0:r1, c0:c1]
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """The image's filter (antialiased bilinear), so a mask stays aligned with its image's pixels.

    Nearest-neighbour shrinking drops a one-pixel vessel or microaneurysm at random (dotted
    vessels, grade-1 images without their microaneurysms); filtering keeps each as the fraction
    of the pixel it covers, which is what the generator's float condition map takes.
    """
    return resize_image(mask, size)


def crop_and_resize(image: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """FOV crop, pad to square and resize an image (H, W, 3) and its masks (H, W, K), uint8."""
    window = square_window(fov_box(image))
    image = resize_image(crop_square(image, window), size)
    masks = crop_square(masks, window)
    masks = np.stack([resize_mask(masks[..., k], size) for k in range(masks.shape[2])], axis=2)
    return image, masks
