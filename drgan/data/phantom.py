"""Procedural phantom retinas: paired (image, masks, grade), deterministic per seed.

A phantom is a drawing, not a photograph: it makes every command runnable without a dataset and
serves as the test fixture. Structure first (field of view, disc, fovea, a tapering vessel tree
rooted at the disc with the two temporal arcades), then lesions for the grade
(`drgan.data.lesions`), then paint: fundus colour with illumination fall-off and choroidal texture,
the bright disc, the darker fovea, vessels, each lesion inside exactly its mask, camera noise.
Everything is vectorised over pixels (and over branches of one tree level).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from drgan.config import COND_CHANNELS, MAX_IMAGE_SIDE, MIN_SIDE, NUM_GRADES
from drgan.data.lesions import imitate_lesions
from drgan.io import encode_png
from drgan.errors import DrganError, ParameterError

MIN_SIZE = 32
MAX_COUNT = 1_000_000  # samples per dataset: the job list is built up front


@dataclass
class Phantom:
    image: np.ndarray                 # uint8 (H, W, 3)
    masks: dict[str, np.ndarray]      # COND_CHANNELS name -> uint8 (H, W), 0/255
    grade: int                        # DR grade 0..4
    lesion_counts: dict[str, int]     # lesion type -> number of lesions drawn


@dataclass
class _Layout:
    size: int
    eye: int                  # +1: disc right of the fovea, -1: mirrored
    R: float                  # FOV radius, pixels
    center: float             # FOV centre (row = col), pixels
    disc: np.ndarray          # disc centre (row, col)
    disc_radius: float
    fovea: np.ndarray         # fovea centre (row, col)
    fov: np.ndarray           # bool mask
    disc_mask: np.ndarray     # bool mask
    vessel: np.ndarray        # bool mask
    vessel_alpha: np.ndarray  # float 0..1 darkening profile inside the vessel mask
    vein: np.ndarray          # bool: vessel pixel belongs to a vein (darker) rather than an artery


def _seeds(seed: int) -> list[np.random.SeedSequence]:
    # Structure, lesions and paint draw from separate streams, so `render_structure(size, seed)`
    # is exactly the structure of `render_phantom(size, grade, seed)` for every grade.
    return np.random.SeedSequence(int(seed)).spawn(3)


def _walks(p0: np.ndarray, theta0: np.ndarray, length: np.ndarray, r0: np.ndarray, step: float,
           bend: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random walks for n branches at once: points (n, L, 2), radii (n, L), in-length mask (n, L)."""
    n = len(p0)
    L = int(np.ceil(length.max() / step)) + 1
    dtheta = rng.normal(0, bend * math.sqrt(step), size=(n, L))
    dtheta[:, 0] = 0
    theta = theta0[:, None] + np.cumsum(dtheta, 1)
    d = np.stack([np.sin(theta), np.cos(theta)], -1) * step
    d[:, 0] = 0
    pts = p0[:, None, :] + np.cumsum(d, 1)
    s = np.arange(L)[None, :] * step
    frac = s / length[:, None]
    radius = r0[:, None] * (1 - 0.65 * frac)
    return pts, radius, frac <= 1


# Vessel random-walk step (pixels) and branching levels: (branches per unit parent length, shortest
# and longest branch as fractions of the FOV radius).
_STEP = 0.7
_BRANCH_LEVELS = [(5.0, 0.25, 0.55), (4.0, 0.12, 0.3), (3.0, 0.06, 0.15)]


@dataclass
class _Landmarks:
    eye: int
    R: float
    center: float
    disc: np.ndarray
    disc_radius: float
    fovea: np.ndarray
    fov: np.ndarray
    disc_mask: np.ndarray


