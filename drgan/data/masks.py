"""Structural masks from a real fundus photograph: field of view, vessels, optic disc.

Vessels: multi-scale Frangi vesselness of the green channel (where vessels contrast most) after
contrast-limited adaptive histogram equalisation, thresholded by Li's minimum cross-entropy inside the field of view.
Disc: the brightest disc-sized blob (difference of Gaussians at the disc's scale), grown by
half-maximum brightness and fitted with a circle. Work happens at WORK_SIDE pixels; the masks are
returned at the photograph's own size.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import exposure, filters

from drgan.data.preprocess import check_has_content, detect_fov

WORK_SIDE = 512          # longest side of the working copy


def _resize_bool(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)) >= 128


def extract_structure(image: np.ndarray) -> dict:
    """{"vessel", "disc", "fov"} uint8 0/255 masks of an RGB uint8 photograph and "disc_center" (row, col)."""
    check_has_content(image, "image")
    h, w = image.shape[:2]
    scale = min(1.0, WORK_SIDE / max(h, w))
    small = image if scale == 1.0 else np.asarray(
        Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR))
    fov = detect_fov(small)
    R = math.sqrt(fov.sum() / math.pi)
    inner = ndimage.binary_erosion(fov, iterations=max(2, int(0.03 * R)))   # away from the bright rim

    # Vessels.
    green = small[..., 1].astype(np.float64) / 255.0
    green = np.where(fov, green, green[fov].mean())          # no black surround for the filters
    eq = exposure.equalize_adapthist(green, clip_limit=0.01, kernel_size=max(8, int(R / 4)))
    sigmas = np.geomspace(max(0.8, 0.0025 * R), 0.012 * R, 4)
    vesselness = filters.frangi(eq, sigmas=sigmas, black_ridges=True)
    vesselness[~inner] = 0
    thresh = filters.threshold_li(vesselness[inner]) if inner.any() else np.inf
    vessel = (vesselness > thresh) & inner
    # Specks are noise, not vessels: keep components of a vessel-like size.
    labels, n = ndimage.label(vessel, structure=np.ones((3, 3), bool))
    if n:
        sizes = ndimage.sum_labels(vessel, labels, np.arange(1, n + 1))
        vessel = np.isin(labels, 1 + np.flatnonzero(sizes >= max(10, 0.002 * R * R)))

    # Optic disc: the brightest blob at the disc's scale.
    lum = small[..., :2].astype(np.float64).mean(axis=2)      # red + green: the disc is bright in both
    lum = np.where(fov, lum, lum[fov].mean())
    s = 0.06 * R
    blob = ndimage.gaussian_filter(lum, s) - ndimage.gaussian_filter(lum, 3 * s)
    blob[~ndimage.binary_erosion(fov, iterations=max(2, int(0.1 * R)))] = -np.inf
    cy, cx = np.unravel_index(int(np.argmax(blob)), blob.shape)
    smooth = ndimage.gaussian_filter(lum, 0.01 * R)
    yy, xx = np.ogrid[0:small.shape[0], 0:small.shape[1]]
    near = (yy - cy) ** 2 + (xx - cx) ** 2 <= (0.25 * R) ** 2
    peak, background = smooth[cy, cx], np.median(smooth[near & fov])
    bright = near & (smooth >= (peak + background) / 2)
    labels, _ = ndimage.label(bright)
    region = ndimage.binary_fill_holes(labels == labels[cy, cx]) if labels[cy, cx] else bright
    center = np.argwhere(region).mean(0) if region.any() else np.array([cy, cx], float)
    radius = float(np.clip(math.sqrt(region.sum() / math.pi), 0.07 * R, 0.16 * R))
    disc = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2
    disc &= fov

    full = (h, w)
    out = {name: np.where(_resize_bool(m, full) if scale != 1.0 else m, 255, 0).astype(np.uint8)
           for name, m in (("vessel", vessel), ("disc", disc), ("fov", fov))}
    out["disc_center"] = (float(center[0] / scale), float(center[1] / scale))
    return out


def overlay(image: np.ndarray, structure: dict) -> np.ndarray:
    """The photograph with vessels tinted cyan, the disc outlined yellow, the FOV border green."""
    out = image.astype(np.float32).copy()
    v = structure["vessel"] > 0
    out[v] = 0.4 * out[v] + 0.6 * np.array([0, 255, 255], np.float32)
    for name, colour in (("disc", (255, 255, 0)), ("fov", (0, 255, 0))):
        m = structure[name] > 0
        edge = m & ~ndimage.binary_erosion(m, iterations=max(1, image.shape[0] // 400))
        out[edge] = colour
    return out.astype(np.uint8)
