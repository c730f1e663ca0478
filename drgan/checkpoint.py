"""Checkpoints: safetensors weights plus JSON. Loading one never executes code.

A run folder (`--out RUN` of the train commands, `--checkpoint RUN` elsewhere) holds:

    RUN/run.json                  {"model": ModelConfig, "stage": "global"|"local", "options": {...}}
    RUN/G.safetensors             generator weights
    RUN/G_ema.safetensors         exponential moving average of G (what synthesis uses)
    RUN/D.safetensors             discriminator weights
    RUN/grading_space.safetensors grading spaces (copied in by the GAN run)
    RUN/state.json + state.safetensors   training state (step, epoch, optimizer, scaler, RNG)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from drgan.config import ModelConfig, STAGES
from drgan.errors import DrganError

if TYPE_CHECKING:
    from drgan.nn import DRGANGenerator

RUN_FILE = "run.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temp file and rename, so a killed process never leaves a truncated file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise DrganError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DrganError(f"{path}: not a readable safetensors file ({exc})") from None


def save_module(module: nn.Module, path: str | Path) -> None:
    save_tensors(module.state_dict(), path)


def load_module(module: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load weights into `module`; a shape or name mismatch is one clear error naming the file."""
    state = load_tensors(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if wrong or (strict and (missing or unexpected)):
        detail = "; ".join(
            part for part in (
                f"shape mismatch: {', '.join(wrong[:3])}" if wrong else "",
                f"missing: {', '.join(missing[:3])}" if strict and missing else "",
                f"unexpected: {', '.join(unexpected[:3])}" if strict and unexpected else "",
            ) if part
        )
        raise DrganError(f"{path}: weights do not match the model (wrong preset or stage?): {detail}")
    module.load_state_dict(state, strict=False)
    return module


def write_run_config(run: str | Path, cfg: ModelConfig, stage: str, options: dict[str, Any] | None = None) -> None:
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    data = {"model": cfg.to_dict(), "stage": stage, "options": options or {}}
    atomic_write_bytes(run / RUN_FILE, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_run_config(run: str | Path) -> tuple[ModelConfig, str, dict[str, Any]]:
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise DrganError(f"{run}: not a drgan run folder (no {RUN_FILE})")
    try:
        data = json.loads(path.read_text())
        cfg, stage, options = ModelConfig.from_dict(data["model"]), data["stage"], data.get("options", {})
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DrganError(f"{path}: malformed run config ({exc})") from None
    if stage not in STAGES:
        raise DrganError(f"{path}: unknown stage {stage!r}")
    return cfg, stage, options


def load_generator(run: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> "DRGANGenerator":
    """The generator of a run folder, in eval mode (EMA weights unless ema=False)."""
    from drgan.nn import DRGANGenerator

    cfg, stage, _ = read_run_config(run)
    g = DRGANGenerator(cfg, stage)
    name = "G_ema.safetensors" if ema and (Path(run) / "G_ema.safetensors").is_file() else "G.safetensors"
    load_module(g, Path(run) / name)
    return g.to(device).eval()
