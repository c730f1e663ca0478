"""Lesion masks imitated on a structure (vessel, disc, field of view) for a target DR grade.

The international DR severity scale fixes which lesion types may appear at each grade:
  0 none; 1 microaneurysms only; 2 more than microaneurysms (haemorrhages, exudates) short of
  severe; 3 haemorrhages in all four quadrants and soft exudates; 4 proliferative signs
  (membranes on or near the disc, or along the arcades) and/or laser scars.
Lesions stay inside the field of view and off the optic disc, except membranes: new vessels of
the disc (NVD) are a main sign of grade 4.
Within those rules the counts, sizes and distances from the disc follow a `LesionStats`
(drgan.data.lesion_stats): the built-in default, or one fitted on a dataset's own masks
(drgan.data.lesion_fit).

Every lesion is a union of filled ellipses. Placement (`lesion_primitives`) works on a structure's
`Geometry`, computed once per structure, and returns the ellipses as rows of numbers; drawing them
is separate: `draw_primitives` here (numpy, the reference) or the batched torch rasterizer of the
synthesis runner, which gives the same masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from drgan.data.lesion_stats import DEFAULT_STATS, DIST_BINS, DIST_MAX, LESION_TYPES, LesionStats, TypeStats
from drgan.errors import DrganError


# ---------------------------------------------------------------------------------------------
# Geometry of a structure.

@dataclass
class Geometry:
    """What placement needs to know about a structure; computed once per structure."""

    shape: tuple[int, int]
    fov_radius: float           # pixels (radius of the disk of the same area)
    fov_center: np.ndarray      # (row, col)
    disc_center: np.ndarray     # (row, col)
    fovea: np.ndarray           # (row, col)
    allowed: np.ndarray         # flat indices of FOV pixels off the disc
    vessel: np.ndarray          # flat indices of vessel pixels among them
    disc: np.ndarray            # flat indices of disc pixels in the FOV (membranes may grow there)
    fov_edge: np.ndarray        # (n, 2) border pixels of the FOV
    disc_edge: np.ndarray       # (n, 2) border pixels of the disc


def _edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of mask with a 4-neighbour outside it (or on the array border)."""
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return np.argwhere(mask & ~inner).astype(np.float32)


STRUCTURE_MASKS = ("vessel", "disc", "fov")


def check_structure(structure: dict[str, np.ndarray]) -> None:
    """Refuse a structure without one of its masks, naming it."""
    for name in STRUCTURE_MASKS:
        if name not in structure:
            raise DrganError(f"structure lacks the {name!r} mask")


def structure_geometry(structure: dict[str, np.ndarray]) -> Geometry:
    check_structure(structure)
    fov = structure["fov"] > 0
    disc = structure["disc"] > 0
    if not fov.any():
        raise DrganError("structure has an empty field-of-view mask")
    allowed = fov & ~disc
    fov_radius = math.sqrt(fov.sum() / math.pi)
    fov_center = np.argwhere(fov).mean(0)
    if disc.any():
        disc_center = np.argwhere(disc).mean(0)
    else:  # no disc found: assume a macula-centred right-eye layout
        disc_center = fov_center + np.array([0.0, 0.4 * fov_radius])
    # Macula-centred photographs put the fovea opposite the disc, slightly below it.
    fovea = fov_center - 0.75 * (disc_center - fov_center) + np.array([0.05 * fov_radius, 0.0])
    return Geometry(
        shape=fov.shape, fov_radius=fov_radius, fov_center=fov_center, disc_center=disc_center, fovea=fovea,
        allowed=np.flatnonzero(allowed), vessel=np.flatnonzero(allowed & (structure["vessel"] > 0)),
        disc=np.flatnonzero(fov & disc), fov_edge=_edge(fov), disc_edge=_edge(disc),
    )


