"""The pool of structures (vessel, disc, field of view) that synthesized items are built on."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from drgan.errors import DrganError

# Phantom structures are rendered on demand from this many seeds and kept (5 MB each at 1280).
PHANTOM_POOL = 64


class StructurePool:
    """Structure j as {"vessel", "disc", "fov"} uint8 0/255 masks at the output resolution."""

    def __init__(self, ids: list[str], loader) -> None:
        if not ids:
            raise DrganError("the structure pool is empty")
        self.ids = ids
        self._load = lru_cache(maxsize=None)(loader)

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, j: int) -> dict[str, np.ndarray]:
        return self._load(j)

    @classmethod
    def phantom(cls, size: int, seed: int) -> "StructurePool":
        from drgan.data.phantom import render_structure, sample_seed

        return cls([f"phantom_{seed}_{j}" for j in range(PHANTOM_POOL)], lambda j: render_structure(size, sample_seed(seed, j)))

    @classmethod
    def from_dataset(cls, root: str | Path, size: int, loader: str = "torch") -> "StructurePool":
        """Vessel and disc masks of a dataset folder (read through the torch or DALI loader).

        The pool is held in memory as uint8: 3 bytes per pixel per structure (4.9 MB at 1280).
        """
        from drgan.data.loaders import make_loader

        # Preprocessing crops each photograph to its field-of-view circle and pads it square, so the
        # FOV is the inscribed disc: exact, and the same whichever loader decoded the image.
        yy, xx = np.mgrid[:size, :size] + 0.5 - size / 2
        fov = np.hypot(yy, xx) <= size / 2
        ids, masks = [], []
        for batch in make_loader(root, size, batch_size=16, kind=loader):
            cond = batch["cond"].float()
            for b, item_id in enumerate(batch["id"]):
                vessel, disc = (cond[b, c].numpy() > 0.5 for c in (0, 1))
                if not vessel.any():
                    continue
                ids.append(str(item_id))
                masks.append(np.stack([vessel, disc, fov]).astype(np.uint8) * 255)
        if not ids:
            raise DrganError(f"{root}: no usable structure masks (every vessel mask is empty or missing)")
        return cls(ids, lambda j: dict(zip(("vessel", "disc", "fov"), masks[j])))
