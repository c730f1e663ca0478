"""The pool of structures (vessel, disc, field of view) that synthesized items are built on."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from drgan.data.lesions import STRUCTURE_MASKS, Geometry, check_structure, structure_geometry
from drgan.errors import DrganError

# Phantom structures are rendered on demand from this many seeds and kept (5 MB each at 1280).
PHANTOM_POOL = 64
# Structures held on the generator's device at once (4.9 MB each at 1280), at least one batch.
DEVICE_SLOTS = 64


class StructurePool:
    """Structure j as {"vessel", "disc", "fov"} uint8 masks at the output resolution (vessel:
    coverage 0..255, as training's masks filtered to that size; disc and FOV: 0/255), with its
    placement geometry computed once. `loader(j)` gives them as that dict or as one (3, R, R)
    array in that order, which the pool keeps: a device upload is then one copy."""

    def __init__(self, ids: list[str], loader, identity: dict) -> None:
        if not ids:
            raise DrganError("the structure pool is empty")
        self.ids = ids
        self.identity = identity   # what the pool is made of, for the set's fingerprint
        self._load = lru_cache(maxsize=None)(lambda j: _stacked(loader(j)))
        self._geometry = lru_cache(maxsize=None)(lambda j: structure_geometry(self.get(j)))

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, j: int) -> dict[str, np.ndarray]:
        return dict(zip(STRUCTURE_MASKS, self._load(j)))

    def stacked(self, j: int) -> np.ndarray:
        """(3, R, R) uint8: the masks of get(j), in STRUCTURE_MASKS order."""
        return self._load(j)

    def geometry(self, j: int) -> Geometry:
        return self._geometry(j)

    @classmethod
    @lru_cache(maxsize=1)  # the last pool stays rendered: a rerun in the same process reuses it
    def phantom(cls, size: int, seed: int) -> "StructurePool":
        from drgan.data.phantom import render_structure, sample_seed

        identity = {"kind": "phantom", "seed": seed, "size": size, "count": PHANTOM_POOL}
        return cls([f"phantom_{seed}_{j}" for j in range(PHANTOM_POOL)], lambda j: render_structure(size, sample_seed(seed, j)), identity)

    @classmethod
    def from_dataset(cls, root: str | Path, size: int, loader: str = "torch", split: str | None = "train") -> "StructurePool":
        """Vessel and disc masks of a dataset folder's `split` (None: every row), read through the
        torch or DALI loader. The train split by default: a set drawn on the test eyes' vessel trees
        would augment a grader with images of the eyes it is tested on.

        The pool is held in memory as uint8: 3 bytes per pixel per structure (4.9 MB at 1280).
        """
        from drgan.data.loaders import make_loader
        from drgan.data.preprocess import detect_fov

        # Preprocessing crops each photograph to its field-of-view circle and pads it square, so the
        # FOV lies in the inscribed disc; a circle the camera cut at top and bottom (EyePACS) leaves
        # black bands inside it, where no training image has a lesion: the bright region bounds it.
        yy, xx = np.mgrid[:size, :size] + 0.5 - size / 2
        disc_fov = np.hypot(yy, xx) <= size / 2
        ids, masks = [], []
        digest = hashlib.sha256()
        for batch in make_loader(root, size, batch_size=16, kind=loader, split=split):
            cond = batch["cond"].float()
            for b, item_id in enumerate(batch["id"]):
                # Vessels keep their partial coverage: thresholded, a thin vessel resized from another
                # resolution breaks into dots the generator never saw in training.
                vessel = np.rint(cond[b, 0].numpy() * 255).astype(np.uint8)
                if not vessel.any():
                    continue
                disc = (cond[b, 1].numpy() > 0.5).astype(np.uint8) * 255
                pixels = ((batch["image"][b].float().permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
                fov = disc_fov & detect_fov(pixels)
                ids.append(str(item_id))
                masks.append(np.stack([vessel, disc, fov.astype(np.uint8) * 255]))
                digest.update(str(item_id).encode())
                digest.update(masks[-1])
        if not ids:
            where = f" of split {split!r}" if split else ""
            raise DrganError(f"{root}: no usable structure masks{where} (every vessel mask is empty or missing)")
        identity = {"kind": "dataset", "size": size, "count": len(ids), "sha256": digest.hexdigest()}
        return cls(ids, lambda j: masks[j], identity)


def _stacked(masks: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
    if isinstance(masks, np.ndarray):
        return masks
    check_structure(masks)
    return np.stack([masks[k] for k in STRUCTURE_MASKS])


class DeviceStructures:
    """Structures on the generator's device as uint8 planes (vessel coverage 0..255, 0/1 disc,
    0/1 lesion-allowed = FOV off the disc) in a fixed set of slots, least recently used first out."""

    def __init__(self, pool: StructurePool, size: int, device: torch.device, batch: int) -> None:
        self.pool = pool
        slots = max(batch, min(len(pool), DEVICE_SLOTS))
        self.planes = torch.empty((slots, 3, size, size), dtype=torch.uint8, device=device)
        self._slot_of: OrderedDict[int, int] = OrderedDict()   # structure -> slot, oldest first
        # CUDA: pinned staging buffers, each with the event of the last copy out of it; two
        # batches of uploads deep, so that refilling one waits for a copy queued a batch ago.
        self._staging: list[list] = []
        self._ring, self._next = 2 * batch, 0

    def slots(self, structures: list[int]) -> list[int]:
        """The slots holding these structures, uploading the missing ones (in stream order, so a
        slot is only overwritten after the work queued on it)."""
        for j in structures:
            if j in self._slot_of:
                self._slot_of.move_to_end(j)
                continue
            if len(self._slot_of) < len(self.planes):
                slot = len(self._slot_of)
            else:
                victim = next(k for k in self._slot_of if k not in structures)
                slot = self._slot_of.pop(victim)
            # One copy into the slot, then in place, no temporaries: four operations per upload.
            planes = self.planes[slot]
            self._upload(planes, j)
            torch.gt(planes[1], 0, out=planes[1])
            torch.gt(planes[2], 0, out=planes[2])
            torch.lt(planes[1], planes[2], out=planes[2])   # 0/1: FOV and not disc
            self._slot_of[j] = slot
        return [self._slot_of[j] for j in structures]

    def _upload(self, planes: torch.Tensor, j: int) -> None:
        """Copy structure j into a slot's planes without waiting for the device. A blocking copy
        waits for all the work queued on the stream (the batch before's generation), and from
        pageable memory even a non-blocking one may (CUDA's notes on API synchronization): on CUDA
        the copy goes through the pinned staging ring."""
        source = torch.from_numpy(self.pool.stacked(j))
        if not planes.is_cuda:
            planes.copy_(source)
            return
        k, self._next = self._next, (self._next + 1) % self._ring
        if k == len(self._staging):
            self._staging.append([torch.empty(source.shape, dtype=torch.uint8, pin_memory=True), None])
        buffer, copied = self._staging[k]
        if copied is not None:
            copied.synchronize()   # the copy out of this buffer, queued two batches of uploads ago
        buffer.copy_(source)
        planes.copy_(buffer, non_blocking=True)
        self._staging[k][1] = torch.cuda.Event(blocking=True)   # blocking: a wait sleeps instead of spinning
        self._staging[k][1].record()