def _min_dist(points: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest edge pixel (few points, a few thousand edge pixels)."""
    if len(edge) == 0:
        return np.full(len(points), np.inf, np.float32)
    p = points.astype(np.float32)
    return np.sqrt(((p[:, None, :] - edge[None, :, :]) ** 2).sum(-1).min(1))


def _dist_bin(points: np.ndarray, geo: Geometry) -> np.ndarray:
    d = np.hypot(*(points - geo.disc_center).T) / geo.fov_radius
    return np.minimum((d * (DIST_BINS / DIST_MAX)).astype(np.int64), DIST_BINS - 1)


# ---------------------------------------------------------------------------------------------
# Shapes: each lesion is one connected blob, a union of ellipses.

# A primitive is one row: (type index into LESION_TYPES, centre row, centre col, semi-axis a along
# the angle, semi-axis b across it, angle in radians).
PRIMITIVE_FIELDS = ("type", "cy", "cx", "a", "b", "angle")


def _ellipse(mask: np.ndarray, center: np.ndarray, a: float, b: float, angle: float) -> None:
    """Fill one ellipse into mask: pixel centres (row, col) with ((u/a)^2 + (v/b)^2) <= 1 in float32."""
    h, w = mask.shape
    ext = max(a, b) + 1
    r0, r1 = int(max(0, center[0] - ext)), int(min(h, center[0] + ext + 1))
    c0, c1 = int(max(0, center[1] - ext)), int(min(w, center[1] + ext + 1))
    if r0 >= r1 or c0 >= c1:
        return
    dy = np.arange(r0, r1, dtype=np.float32)[:, None] - np.float32(center[0])
    dx = np.arange(c0, c1, dtype=np.float32)[None, :] - np.float32(center[1])
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = (dx * ca + dy * sa) / a, (-dx * sa + dy * ca) / b
    mask[r0:r1, c0:c1] |= (u * u + v * v) <= 1.0


def _shape(kind: str, center: np.ndarray, r: float, rng: np.random.Generator, out: list[tuple]) -> None:
    """Append the ellipses of one connected lesion of equivalent radius r (within _EXTENT[kind] * r
    of its centre) to out as (type, cy, cx, a, b, angle)."""
    t = LESION_TYPES.index(kind)

    def ellipse(c: np.ndarray, a: float, b: float, angle: float) -> None:
        out.append((t, float(c[0]), float(c[1]), float(a), float(b), float(angle)))

    r = max(r, 0.75)
    if kind in ("ma", "laser"):
        ellipse(center, r, r, 0.0)
    elif kind in ("he", "se"):
        k = rng.uniform(1.0, 1.5)
        angle = rng.uniform(0, math.pi)
        ellipse(center, r * k, r / k, angle)
        # A second, smaller overlapping lobe makes the outline irregular.
        off = rng.uniform(0.2, 0.5) * r * np.array([math.sin(angle + 1.0), math.cos(angle + 1.0)])
        ellipse(center + off, 0.7 * r, 0.55 * r, angle + rng.uniform(-1, 1))
    elif kind == "ex":
        # Hard exudate: a few waxy dots fused into one blob.
        ellipse(center, 0.8 * r, 0.8 * r, 0.0)
        for _ in range(rng.integers(1, 4)):
            off = rng.normal(0, 0.4 * r, size=2)
            off *= min(1.0, 0.8 * r / (np.hypot(*off) + 1e-9))
            s = rng.uniform(0.45, 0.7) * r
            ellipse(center + off, s, s, 0.0)
    else:
        # Membrane: a chain of overlapping disks along a short meandering path.
        n = int(rng.integers(4, 8))
        s = 0.55 * r
        angles = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 0.5, n))
        pts = np.cumsum(0.33 * r * np.stack([np.sin(angles), np.cos(angles)], 1), 0)
        for p in pts - pts.mean(0) + center:
            ellipse(p, s, s * rng.uniform(0.7, 1.0), rng.uniform(0, math.pi))


def _sample_count(hist: list[float], rng: np.random.Generator, positive: bool = False) -> int:
    p = np.asarray(hist, float)
    if positive:
        p = p.copy()
        p[0] = 0.0
        if p.sum() <= 0:
            return 1
    return int(rng.choice(len(p), p=p / p.sum()))


def _place(kind: str, n: int, stats: TypeStats, geo: Geometry, rng: np.random.Generator,
           out: list[tuple], quadrants: bool, placed: list[tuple[np.ndarray, float]]) -> int:
    """Place n lesions of one type (their ellipses appended to out), none touching another lesion
    (of any type) in `placed` (centre, extent), which grows; returns how many were placed."""
    if n <= 0:
        return 0
    R = geo.fov_radius
    if kind == "membrane":   # fibrovascular tissue grows on and beside the vessels, and on the disc
        pool = np.concatenate([geo.vessel if geo.vessel.size else geo.allowed, geo.disc])
    else:
        pool = geo.allowed
    if pool.size == 0:
        return 0
    # Candidates uniform over the pool, then accepted in proportion to the distance histogram
    # over the pool's area in each bin (rejection sampling, the area estimated from the
    # candidates themselves); more than needed, so out-of-bounds and overlapping ones can go.
    m = max(64, 8 * n)
    pts = np.stack(np.unravel_index(pool[rng.integers(0, pool.size, size=16 * m)], geo.shape), 1).astype(np.float64)
    if kind == "membrane":
        pts += rng.normal(0, 0.01 * R, pts.shape)
    bins = _dist_bin(pts, geo)
    area = np.bincount(bins, minlength=DIST_BINS).astype(float)
    target = np.asarray(stats.dist_hist, float) * (area > 0)
    if target.sum() <= 0:
        target = (area > 0).astype(float)
    weight = np.divide(target, area, out=np.zeros(DIST_BINS), where=area > 0)
    keep = rng.random(len(pts)) * weight.max() < weight[bins]
    if kind == "laser":     # panretinal photocoagulation spares the macula
        keep &= np.hypot(*(pts - geo.fovea).T) > 0.55 * R
    centers = pts[keep][:m]
    radii = R * np.sqrt(np.exp(rng.normal(stats.log_area_mean, stats.log_area_std, size=len(centers))))
    ext = _EXTENT[kind] * np.maximum(radii, 0.75) + 1.5
    ok = _min_dist(centers, geo.fov_edge) > ext
    if kind != "membrane":
        ok &= _min_dist(centers, geo.disc_edge) > ext + (0.12 * R if kind == "laser" else 0)
    if quadrants:   # interleave the candidates of the four quadrants around the FOV centre
        quad = ((centers[:, 0] >= geo.fov_center[0]) * 2 + (centers[:, 1] >= geo.fov_center[1]))[ok]
        rank = np.empty(len(quad), np.int64)
        for q in range(4):
            rank[quad == q] = np.arange((quad == q).sum())
        order = np.flatnonzero(ok)[np.lexsort((quad, rank))]
    else:
        order = np.flatnonzero(ok)
    # Lesions never touch: each stays its own connected component, and each pixel shows one lesion.
    placed_c = [c for c, _ in placed]
    placed_ext = [e for _, e in placed]
    drawn = 0
    for c, r, e in zip(centers[order], radii[order], ext[order]):
        if drawn >= n:
            break
        if placed_c and np.any(np.hypot(*(np.asarray(placed_c) - c).T) <= np.asarray(placed_ext) + e + 1):
            continue
        _shape(kind, c, r, rng, out)
        placed_c.append(c)
        placed_ext.append(e)
        placed.append((c, e))
        drawn += 1
    return drawn


# Bounding radius of each shape drawn by _draw, in units of its equivalent radius.
_EXTENT = {"ma": 1.0, "laser": 1.0, "he": 1.5, "se": 1.5, "ex": 1.5, "membrane": 2.6}


def imitate_lesions(structure: dict[str, np.ndarray], grade: int, rng: np.random.Generator,
                    stats: LesionStats | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Lesion masks (uint8 0/255, the structure's size) and per-type counts for a DR grade."""
    if grade == 0:  # no geometry needed (and no random draws)
        check_structure(structure)
        shape = structure["fov"].shape
        return {t: np.zeros(shape, np.uint8) for t in LESION_TYPES}, {t: 0 for t in LESION_TYPES}
    primitives, counts = lesion_primitives(structure_geometry(structure), grade, rng, stats)
    drawn = draw_primitives(primitives, structure["fov"].shape)
    fov = structure["fov"] > 0
    keep = fov & (structure["disc"] == 0)
    return {t: np.where(drawn[t] & (fov if t == "membrane" else keep), 255, 0).astype(np.uint8) for t in LESION_TYPES}, counts


def draw_primitives(primitives: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The reference drawing: one bool mask per lesion type, the union of its ellipses (not yet
    clipped to the field of view, and off the disc for every type but membranes)."""
    masks = {t: np.zeros(shape, bool) for t in LESION_TYPES}
    for t, cy, cx, a, b, angle in primitives:
        _ellipse(masks[LESION_TYPES[int(t)]], np.array([cy, cx]), a, b, angle)
    return masks


def lesion_primitives(geo: Geometry, grade: int, rng: np.random.Generator,
                      stats: LesionStats | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """The ellipses (float64 rows of PRIMITIVE_FIELDS) and per-type lesion counts for a DR grade."""
    if grade not in range(5):
        raise DrganError(f"grade {grade} is outside 0..4")
    stats = stats or DEFAULT_STATS
    counts = {t: 0 for t in LESION_TYPES}
    if grade == 0:
        return np.zeros((0, len(PRIMITIVE_FIELDS))), counts
    types = stats.grades[grade]
    if grade >= 1:
        counts["ma"] = _sample_count(types["ma"].count_hist, rng, positive=grade == 1)
    if grade >= 2:
        for t in ("he", "ex", "se"):
            counts[t] = _sample_count(types[t].count_hist, rng)
        if grade == 2 and counts["he"] + counts["ex"] + counts["se"] == 0:
            counts["he"] = _sample_count(types["he"].count_hist, rng, positive=True)
        if grade == 3:  # severe: haemorrhages in all four quadrants, soft exudates
            counts["he"] = max(counts["he"], 4)
            counts["se"] = max(counts["se"], 1)
    if grade == 4:
        counts["laser"] = _sample_count(types["laser"].count_hist, rng)
        counts["membrane"] = _sample_count(types["membrane"].count_hist, rng)
        if counts["laser"] + counts["membrane"] == 0:  # proliferative: at least one sign
            w = np.array([1 - types["membrane"].count_hist[0], 1 - types["laser"].count_hist[0]]) + 1e-6
            t = ("membrane", "laser")[rng.choice(2, p=w / w.sum())]
            counts[t] = _sample_count(types[t].count_hist, rng, positive=True)
    out: list[tuple] = []
    placed: list[tuple[np.ndarray, float]] = []
    # Membranes (which may cover the disc and its surroundings), the laser pattern and large
    # lesions first, so that the many small lesions fill around them.
    for t in ("membrane", "laser", "se", "he", "ex", "ma"):
        if counts[t]:
            counts[t] = _place(t, counts[t], types[t], geo, rng, out, (grade == 3 and t == "he"), placed)
    return np.array(out, np.float64).reshape(-1, len(PRIMITIVE_FIELDS)), counts