@dataclass
class _Segments:
    """Vessel centre lines, one (n, L) block per entry: points (n, L, 2), radii (n, L), vein flags (n, L)."""
    points: list[np.ndarray]
    radii: list[np.ndarray]
    veins: list[np.ndarray]

    def add(self, points: np.ndarray, radii: np.ndarray, veins: np.ndarray) -> None:
        self.points.append(points), self.radii.append(radii), self.veins.append(veins)


def _landmarks(size: int, rng: np.random.Generator) -> _Landmarks:
    """Field of view, optic disc and fovea, with the eye's side drawn first."""
    center = (size - 1) / 2
    R = size / 2 - 0.5
    eye = int(rng.choice([-1, 1]))
    disc = np.array([center + rng.normal(0, 0.03) * R, center + eye * (0.40 + rng.normal(0, 0.03)) * R])
    disc_radius = 0.12 * R * rng.uniform(0.9, 1.1)
    fovea = np.array([disc[0] + 0.06 * R, center - eye * 0.30 * R]) + rng.normal(0, 0.02 * R, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fov = (yy - center) ** 2 + (xx - center) ** 2 <= R * R
    disc_mask = ((yy - disc[0]) / 1.1) ** 2 + (xx - disc[1]) ** 2 <= disc_radius ** 2
    return _Landmarks(eye, R, center, disc, disc_radius, fovea, fov, disc_mask)


def _vessel_radii(R: float) -> tuple[float, float]:
    """Trunk radii at the disc (vein, artery), pixels."""
    return 0.016 * R + 0.35, 0.012 * R + 0.3


def _trunk_arcs(lm: _Landmarks, rng: np.random.Generator) -> list[tuple]:
    """Ellipse arcs (centre, semi-axes, up/down, side, arc length, vein) of the eight trunks."""
    R, disc, eye = lm.R, lm.disc, lm.eye
    arcs = []
    to_fovea = lm.fovea[1] - disc[1]
    for up in (-1, 1):
        for vein in (True, False):
            a = abs(to_fovea) * rng.uniform(0.95, 1.15)               # horizontal semi-axis
            b = R * rng.uniform(0.42, 0.52) * (1.06 if vein else 0.96)  # vertical semi-axis
            m = np.array([disc[0], disc[1] - eye * a])                # ellipse centre, near the fovea
            arcs.append((m, a, b, up, -eye, rng.uniform(2.3, 2.6), vein))   # temporal: ~140 degrees
            an, bn = R * rng.uniform(0.6, 0.8), R * rng.uniform(0.5, 0.6) * (1.05 if vein else 0.95)
            mn = np.array([disc[0], disc[1] + eye * an])
            arcs.append((mn, an, bn, up, eye, rng.uniform(1.0, 1.3), vein))  # nasal: a gentle arc outwards
    return arcs


def _trunks(lm: _Landmarks, rng: np.random.Generator) -> _Segments:
    """Artery and vein of the superior and inferior temporal arcades (ellipse arcs around the macula
    that leave the disc vertically) and of the nasal side, with a slight wobble."""
    r_vein, r_art = _vessel_radii(lm.R)
    segments = _Segments([], [], [])
    for m, a, b, up, side, phi_max, vein in _trunk_arcs(lm, rng):
        n_pts = int(phi_max * max(a, b) / _STEP) + 2
        phi = np.linspace(0, phi_max, n_pts)
        wob = sum(rng.normal(0, 0.025) * np.sin(k * phi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        pts = np.stack([m[0] + up * b * np.sin(phi) * (1 + wob), m[1] - side * a * np.cos(phi) * (1 + wob)], 1)
        rad = (r_vein if vein else r_art) * (1 - 0.55 * phi / phi_max)
        segments.add(pts[None], rad[None], np.full((1, n_pts), vein))
    return segments


def _flatten(points: np.ndarray, radii: np.ndarray, veins: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre-line points of a block as flat arrays: positions (N, 2), directions, radii, vein flags."""
    d = np.gradient(points, axis=1)
    return points.reshape(-1, 2), np.arctan2(d[..., 0], d[..., 1]).ravel(), radii.ravel(), veins.ravel()


def _grow_branches(lm: _Landmarks, segments: _Segments, size: int, rng: np.random.Generator) -> None:
    """Add the branch levels to `segments`: children spawn along the parents (per unit length of the
    whole level), at an angle to the parent's local direction, thinner than the parent there."""
    R, center, fovea = lm.R, lm.center, lm.fovea
    bend = 0.9 / math.sqrt(R)           # direction diffusion: ~0.9 rad over one FOV radius
    level = [_flatten(p, r, v) for p, r, v in zip(segments.points, segments.radii, segments.veins)]
    points, angles, radii, veins = (np.concatenate(x) for x in zip(*level))
    for per_len, lmin, lmax in _BRANCH_LEVELS:
        ij = np.clip(np.round(points).astype(np.int64), 0, size - 1)
        ok = np.flatnonzero((radii > 0.45) & lm.fov[ij[:, 0], ij[:, 1]])
        k = rng.poisson(per_len * ok.size * _STEP / R)
        if k == 0 or ok.size == 0:
            break
        at = ok[rng.integers(0, ok.size, size=k)]
        theta = angles[at] + rng.choice([-1, 1], size=k) * rng.uniform(0.5, 1.2, size=k)
        pts, rad, inlen = _walks(points[at], theta, R * rng.uniform(lmin, lmax, size=k),
                                 radii[at] * rng.uniform(0.5, 0.75, size=k), _STEP, bend, rng)
        # A branch ends where it leaves the FOV or enters the foveal avascular zone.
        inside = (pts[..., 0] - center) ** 2 + (pts[..., 1] - center) ** 2 <= (R - 1) ** 2
        faz = (pts[..., 0] - fovea[0]) ** 2 + (pts[..., 1] - fovea[1]) ** 2 < (0.08 * R) ** 2
        alive = np.logical_and.accumulate(inlen & inside & ~faz, axis=1)
        rad = np.where(alive, rad, 0)
        vein = np.repeat(veins[at][:, None], pts.shape[1], 1)
        segments.add(pts, rad, vein)
        points, angles, radii, veins = _flatten(pts, rad, vein)


def _rasterise(segments: _Segments, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: depth inside the nearest vessel (distance / radius), that vessel's radius, vein flag.

    The centre lines (points are < 1 px apart) are grown to their radii with distance transforms,
    one per radius class (edges 3, 12, 48 px) so that a thin branch never carves into a much
    thicker vessel: a pixel belongs to the class where it is deepest inside.
    """
    pts = np.concatenate([p.reshape(-1, 2) for p in segments.points])
    rad = np.concatenate([r.ravel() for r in segments.radii]).astype(np.float32)
    vein = np.concatenate([v.ravel() for v in segments.veins])
    keep = rad > 0.3
    pts, rad, vein = pts[keep], rad[keep], vein[keep]
    ij = np.clip(np.round(pts).astype(np.int64), 0, size - 1)
    pixel = ij[:, 0] * size + ij[:, 1]
    octave = np.searchsorted(np.array([3.0, 12.0, 48.0], np.float32), rad, side="right")
    depth = np.full((size, size), np.inf, np.float32)
    rnear = np.zeros((size, size), np.float32)
    is_vein = np.zeros((size, size), bool)
    for k in np.unique(octave):
        sel = octave == k
        rad_img = np.zeros(size * size, np.float32)
        np.maximum.at(rad_img, pixel[sel], rad[sel])
        vein_img = np.zeros(size * size, bool)
        vein_img[pixel[sel & vein]] = True
        rad_img, vein_img = rad_img.reshape(size, size), vein_img.reshape(size, size)
        dist, (iy, ix) = ndimage.distance_transform_edt(rad_img == 0, return_indices=True)
        r_k = np.maximum(rad_img[iy, ix], 0.5)
        q = (dist / r_k).astype(np.float32)
        better = q < depth
        depth[better], rnear[better], is_vein[better] = q[better], r_k[better], vein_img[iy, ix][better]
    return depth, rnear, is_vein


def _layout(size: int, rng: np.random.Generator) -> _Layout:
    """The structure of one phantom: landmarks, then the vessel tree grown from the disc."""
    if size < MIN_SIZE:
        raise DrganError(f"phantom size {size} is below the minimum of {MIN_SIZE} px")
    lm = _landmarks(size, rng)
    segments = _trunks(lm, rng)
    _grow_branches(lm, segments, size, rng)
    depth, rnear, is_vein = _rasterise(segments, size)
    vessel = (depth <= 1) & lm.fov
    alpha = np.where(vessel, 0.6 + 0.4 * np.clip(1 - depth ** 2, 0, 1), 0).astype(np.float32)
    # Thin vessels are fainter; the mask still records them, at a visible minimum contrast.
    alpha *= np.clip(0.55 + 0.45 * rnear / _vessel_radii(lm.R)[0], 0, 1)
    return _Layout(size, lm.eye, lm.R, lm.center, lm.disc, lm.disc_radius, lm.fovea, lm.fov, lm.disc_mask,
                   vessel, alpha, is_vein)


def _u8(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 255, 0).astype(np.uint8)


def render_structure(size: int, seed: int) -> dict[str, np.ndarray]:
    """The lesion-free structure of phantom `seed`: {"vessel", "disc", "fov"} uint8 0/255."""
    lay = _layout(size, np.random.default_rng(_seeds(seed)[0]))
    return {"vessel": _u8(lay.vessel), "disc": _u8(lay.disc_mask), "fov": _u8(lay.fov)}


def _smooth_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BILINEAR))


def _f32(*v: float) -> np.ndarray:
    return np.array(v, np.float32)


# Lesion colours (linear RGB, before illumination) and opacity: dark reds for MA/HE, waxy yellow
# for hard exudates, pale fluffy white for soft exudates, grey-white translucent membranes.
_LESION_LOOK = {
    "ma": (_f32(0.50, 0.06, 0.04), 0.9), "he": (_f32(0.42, 0.04, 0.03), 0.9),
    "ex": (_f32(1.00, 0.88, 0.38), 0.9), "se": (_f32(0.98, 0.96, 0.86), 0.85),
    "membrane": (_f32(0.90, 0.86, 0.78), 0.6),
}


def _blend(img: np.ndarray, m: np.ndarray, col: np.ndarray, alpha: np.ndarray | float) -> None:
    """img[m] = img[m] * (1 - alpha) + col * alpha in place; col is (3,) or one row per masked pixel."""
    a = alpha if np.isscalar(alpha) else alpha[m][:, None]
    img[m] = img[m] * (1 - a) + col * a


def _paint(lay: _Layout, lesions: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    size, R = lay.size, lay.R
    yy, xx = np.ogrid[0:size, 0:size]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    r = np.hypot(yy - lay.center, xx - lay.center) / np.float32(R)
    # Fundus base colour varies with pigmentation; illumination falls off towards the rim.
    base = (_f32(0.84, 0.37, 0.13) * rng.uniform(0.85, 1.08) + rng.normal(0, 0.02, 3)).astype(np.float32)
    tilt = [float(t) / R for t in rng.normal(0, 0.08, 2)]
    light = (1 - 0.5 * np.minimum(r, 1) ** 2.4) * (1 + tilt[0] * (yy - lay.center) + tilt[1] * (xx - lay.center))
    texture = 1 + 0.05 * _smooth_noise(size, 12, rng) + 0.025 * _smooth_noise(size, 40, rng)
    # Fovea and macula: darker, less red.
    fy, fx = float(lay.fovea[0]), float(lay.fovea[1])
    mac = np.exp(((yy - fy) ** 2 + (xx - fx) ** 2) * np.float32(-0.5 / (0.13 * R) ** 2))
    img = (light * texture)[..., None] * base * (1 - mac[..., None] * _f32(0.35, 0.45, 0.4))
    # Optic disc: bright yellowish, with a paler cup slightly towards the fovea, soft rim; drawn
    # in a box around the disc only.
    halo = int(0.04 * R) + 1
    pad = int(1.2 * lay.disc_radius) + 2 * halo
    r0, r1 = max(0, int(lay.disc[0]) - pad), min(size, int(lay.disc[0]) + pad + 1)
    c0, c1 = max(0, int(lay.disc[1]) - pad), min(size, int(lay.disc[1]) + pad + 1)
    box = np.s_[r0:r1, c0:c1]
    dm = lay.disc_mask[box]
    ring = ndimage.binary_dilation(dm, iterations=halo)
    soft = ndimage.gaussian_filter(dm.astype(np.float32), 0.02 * R)[ring]
    cy, cx = float(lay.disc[0]) - r0, float(lay.disc[1] - lay.eye * 0.25 * lay.disc_radius) - c0
    ry, rx = np.nonzero(ring)
    cup = np.exp(-0.5 * (np.hypot(ry - cy, rx - cx) / (0.4 * lay.disc_radius)) ** 4).astype(np.float32)[:, None]
    disc_col = (_f32(0.98, 0.80, 0.50) * (1 - cup) + _f32(1.0, 0.95, 0.80) * cup) * (0.85 + 0.15 * light[box][ring][:, None])
    a = np.where(dm[ring], 0.75 + 0.25 * soft, 0.6 * soft)[:, None]
    sub = img[box]
    sub[ring] = sub[ring] * (1 - a) + disc_col * a
    # Vessels: veins darker than arteries; opacity follows the cross-section profile.
    v = lay.vessel
    vcol = np.where(lay.vein[v][:, None], _f32(0.40, 0.07, 0.05), _f32(0.60, 0.14, 0.07)) * np.broadcast_to(light, v.shape)[v][:, None]
    a = lay.vessel_alpha[v][:, None]
    img[v] = img[v] * (1 - a) + vcol * a
    # Lesions: each painted only inside its own mask, above a visible minimum opacity.
    tex = 0.85 + 0.15 * _smooth_noise(size, max(8, size // 8), rng)
    shade = (tex * (0.65 + 0.35 * light))
    for t, (col, opacity) in _LESION_LOOK.items():
        m = lesions[t] > 0
        if not m.any():
            continue
        alpha = opacity
        if t in ("se", "membrane"):   # fluffy: more transparent towards the edge
            alpha = opacity * (0.5 + 0.5 * ndimage.gaussian_filter(m.astype(np.float32), max(1.0, 0.012 * R)))
        _blend(img, m, col * shade[m][:, None], alpha)
    laser = lesions["laser"] > 0
    if laser.any():
        # Laser scars: pigmented dark rim, pale atrophic centre.
        rim = (laser & ~ndimage.binary_erosion(laser, iterations=max(1, round(0.01 * R))))[laser][:, None]
        col = np.where(rim, _f32(0.25, 0.14, 0.06), _f32(0.85, 0.72, 0.48)) * (0.7 + 0.3 * np.broadcast_to(light, laser.shape)[laser][:, None])
        _blend(img, laser, col, 0.9)
    # Camera: sensor noise, black outside the field of view (antialiased rim).
    img += rng.standard_normal(img.shape, dtype=np.float32) * 0.012
    rim = np.clip(R + 0.5 - r * R, 0, 1)
    img *= (255 * rim)[..., None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def render_phantom(size: int, grade: int, seed: int) -> Phantom:
    """One phantom retina of side `size` at DR `grade`; identical bytes for identical arguments."""
    if grade not in range(NUM_GRADES):
        raise DrganError(f"grade {grade} is outside 0..{NUM_GRADES - 1}")
    s_struct, s_lesion, s_paint = _seeds(seed)
    lay = _layout(size, np.random.default_rng(s_struct))
    structure = {"vessel": _u8(lay.vessel), "disc": _u8(lay.disc_mask), "fov": _u8(lay.fov)}
    lesions, counts = imitate_lesions(structure, grade, np.random.default_rng(s_lesion))
    image = _paint(lay, lesions, np.random.default_rng(s_paint))
    masks = {"vessel": structure["vessel"], "disc": structure["disc"], **lesions}
    return Phantom(image=image, masks={k: masks[k] for k in COND_CHANNELS}, grade=grade, lesion_counts=counts)


def sample_seed(seed: int, index: int) -> int:
    """The seed of item `index` of a dataset rendered with `seed` (independent streams per item)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


_SPLIT_CYCLE = ("train", "val", "train", "test", "train", "train", "train", "train", "train", "train")


def _render_encoded(args: tuple[int, int, int, int]) -> tuple[int, bytes, dict[str, bytes]]:
    """Render and PNG-encode one dataset item (runs in worker processes)."""
    i, size, grade, seed = args
    ph = render_phantom(size, grade, sample_seed(seed, i))
    return i, encode_png(ph.image), {k: encode_png(m) for k, m in ph.masks.items()}


def write_phantom_dataset(out: str | Path, count: int, size: int, seed: int, grades: Sequence[int] | None = None,
                          split: bool = True, progress: bool = False, workers: int = 0) -> Path:
    """Render `count` phantoms into the dataset format; grades round-robin over 0..4 unless given.

    Item i depends only on (seed, i), so `workers` processes give the same bytes as one.
    """
    from drgan.data.dataset_writer import DatasetWriter

    if not 1 <= count <= MAX_COUNT:
        raise ParameterError(f"{{count}} {count}: outside 1..{MAX_COUNT}")
    if seed < 0:
        raise ParameterError(f"{{seed}} {seed} must be >= 0")
    if grades is not None:
        grades = [int(g) for g in grades]
        bad = [g for g in grades if g not in range(NUM_GRADES)]
        if bad:
            raise DrganError(f"grades {bad} are outside 0..{NUM_GRADES - 1}")
        if len(grades) != count:
            raise DrganError(f"got {len(grades)} grades for {count} samples")
    else:
        grades = [i % NUM_GRADES for i in range(count)]
    if not MIN_SIDE <= size <= MAX_IMAGE_SIDE:  # a smaller dataset could not be read (decode.MIN_SIDE)
        raise ParameterError(f"{{size}} {size}: outside {MIN_SIDE}..{MAX_IMAGE_SIDE} px")
    with DatasetWriter(out) as writer:
        return _write_phantoms(writer, grades, size, seed, split, progress, workers)


def _write_phantoms(writer, grades: list[int], size: int, seed: int, split: bool, progress: bool, workers: int) -> Path:
    count = len(grades)
    per_grade = [0] * NUM_GRADES
    jobs = [(i, size, grades[i], seed) for i in range(count)]
    pool = None
    if workers > 1:
        from drgan.workers import process_pool
        pool = process_pool(workers, len(jobs))
        items = pool.imap(_render_encoded, jobs, chunksize=4)
    else:
        items = map(_render_encoded, jobs)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, total=count, desc="phantom", unit="img")
    try:
        for i, image, masks in items:
            g = grades[i]
            # Split stratified by grade: of every ten samples of a grade, 8 train, 1 val, 1 test
            # (val and test come early, so small datasets have them too).
            part = _SPLIT_CYCLE[per_grade[g] % 10] if split else None
            per_grade[g] += 1
            writer.add_encoded(f"phantom_{i:06d}", image, masks, g, part)
    finally:
        if pool is not None:
            pool.terminate()
    return writer.close()
