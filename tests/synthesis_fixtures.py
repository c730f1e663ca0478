"""A run folder with untrained weights and a grading space: enough to drive the runner (tests and
the synthesis benchmarks; speed does not depend on training)."""
from pathlib import Path

import torch

from drgan.checkpoint import save_module
from drgan.runs import write_run_config
from drgan.config import preset
from drgan.grading_space import GradingSpace
from drgan.nn import DRGANGenerator


def make_run(run: Path, stage: str = "local", preset_name: str = "tiny-64") -> Path:
    cfg = preset(preset_name)
    write_run_config(run, cfg, stage)
    torch.manual_seed(0)
    save_module(DRGANGenerator(cfg, stage), run / "G_ema.safetensors")
    GradingSpace(torch.rand(5, cfg.z_dim) * 2, torch.rand(5, cfg.z_dim) * 0.1, 0.9).save(run / "grading_space.safetensors")
    return run
