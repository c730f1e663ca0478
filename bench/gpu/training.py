"""paper-1280 local-stage training step on one GPU: bf16, Triton kernels vs the reference ops.

    python bench/gpu/training.py --out OUT/training.json

Each variant builds the trainer (VGG19 perceptual with random weights: same cost as real ones),
warms up, then times a few full G + D steps; ms/step and peak memory per variant. A variant that
fails (out of memory, missing kernel) is recorded with its error and the next one runs.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from drgan.checkpoint import save_tensors
from drgan.config import preset
from drgan.grading_space import GradingSpace
from drgan.training.gan import GanTrainer
from drgan.training.options import GanOptions
from drgan.training.vgg import VGG19Features

CFG = preset("paper-1280")
BUDGET_S = 110


class RandomRetinas(Dataset):
    def __init__(self, count: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.image = torch.rand(count, 3, CFG.resolution, CFG.resolution, generator=g) * 2 - 1
        self.cond = (torch.rand(count, 8, CFG.resolution, CFG.resolution, generator=g) > 0.95).float()

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict:
        return {"id": str(i), "image": self.image[i], "cond": self.cond[i], "grade": torch.tensor(i % 5)}


def run_variant(tmp: Path, impl: str, batch: int, steps: int, data: Dataset) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    opts = GanOptions(out=str(tmp / f"run-{impl}-{batch}"), grading_space=str(tmp / "space.safetensors"), preset="paper-1280",
                      stage="local", perceptual="vgg19", vgg19_weights=str(tmp / "vgg19.safetensors"), batch=batch,
                      precision="bf16", channels_last=True, device="cuda", kernel_impl=impl)
    trainer = GanTrainer(opts, data)
    b = next(iter(DataLoader(data, batch_size=batch)))
    trainer.train_step(b, 0)  # warm-up: Triton compilation, cuDNN autotuning
    torch.cuda.synchronize()
    times = []
    for s in range(steps):
        start = time.perf_counter()
        values = trainer.train_step(b, s + 1)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"impl": impl, "batch": batch, "ms_per_step": 1000 * sum(times) / len(times), "ms_per_image": 1000 * sum(times) / len(times) / batch,
            "steps": steps, "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "losses_finite": all(v == v for v in values.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    t0 = time.time()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": "paper-1280", "stage": "local",
              "precision": "bf16", "channels_last": True, "variants": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        GradingSpace.fit(torch.randn(20, CFG.z_dim).abs(), torch.arange(20) % 5, 5, 0.9).save(tmp / "space.safetensors")
        save_tensors(VGG19Features().state_dict(), tmp / "vgg19.safetensors")
        data = RandomRetinas(2)
        for impl, batch, steps in (("triton", 1, 3), ("ref", 1, 2), ("triton", 2, 3)):
            if time.time() - t0 > BUDGET_S:
                result["variants"].append({"impl": impl, "batch": batch, "skipped": "time budget"})
                continue
            try:
                row = run_variant(tmp, impl, batch, steps, data)
            except Exception as exc:  # recorded, so the other variants still run
                row = {"impl": impl, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:500], "trace": traceback.format_exc()[-1500:]}
            print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
            result["variants"].append(row)
    result["total_s"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
