"""Item i of a plan as a small record: structure index, lesion primitives, grading vector, seeds.

Placement is host work on the structure's cached geometry; the masks themselves are rasterized
in batch on the generator's device (drgan.synthesis.raster).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from drgan.data.lesion_stats import LESION_TYPES, LesionStats
from drgan.data.lesions import lesion_primitives
from drgan.grading_space import GradingSpace
from drgan.synthesis.plan import Plan
from drgan.synthesis.structures import StructurePool


@dataclass
class Item:
    index: int
    id: str
    grade: int
    seed: int                       # structure + lesion seed (the manifest's `seed`)
    noise_seed: int                 # seed of the generator noise volumes
    structure: int                  # index into the structure pool
    structure_id: str
    lesion_counts: dict[str, int]
    primitives: np.ndarray          # float64 rows of drgan.data.lesions.PRIMITIVE_FIELDS
    eps: torch.Tensor               # (z_dim,) standard-normal draws of the grading vector
    z: torch.Tensor                 # (z_dim,) grading vector of the planned grade: eps in its space

    def manifest_row(self) -> dict:
        return {"id": self.id, "grade": self.grade, "seed": self.seed, "structure_id": self.structure_id, **self.lesion_counts}


def place_item(plan: Plan, i: int, pool: StructurePool, space: GradingSpace, stats: LesionStats | None) -> Item:
    struct_seed, z_seed, noise_seed = plan.item_seeds(i)
    grade = plan.grade(i)
    rng = np.random.default_rng(struct_seed)
    j = int(rng.integers(len(pool)))
    primitives, counts = lesion_primitives(pool.geometry(j), grade, rng, stats)
    eps = torch.randn(1, space.dim, generator=torch.Generator().manual_seed(z_seed))
    z = space.shift(torch.tensor([grade]), eps)[0]
    return Item(
        index=i,
        id=plan.item_id(i),
        grade=grade,
        seed=struct_seed,
        noise_seed=noise_seed,
        structure=j,
        structure_id=pool.ids[j],
        lesion_counts={t: int(counts[t]) for t in LESION_TYPES},
        primitives=primitives,
        eps=eps[0],
        z=z,
    )


def item_noise(shapes: list[tuple[int, ...]], seed: int, device: torch.device) -> list[torch.Tensor]:
    """One item's noise volumes (batch axis of 1), drawn on `device` from the item's own stream."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn((1, *s[1:]), generator=gen, device=device) for s in shapes]
