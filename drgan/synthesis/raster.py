"""Lesion masks of a batch rasterized with torch on the generator's device, from primitives.

The numpy drawing in drgan.data.lesions (`draw_primitives`) is the reference: every ellipse is
evaluated with the same float32 operations in the same order over the same pixel box, so the masks
agree pixel for pixel wherever the ellipse equation is not within rounding (1e-5) of the border
(tests/test_synthesis_raster.py). Each ellipse is evaluated on a square patch of its bounding box,
patches grouped by side (rounded up to a multiple of 8, so that little is evaluated outside the
box), and the inside pixels are OR-ed into the lesion planes with one scatter per group; the
planes are then clipped to where lesions may lie. No per-item or full-frame work on the host.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from drgan.data.lesion_stats import LESION_TYPES

MIN_PATCH = 8


def _patch_table(primitives: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per ellipse, float32 (cy, cx, a, b, cos, sin) and int64 (plane, r0, r1, c0, c1, patch side),
    where plane = item * len(LESION_TYPES) + type and [r0, r1) x [c0, c1) is the reference's box
    (clipped to the image)."""
    rows = np.concatenate([p for p in primitives if len(p)] or [np.zeros((0, 6))])
    item = np.repeat(np.arange(len(primitives)), [len(p) for p in primitives])
    t, cy, cx, a, b, angle = rows.T
    ext = np.maximum(a, b) + 1
    box = np.stack([np.maximum(0, cy - ext), np.minimum(size, cy + ext + 1),
                    np.maximum(0, cx - ext), np.minimum(size, cx + ext + 1)], 1).astype(np.int64)
    side = np.maximum(box[:, 1] - box[:, 0], box[:, 3] - box[:, 2])
    patch = MIN_PATCH * np.maximum(1, -(-side // MIN_PATCH))
    # math.cos/sin, as the reference calls them (numpy's vectorized ones may differ in the last bit).
    cos, sin = np.array([math.cos(x) for x in angle]), np.array([math.sin(x) for x in angle])
    floats = np.stack([cy, cx, a, b, cos, sin], 1).astype(np.float32)
    ints = np.concatenate([(item * len(LESION_TYPES) + t.astype(np.int64))[:, None], box, patch[:, None]], 1)
    return floats, ints


def condition_masks(planes: torch.Tensor, slots: list[int], primitives: list[np.ndarray], out: torch.Tensor | None = None,
                    lesions: torch.Tensor | None = None) -> torch.Tensor:
    """Float (B, 8, R, R) in COND_CHANNELS order, on planes' device: the vessel coverage (0..1) and
    0/1 disc of each item's structure, then its 0/1 lesion ellipses (rows of
    drgan.data.lesions.PRIMITIVE_FIELDS) inside the field of view and off the disc (membranes: on
    the disc too).

    planes: (slots, 3, R, R) uint8: vessel coverage 0..255, 0/1 disc, 0/1 lesion-allowed
    (DeviceStructures.planes). out: a float buffer of that shape to fill (the runner's condition
    tensor), or None for a new float32 one. lesions: a uint8 (B, 6, R, R) work buffer (reused by
    the runner), or None for a new one.
    """
    size, device = planes.shape[-1], planes.device
    if out is None:
        out = torch.empty((len(slots), 2 + len(LESION_TYPES), size, size), dtype=torch.float32, device=device)
    assert out.is_floating_point(), out.dtype
    if lesions is None:
        lesions = torch.empty((len(slots), len(LESION_TYPES), size, size), dtype=torch.uint8, device=device)
    lesions.zero_()
    floats, ints = _patch_table(primitives, size)
    if len(ints):
        f = torch.from_numpy(floats).to(device, non_blocking=True)
        n = torch.from_numpy(ints).to(device, non_blocking=True)
        for p in np.unique(ints[:, 5]):
            sel = torch.from_numpy(np.flatnonzero(ints[:, 5] == p)).to(device, non_blocking=True)
            _scatter_group(lesions.view(-1), f[sel], n[sel], int(p), size)
    # Clipping the union equals clipping each ellipse: one in-place pass over uint8 planes.
    membrane = LESION_TYPES.index("membrane")
    has_membrane = {int(i) // len(LESION_TYPES) for i in ints[:, 0] if int(i) % len(LESION_TYPES) == membrane}
    for b, slot in enumerate(slots):
        torch.div(planes[slot, 0], 255, out=out[b, 0])   # 255 gives exactly 1.0
        out[b, 1].copy_(planes[slot, 1])
        allowed = planes[slot, 2]
        if b in has_membrane:   # membranes may cover the disc
            lesions[b, membrane].mul_(allowed | planes[slot, 1])
            lesions[b, :membrane].mul_(allowed)
            lesions[b, membrane + 1:].mul_(allowed)
        else:
            lesions[b].mul_(allowed)
    out[:, 2:].copy_(lesions)
    return out


def _scatter_group(lesions: torch.Tensor, f: torch.Tensor, n: torch.Tensor, p: int, size: int) -> None:
    """OR the ellipses of one patch size into lesions (flat (B, 6, R, R))."""
    cy, cx, a, b, ca, sa = (f[:, k, None] for k in range(6))
    plane, r0, r1, c0, c1 = (n[:, k, None] for k in range(5))
    step = torch.arange(p, device=lesions.device)
    rows, cols = r0 + step, c0 + step                            # (N, p) pixel indices
    # Exact: integers below 2^24. Outside the box the offset is inf, and the ellipse test below
    # fails there (inf or nan), so no separate box test is needed.
    dy = torch.where(rows < r1, rows.float() - cy, torch.inf)
    dx = torch.where(cols < c1, cols.float() - cx, torch.inf)
    # The reference's order of float32 operations: u = (dx*ca + dy*sa)/a, v = (-dx*sa + dy*ca)/b.
    u = ((dx * ca)[:, None, :] + (dy * sa)[:, :, None]) / a[:, :, None]
    v = (((-dx) * sa)[:, None, :] + (dy * ca)[:, :, None]) / b[:, :, None]
    inside = u.mul_(u).add_(v.mul_(v)) <= 1.0
    # Pixels past the image border are outside the box (r1, c1 <= size) and scatter a 0, a no-op
    # under amax, to a clamped valid index.
    row_start = plane * (size * size) + rows.clamp(max=size - 1) * size             # (N, p)
    index = row_start[:, :, None] + cols.clamp(max=size - 1)[:, None, :]
    lesions.scatter_reduce_(0, index.view(-1), inside.view(-1).view(torch.uint8), reduce="amax")
