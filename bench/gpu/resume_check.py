"""Exact resume on the device, for bench/gpu/training.py: 2 steps, checkpoint, resume in a new
trainer, 2 more steps, against 4 uninterrupted steps.

Training itself draws nothing from the CUDA generator (z and noise come from seeded CPU
generators), so the check draws from the device generator after step 2 in both runs, before the
checkpoint: the first draw after the last step then matches only if the checkpoint restored the
device's RNG state (a fresh trainer reseeds it). Weights cannot be compared bit for bit on CUDA
(nondeterministic kernels); they must be much closer to the uninterrupted run than the last two
steps moved them. Reference kernels: new shapes would cost Triton compilations and autotuning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from drgan.config import preset
from drgan.grading_space import GradingSpace
from drgan.training.gan import GanTrainer
from drgan.training.options import GanOptions

PRESET, STEPS = "tiny-64", 2           # steps before and after the checkpoint
CLOSER = 10                           # resumed vs uninterrupted, against the last steps' movement


def _params(trainer: GanTrainer) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for m in (trainer.G, trainer.D) for p in m.parameters()])


def _train(trainer: GanTrainer, batches: list[dict], steps: range) -> None:
    for s in steps:
        trainer.train_step(batches[s], s)
        trainer.step = trainer.next_batch = s + 1


def resume_matches(tmp: Path, device: str, precision: str, dataset: Callable[[int, int], Dataset]) -> dict:
    """dataset(count, resolution) -> items as FundusDataset's."""
    cfg = preset(PRESET)
    space = tmp / "resume-space.safetensors"
    GradingSpace.fit(torch.randn(20, cfg.z_dim).abs(), torch.arange(20) % 5, 5, 0.9).save(space)
    data = dataset(2 * STEPS, cfg.resolution)
    batches = [{k: v.unsqueeze(0) if torch.is_tensor(v) else [v] for k, v in data[i].items()} for i in range(2 * STEPS)]

    def trainer(out: str) -> GanTrainer:
        return GanTrainer(GanOptions(out=str(tmp / out), grading_space=str(space), preset=PRESET, stage="global",
                                     perceptual="none", batch=1, precision=precision, channels_last=True, device=device,
                                     kernel_impl="ref"), data)

    def draw() -> torch.Tensor:
        return torch.randn(64, device=device)

    full = trainer("resume-full")
    _train(full, batches, range(STEPS))
    at_checkpoint = _params(full)
    draw()
    _train(full, batches, range(STEPS, 2 * STEPS))
    expected = draw()

    half = trainer("resume-half")
    _train(half, batches, range(STEPS))
    draw()
    half.save_checkpoint()
    del half
    resumed = GanTrainer(GanOptions(resume=str(tmp / "resume-half")), data)
    step = resumed.step
    _train(resumed, batches, range(STEPS, 2 * STEPS))
    rng_restored = bool(torch.equal(draw(), expected))
    off = (_params(resumed) - _params(full)).abs().mean().item()
    moved = (_params(full) - at_checkpoint).abs().mean().item()
    return {"preset": PRESET, "steps": f"{STEPS}+{STEPS}", "precision": precision, "resumed_at_step": step,
            "rng_restored": rng_restored, "weights_mean_abs_diff": off, "last_steps_moved_mean_abs": moved,
            "pass": step == STEPS and rng_restored and moved > 0 and off * CLOSER <= moved}
