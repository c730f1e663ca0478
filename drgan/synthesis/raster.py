"""Lesion masks of a batch rasterized with torch on the generator's device, from primitives.

The numpy drawing in drgan.data.lesions (`draw_primitives`) is the reference: every ellipse is
evaluated with the same operations in the same order over the same pixel box (in float32; the
reference divides by float64 semi-axes), so the masks agree pixel for pixel wherever the ellipse
equation is not within rounding (1e-5) of the border
(tests/test_synthesis_raster.py). The pixels of every ellipse's box are laid end to end and
evaluated in one pass (each pixel finds its ellipse by `repeat_interleave` of the box areas), the
inside ones OR-ed into the lesion planes with one scatter, and the planes of the whole batch
clipped to where lesions may lie: a few dozen operations per batch, whatever the number of
ellipses or items. That count matters on a GPU: each is a launch queued by the main thread, which
shares the interpreter with the placement threads, and the generator waits on those launches.

A run trained below (or above) its dataset's resolution saw lesion masks resampled to its own:
hard at the data's side, soft at the run's. `drawn_at` gives those conditions: the ellipses are
drawn at the data's side and resampled as training did (antialiased bilinear, torch's
`antialias=True` being Pillow's filter), quantized to 8 bits as a training mask is.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from drgan.data.lesion_stats import LESION_TYPES

# Box pixels evaluated per pass (each costs about 130 bytes of temporaries): a batch of 16 at 1280
# has about a million; a bigger one (many large lesions from fitted statistics) takes more passes.
PASS_PIXELS = 1 << 21
# Bytes of the float copy of the lesion planes resampled at once from the data's side (four items
# at 1280); at least one item.
RESAMPLE_BYTES = 160 << 20


def _box_table(primitives: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray, list[slice]]:
    """Per ellipse whose box is not empty, a float32 column (cy, cx, a, b, cos, sin, plane, r0, c0,
    box width, first pixel) and its box area; and the passes, runs of ellipses of at most
    PASS_PIXELS box pixels (an ellipse larger alone). plane = item * len(LESION_TYPES) + type; the
    box is the reference's [r0, r1) x [c0, c1) clipped to the image; the first pixel counts from
    the start of the ellipse's pass. The integers are below 2^24, so float32 holds them exactly:
    one table, gathered per pixel in one operation."""
    rows = np.concatenate([p for p in primitives if len(p)] or [np.zeros((0, 6))])
    item = np.repeat(np.arange(len(primitives)), [len(p) for p in primitives])
    t, cy, cx, a, b, angle = rows.T
    ext = np.maximum(a, b) + 1
    r0, r1, c0, c1 = (np.asarray(x).astype(np.int64) for x in (np.maximum(0, cy - ext), np.minimum(size, cy + ext + 1),
                                                               np.maximum(0, cx - ext), np.minimum(size, cx + ext + 1)))
    width = np.maximum(c1 - c0, 0)
    area = np.maximum(r1 - r0, 0) * width
    keep = area > 0
    area = area[keep]
    passes, first, start, total = [], np.zeros_like(area), 0, 0
    for k, n in enumerate(area.tolist()):
        if total and total + n > PASS_PIXELS:
            passes.append(slice(start, k))
            start, total = k, 0
        first[k] = total
        total += n
    passes += [slice(start, len(area))] if len(area) else []
    plane = item[keep] * len(LESION_TYPES) + t[keep].astype(np.int64)
    assert len(primitives) * len(LESION_TYPES) < 2**24 and size < 2**24 and PASS_PIXELS < 2**24
    # math.cos/sin, as the reference calls them (numpy's vectorized ones may differ in the last bit).
    cos, sin = np.array([math.cos(x) for x in angle[keep]]), np.array([math.sin(x) for x in angle[keep]])
    table = np.stack([cy[keep], cx[keep], a[keep], b[keep], cos, sin, plane, r0[keep], c0[keep], width[keep], first])
    return table.astype(np.float32), area, passes


def condition_masks(planes: torch.Tensor, slots: list[int], primitives: list[np.ndarray], out: torch.Tensor | None = None,
                    lesions: torch.Tensor | None = None, drawn_at: int | None = None) -> torch.Tensor:
    """Float (B, 8, R, R) in COND_CHANNELS order, on planes' device: the vessel coverage (0..1) and
    0/1 disc of each item's structure, then its 0/1 lesion ellipses (rows of
    drgan.data.lesions.PRIMITIVE_FIELDS) inside the field of view and off the disc (membranes: on
    the disc too).

    planes: (slots, 3, R, R) uint8: vessel coverage 0..255, 0/1 disc, 0/1 lesion-allowed
    (DeviceStructures.planes). out: a float buffer of that shape to fill (the runner's condition
    tensor), or None for a new float32 one. lesions: a uint8 (B, 6, S, S) work buffer (reused by
    the runner), or None for a new one. drawn_at: S, the side the ellipses are drawn at before
    resampling to R (the lesion planes then hold coverage in 1/255 steps); None: R, no resampling.
    """
    size, device = planes.shape[-1], planes.device
    side = drawn_at or size
    if out is None:
        out = torch.empty((len(slots), 2 + len(LESION_TYPES), size, size), dtype=torch.float32, device=device)
    assert out.is_floating_point(), out.dtype
    if lesions is None:
        lesions = torch.empty((len(slots), len(LESION_TYPES), side, side), dtype=torch.uint8, device=device)
    assert lesions.shape == (len(slots), len(LESION_TYPES), side, side), (lesions.shape, side)
    lesions.zero_()
    table, area, passes = _box_table(primitives if side == size else [scaled(p, side / size) for p in primitives], side)
    if len(area):
        t = torch.from_numpy(table).to(device, non_blocking=True)
        n = torch.from_numpy(area).to(device, non_blocking=True)
        for part in passes:
            _scatter_boxes(lesions.view(-1), t[:, part], n[part], int(area[part].sum()), side)
    structure = planes.index_select(0, torch.tensor(slots).to(device, non_blocking=True))
    vessel, disc, allowed = structure.unsqueeze(2).unbind(1)                   # (B, 1, R, R) each
    out[:, :1].copy_(vessel).div_(255)   # 255 gives exactly 1.0
    out[:, 1:2].copy_(disc)
    if side == size:
        out[:, 2:].copy_(_clipped(lesions, allowed, disc))   # clipped as uint8: a quarter of the bytes
        return out
    drawn, step = out[:, 2:], max(1, RESAMPLE_BYTES // (4 * lesions[0].numel()))
    for k in range(0, len(slots), step):
        drawn[k:k + step] = F.interpolate(lesions[k:k + step].float(), size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False)
    _clipped(drawn.mul_(255).round_(), allowed, disc).div_(255)   # 8-bit steps; 255 gives exactly 1.0
    return out


def _clipped(lesions: torch.Tensor, allowed: torch.Tensor, disc: torch.Tensor) -> torch.Tensor:
    """Lesion planes (B, 6, R, R) cut, in place, to where lesions may lie. Clipping the union equals
    clipping each ellipse. An item without membranes has a zero membrane plane, which the wider
    clip leaves zero."""
    membrane = LESION_TYPES.index("membrane")
    lesions[:, :membrane].mul_(allowed)
    lesions[:, membrane:membrane + 1].mul_(allowed | disc)   # membranes may cover the disc
    lesions[:, membrane + 1:].mul_(allowed)
    return lesions


def scaled(primitives: np.ndarray, factor: float) -> np.ndarray:
    """Ellipse rows (PRIMITIVE_FIELDS) placed at one side, for an image `factor` times that side:
    pixel centres map as (x + 0.5) * factor - 0.5, as in resampling."""
    out = primitives.astype(np.float64)   # a copy, in float whatever the rows were given as
    out[:, 1:3] = (out[:, 1:3] + 0.5) * factor - 0.5
    out[:, 3:5] *= factor
    return out


def _scatter_boxes(lesions: torch.Tensor, table: torch.Tensor, area: torch.Tensor, pixels: int, size: int) -> None:
    """OR the ellipses of one pass (columns of _box_table's table, their box areas, and `pixels`,
    the areas' sum, known on the host so that no launch waits for the device) into lesions (flat
    (B, 6, R, R))."""
    # Each box pixel gets its ellipse's column: the boxes' pixels laid end to end.
    cy, cx, a, b, ca, sa, *ints = torch.repeat_interleave(table, area, dim=1, output_size=pixels)
    plane, r0, c0, width, first = (x.long() for x in ints)
    local = torch.arange(pixels, device=lesions.device).sub_(first)
    rows = torch.div(local, width, rounding_mode="floor").add_(r0)
    cols = local.remainder_(width).add_(c0)
    dy, dx = rows.float().sub_(cy), cols.float().sub_(cx)    # exact: integers below 2^24
    # The reference's order of float32 operations: u = (dx*ca + dy*sa)/a, v = (-dx*sa + dy*ca)/b.
    u = (dx * ca).add_(dy * sa).div_(a)
    v = ((-dx) * sa).add_(dy * ca).div_(b)
    inside = u.mul_(u).add_(v.mul_(v)) <= 1.0
    index = plane.mul_(size).add_(rows).mul_(size).add_(cols)
    lesions.scatter_reduce_(0, index, inside.view(torch.uint8), reduce="amax")
