"""Item i of a plan as generator inputs: masks (structure + imitated lesions), grading vector, noise."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from drgan.config import COND_CHANNELS
from drgan.data.lesions import LESION_TYPES, LesionStats, imitate_lesions
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
    structure_id: str
    lesion_counts: dict[str, int]
    masks: np.ndarray               # uint8 (8, R, R), COND_CHANNELS order, 0/255
    z: torch.Tensor                 # (z_dim,) grading vector


def build_item(plan: Plan, i: int, pool: StructurePool, space: GradingSpace, stats: LesionStats | None) -> Item:
    struct_seed, z_seed, noise_seed = plan.item_seeds(i)
    grade = plan.grade(i)
    rng = np.random.default_rng(struct_seed)
    j = int(rng.integers(len(pool)))
    structure = pool.get(j)
    lesions, counts = imitate_lesions(structure, grade, rng, stats)
    named = {"vessel": structure["vessel"], "disc": structure["disc"], **lesions}
    z = space.sample(torch.tensor([grade]), torch.Generator().manual_seed(z_seed))[0]
    return Item(
        index=i,
        id=plan.item_id(i),
        grade=grade,
        seed=struct_seed,
        noise_seed=noise_seed,
        structure_id=pool.ids[j],
        lesion_counts={t: int(counts[t]) for t in LESION_TYPES},
        masks=np.stack([named[c] for c in COND_CHANNELS]),
        z=z,
    )


def item_noise(shapes: list[tuple[int, ...]], seed: int, device: torch.device) -> list[torch.Tensor]:
    """One item's noise volumes (batch axis of 1), drawn on `device` from the item's own stream."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn((1, *s[1:]), generator=gen, device=device) for s in shapes]
