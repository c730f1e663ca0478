"""Run folders with untrained weights for timing the runner (speed does not depend on training)."""
from pathlib import Path

import torch

from drgan.checkpoint import save_module, write_run_config
from drgan.config import preset
from drgan.grading_space import GradingSpace
from drgan.nn import DRGANGenerator


def untrained_run(run: Path, preset_name: str) -> Path:
    cfg = preset(preset_name)
    write_run_config(run, cfg, "local")
    torch.manual_seed(0)
    save_module(DRGANGenerator(cfg, "local"), run / "G_ema.safetensors")
    GradingSpace(torch.rand(5, cfg.z_dim), torch.rand(5, cfg.z_dim) * 0.1, 0.9).save(run / "grading_space.safetensors")
    return run
