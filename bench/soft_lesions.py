"""The lesion conditions a run trained at R saw, against those synthesis draws at R: a phantom
dataset at S read through the torch loader (training's conditions), and lesions placed on its
structures and rasterized at R (drgan.synthesis.raster), hard or drawn at S and resampled (the
runner's way for a run whose data had another side, `runner.lesion_side`). Each set of conditions
is summed up by its lesion pixels per image, the share of them that is fractional, their mean
value and the lesion coverage per image.

    python bench/soft_lesions.py --out bench/results/soft_lesions.json [--pairs 256:128,640:128] [--count 40]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from drgan.cli.common import run_script
from drgan.data.lesions import lesion_primitives
from drgan.data.loaders import make_loader
from drgan.data.phantom import write_phantom_dataset
from drgan.synthesis.raster import condition_masks
from drgan.synthesis.structures import DeviceStructures, StructurePool


def summary(lesions: torch.Tensor) -> dict[str, float]:
    """lesions: (B, 6, R, R) float coverage in 0..1."""
    on = lesions > 0
    return {"lesion_px_per_image": round(float(on.sum() / len(lesions)), 1),
            "fractional_share": round(float(((lesions > 0) & (lesions < 1)).sum() / on.sum()), 3),
            "mean_value": round(float(lesions[on].mean()), 3),
            "coverage_per_image": round(float(lesions.sum() / len(lesions)), 1)}


def compare(side: int, size: int, count: int, folder: Path) -> dict:
    grades = [1 + i % 4 for i in range(count)]   # every item with lesions
    data = write_phantom_dataset(folder / f"data{side}", count, side, seed=3, grades=grades, split=False)
    training = torch.cat([batch["cond"][:, 2:].float() for batch in make_loader(data, size, batch_size=8)])
    pool = StructurePool.from_dataset(data, size, split=None)
    structures = DeviceStructures(pool, size, torch.device("cpu"), count)
    rng = np.random.default_rng(0)
    chosen = [int(rng.integers(len(pool))) for _ in range(count)]
    primitives = [lesion_primitives(pool.geometry(j), g, np.random.default_rng(100 + i))[0]
                  for i, (j, g) in enumerate(zip(chosen, grades))]
    slots = structures.slots(chosen)
    return {"data_side": side, "run_resolution": size, "images": count, "training": summary(training),
            "synthesis_hard": summary(condition_masks(structures.planes, slots, primitives)[:, 2:]),
            "synthesis_drawn_at_data_side": summary(condition_masks(structures.planes, slots, primitives, drawn_at=side)[:, 2:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pairs", default="256:128,640:128", help="data side:run resolution, comma-separated")
    parser.add_argument("--count", type=int, default=40)
    args = parser.parse_args()
    pairs = [tuple(map(int, pair.split(":"))) for pair in args.pairs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [compare(side, size, args.count, Path(tmp)) for side, size in pairs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": "cpu", "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(run_script(main))
