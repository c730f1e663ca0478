"""Training-step time at small-256 on CPU: fp32 vs bf16 autocast, channels_last on and off.

    python -m pytest bench/test_train_bench.py --benchmark-json=bench/results/train.json
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from training_fixtures import PhantomSet  # noqa: E402

from drgan.config import preset  # noqa: E402
from drgan.grading_space import GradingSpace  # noqa: E402
from drgan.training.gan import GanTrainer  # noqa: E402
from drgan.training.options import GanOptions  # noqa: E402

CFG = preset("small-256")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stage", ["global"])
def test_train_step_small256(benchmark, tmp_path, stage, precision, channels_last):
    torch.set_num_threads(2)
    space = tmp_path / "space.safetensors"
    GradingSpace.fit(torch.randn(20, CFG.z_dim).abs(), torch.arange(20) % 5, 5, 0.9).save(space)
    data = PhantomSet(2, size=256)
    opts = GanOptions(out=str(tmp_path / "run"), grading_space=str(space), preset="small-256", stage=stage, perceptual="none",
                      batch=2, precision=precision, channels_last=channels_last)
    trainer = GanTrainer(opts, data)
    batch = next(iter(DataLoader(data, batch_size=2)))
    steps = iter(range(10**6))
    trainer.train_step(batch, next(steps))  # warm-up
    benchmark.extra_info.update(stage=stage, precision=precision, channels_last=channels_last, batch=2, preset="small-256",
                                threads=torch.get_num_threads())
    benchmark.pedantic(lambda: trainer.train_step(batch, next(steps)), rounds=2, iterations=1)
