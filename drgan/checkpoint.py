"""Checkpoints: safetensors weights. Loading one never executes code (run folders: drgan.runs)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from drgan.errors import DrganError, name_list
from drgan.io import atomic_write_bytes
from drgan.runs import generator_weights, require_kind

if TYPE_CHECKING:
    from drgan.nn import DRGANGenerator


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    # safetensors' own save_file writes through a temp file of its own (.tmpXXXXXX beside the target)
    # that a SIGKILL leaves behind, unnamed for drgan.io's cleanup: serialize here, write through drgan.io.
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(cpu, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise DrganError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DrganError(f"{path}: not a readable safetensors file ({exc})") from None


def load_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file, from its header alone (no tensor is read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DrganError(f"{path}: file not found")
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DrganError(f"{path}: not a readable safetensors file ({exc})") from None


def save_module(module: nn.Module, path: str | Path) -> None:
    save_tensors(module.state_dict(), path)


def weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, from its header alone (no tensor is read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DrganError(f"{path}: file not found")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DrganError(f"{path}: not a readable safetensors file ({exc})") from None


def _check_shapes(path: Path, own: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], strict: bool) -> None:
    """One clear error naming the file when the weights' names or shapes are not the model's."""
    missing = [k for k in own if k not in found]
    unexpected = [k for k in found if k not in own]
    wrong = [f"{k} {found[k]} vs {v}" for k, v in own.items() if k in found and found[k] != v]
    if wrong or (strict and (missing or unexpected)):
        detail = "; ".join(
            part for part in (
                f"shape mismatch: {name_list(wrong)}" if wrong else "",
                f"missing: {name_list(missing)}" if strict and missing else "",
                f"unexpected: {name_list(unexpected)}" if strict and unexpected else "",
            ) if part
        )
        raise DrganError(f"{path}: weights do not match the model (wrong preset or stage?): {detail}")


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_module(module: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load weights into `module`; a shape or name mismatch is one clear error naming the file."""
    state = load_tensors(path)
    _check_shapes(Path(path), _shapes(module), {k: tuple(v.shape) for k, v in state.items()}, strict)
    module.load_state_dict(state, strict=False)
    return module


def build_loaded(build: Callable[[], nn.Module], path: str | Path, strict: bool = True) -> nn.Module:
    """`build()` with the weights at `path` loaded. The model is first built on the meta device (no
    memory) and compared with the file's header, so a run.json that does not describe its weights
    is one error before any allocation, not a model of the wrong size built and then refused."""
    with torch.device("meta"):
        own = _shapes(build())
    _check_shapes(Path(path), own, weight_shapes(path), strict)
    return load_module(build(), path, strict)


def load_generator(run: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> "DRGANGenerator":
    """The generator of a run folder, in eval mode (EMA weights unless ema=False)."""
    from drgan.nn import DRGANGenerator

    info = require_kind(run, "gan", "run")  # a grader run is named as such, not as a missing G.safetensors
    g = build_loaded(lambda: DRGANGenerator(info.cfg, info.stage), generator_weights(run, ema))
    return g.to(device).eval()


def weights_sha256(module: nn.Module) -> str:
    """Hash of a module's parameters and buffers (names, dtypes, shapes and bytes): what names a
    generator in a set's fingerprint and in export.json, whatever file it was read from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
