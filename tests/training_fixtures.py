"""Phantom retinas as a training set and a small grading space: what the training, run-folder and
DDP tests (and the training benchmark) feed the trainers."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from drgan.config import COND_CHANNELS, preset
from drgan.data.phantom import render_phantom
from drgan.grading_space import GradingSpace
from drgan.training.options import GanOptions


@functools.lru_cache(maxsize=None)
def _render(size: int, grade: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ph = render_phantom(size, grade, seed)
    image = torch.from_numpy(ph.image).permute(2, 0, 1).float() / 127.5 - 1
    cond = torch.from_numpy(np.stack([ph.masks[k] for k in COND_CHANNELS])).float() / 255
    return image, cond


class PhantomSet(Dataset):
    """Phantom retinas in memory, items as FundusDataset's (grades round-robin)."""

    def __init__(self, count: int, size: int = 64, seed: int = 0) -> None:
        self.items = [(i, i % 5, seed * 1000 + i) for i in range(count)]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        i, grade, seed = self.items[index]
        image, cond = _render(self.size, grade, seed)
        return {"id": f"p{i}", "image": image, "cond": cond, "grade": torch.tensor(grade)}


def write_space(path: Path, seed: int = 0) -> Path:
    """A grading space of the tiny preset's size with well separated grade means."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(50, preset("tiny-64").z_dim, generator=gen) + torch.arange(50)[:, None] % 5
    GradingSpace.fit(feats.abs(), torch.arange(50) % 5, 5, 0.9).save(path)
    return path


def options(tmp_path: Path, space: Path, **kw) -> GanOptions:
    """Options of a short tiny-64 GAN run in tmp_path/run on phantoms: batch 2, no perceptual
    network, a log line every step, samples and checkpoints only when asked; `kw` overrides."""
    base = dict(out=str(tmp_path / "run"), grading_space=str(space), preset="tiny-64", perceptual="none", batch=2, log_every=1,
                sample_every=1000, checkpoint_every=1000, epochs=5)
    base.update(kw)
    return GanOptions(**base)
