"""Lesion masks of a batch rasterized with torch on the generator's device, from primitives.

The numpy drawing in drgan.data.lesions (`draw_primitives`) is the reference: every ellipse is
evaluated with the same float32 operations in the same order over the same pixel box, so the masks
agree pixel for pixel wherever the ellipse equation is not within rounding (1e-5) of the border
(tests/test_synthesis_raster.py). Each ellipse is evaluated on a square patch of its bounding box,
patches grouped by power-of-two size, and the inside pixels are OR-ed into the output with one
scatter per group: no per-item or full-frame work on the host.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from drgan.data.lesions import LESION_TYPES

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
    patch = np.maximum(MIN_PATCH, 2 ** np.ceil(np.log2(np.maximum(side, 1)))).astype(np.int64)
    # math.cos/sin, as the reference calls them (numpy's vectorized ones may differ in the last bit).
    cos, sin = np.array([math.cos(x) for x in angle]), np.array([math.sin(x) for x in angle])
    floats = np.stack([cy, cx, a, b, cos, sin], 1).astype(np.float32)
    ints = np.concatenate([(item * len(LESION_TYPES) + t.astype(np.int64))[:, None], box, patch[:, None]], 1)
    return floats, ints


def condition_masks(planes: torch.Tensor, slots: list[int], primitives: list[np.ndarray], out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 0/1 (B, 8, R, R) in COND_CHANNELS order, on planes' device: vessel and disc of each
    item's structure, then its lesion ellipses (rows of drgan.data.lesions.PRIMITIVE_FIELDS)
    inside the field of view and off the disc (membranes: on the disc too).

    planes: (slots, 3, R, R) uint8 0/1 vessel, disc, lesion-allowed (DeviceStructures.planes).
    out: a buffer of that shape to fill (reused by the runner), or None for a new one.
    """
    size, device = planes.shape[-1], planes.device
    if out is None:
        out = torch.empty((len(slots), 2 + len(LESION_TYPES), size, size), dtype=torch.uint8, device=device)
    for b, slot in enumerate(slots):
        out[b, :2] = planes[slot, :2]
    out[:, 2:].zero_()
    floats, ints = _patch_table(primitives, size)
    if len(ints):
        f = torch.from_numpy(floats).to(device, non_blocking=True)
        n = torch.from_numpy(ints).to(device, non_blocking=True)
        allowed = (torch.tensor(slots, device=device)[n[:, 0] // len(LESION_TYPES)] * 3 + 2)[:, None]
        membrane = ints[:, 0] % len(LESION_TYPES) == LESION_TYPES.index("membrane")
        for p in np.unique(ints[:, 5]):
            group = np.flatnonzero(ints[:, 5] == p)
            sel = torch.from_numpy(group).to(device, non_blocking=True)
            on_disc = torch.from_numpy(membrane[group, None]).to(device, non_blocking=True) if membrane[group].any() else None
            _scatter_group(out.view(-1), planes.view(-1), f[sel], n[sel], allowed[sel], on_disc, int(p), size)
    return out


def _scatter_group(out: torch.Tensor, planes: torch.Tensor, f: torch.Tensor, n: torch.Tensor,
                   allowed: torch.Tensor, on_disc: torch.Tensor | None, p: int, size: int) -> None:
    """OR the ellipses of one patch size into out (flat); allowed: the flat plane index of each
    ellipse's lesion-allowed mask in planes (flat); on_disc: (N, 1) bool, whether the disc (the
    plane before) is allowed too (membranes), or None when no ellipse of the group may cover it."""
    cy, cx, a, b, ca, sa = (f[:, k, None] for k in range(6))
    plane, r0, r1, c0, c1 = (n[:, k, None] for k in range(5))
    step = torch.arange(p, device=out.device)
    rows, cols = r0 + step, c0 + step                            # (N, p) pixel indices
    dy, dx = rows.float() - cy, cols.float() - cx                # exact: integers below 2^24
    # The reference's order of float32 operations: u = (dx*ca + dy*sa)/a, v = (-dx*sa + dy*ca)/b.
    u = ((dx * ca)[:, None, :] + (dy * sa)[:, :, None]) / a[:, :, None]
    v = (((-dx) * sa)[:, None, :] + (dy * ca)[:, :, None]) / b[:, :, None]
    inside = (u * u + v * v) <= 1.0
    inside &= (rows < r1)[:, :, None] & (cols < c1)[:, None, :]
    # Pixels past the image border are outside the box (r1, c1 <= size) and scatter a 0, a no-op
    # under amax, to a clamped valid index.
    pixel = rows.clamp(max=size - 1)[:, :, None] * size + cols.clamp(max=size - 1)[:, None, :]
    ok = planes[(allowed[:, :, None] * size * size + pixel).reshape(-1)].view(inside.shape).bool()
    if on_disc is not None:
        ok |= on_disc[:, :, None] & planes[((allowed[:, :, None] - 1) * size * size + pixel).reshape(-1)].view(inside.shape).bool()
    inside &= ok
    out_plane = (plane // len(LESION_TYPES)) * (2 + len(LESION_TYPES)) + 2 + plane % len(LESION_TYPES)
    out.scatter_reduce_(0, (out_plane[:, :, None] * size * size + pixel).reshape(-1), inside.reshape(-1).to(torch.uint8), reduce="amax")
