"""Generator backends by name. The CLI lists the names at startup, before torch is imported, so
each name maps to the 'module:function' of its loader, imported when the backend is chosen:

    loader(run, size, device, precision, batch, trt_plugin) -> drgan.synthesis.backend.LoadedBackend

(the torch loader also takes fp8_attention=True).

This is the one list of backends: a new backend is its loader and its line here (an exported one
also its opener in drgan.export.backends)."""
from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from drgan.errors import ParameterError, UsageError

if TYPE_CHECKING:
    import torch

    from drgan.synthesis.backend import LoadedBackend

BACKENDS: dict[str, str] = {
    "torch": "drgan.synthesis.backend:load_torch",
    "onnxruntime": "drgan.synthesis.backend:load_onnxruntime",   # the runtimes of drgan.export.backends
    "tensorrt": "drgan.synthesis.backend:load_tensorrt",
    "aoti": "drgan.synthesis.backend:load_aoti",
    "null": "drgan.synthesis.backend:load_null",
}


def make_backend(
    name: str, run: str | Path | None, size: int, device: torch.device, precision: str, batch: int,
    trt_plugin: str | Path | None = None, fp8_attention: bool = False,
) -> LoadedBackend:
    """The backend of the run folder's generator (run None: only the null backend); `trt_plugin`:
    the TensorRT plugin library the user named (tensorrt only); `fp8_attention`: the spatial
    attention's P@V in float8 (torch only)."""
    if name not in BACKENDS:
        raise ParameterError(f"{{backend}} {name!r}: choose one of {', '.join(BACKENDS)}")
    if trt_plugin is not None and name != "tensorrt":
        raise UsageError(f"{{trt_plugin}} applies to {{backend}} tensorrt, not {name}")
    if fp8_attention and name != "torch":
        raise UsageError(f"{{fp8_attention}} applies to {{backend}} torch, not {name}")
    module, function = BACKENDS[name].split(":")
    extra = {"fp8_attention": True} if fp8_attention else {}
    return getattr(import_module(module), function)(run, size, device, precision, batch, trt_plugin, **extra)
