"""The pool of structures (vessel, disc, field of view) that synthesized items are built on."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from drgan.errors import DrganError

# Phantom structures are rendered on demand from this many seeds: enough variety for a demo.
PHANTOM_POOL = 256


class StructurePool:
    """Structure j as {"vessel", "disc", "fov"} uint8 0/255 masks at the output resolution."""

    def __init__(self, ids: list[str], loader) -> None:
        if not ids:
            raise DrganError("the structure pool is empty")
        self.ids = ids
        self._load = lru_cache(maxsize=64)(loader)

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

        ids, masks = [], []
        for batch in make_loader(root, size, batch_size=16, kind=loader):
            image = batch["image"].float()
            cond = batch["cond"].float()
            for b, item_id in enumerate(batch["id"]):
                vessel, disc = (cond[b, c].numpy() > 0.5 for c in (0, 1))
                if not vessel.any():
                    continue
                # Preprocessing crops to the field of view and pads with black: the FOV is what is lit.
                fov = image[b].mean(0).numpy() > -0.9
                ids.append(str(item_id))
                masks.append(np.stack([vessel, disc, fov]).astype(np.uint8) * 255)
        if not ids:
            raise DrganError(f"{root}: no usable structure masks (every vessel mask is empty or missing)")
        return cls(ids, lambda j: dict(zip(("vessel", "disc", "fov"), masks[j])))
