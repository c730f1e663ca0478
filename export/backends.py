"""Generator backends for the synthesis runner, one call signature for every runtime.

    backend = make_backend("tensorrt", "runs/paper", device="cuda", precision="fp16")
    image, grade_logits = backend(cond, z, noise)     # noise: list of tensors, coarse to fine

Names (the openers registered below with `_runtime`; drgan.synthesis.registry lists them for the
CLI): "onnxruntime" (EXPORT/generator.onnx; the CUDA
execution provider with onnxruntime-gpu, the CPU otherwise, whatever `device` says), "tensorrt"
(EXPORT/generator_<precision>.engine), "aoti" (EXPORT/generator_<device>_<precision>.pt2); the eager PyTorch backend is the synthesis
runner's own (drgan.synthesis.backend). EXPORT is the run's `export/` folder unless
`export_dir` says otherwise; each file must come from the run's current weights (export.json records
the weights' hash per file). TensorRT engines, AOTInductor packages and the TensorRT plugin library
run native code when loaded: load only ones you built or trust.
Inputs are float32 tensors on any device; outputs are float32 on `backend.device`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol

import torch

from drgan.io import sha256_file
from drgan.runs import generator_weights, read_run_config
from drgan.errors import DrganError, ParameterError
from drgan.runtime import PRECISIONS

MANIFEST = "export.json"
ONNX_FILE = "generator.onnx"
TRT_ONNX_FILE = "generator_trt.onnx"


def engine_file(precision: str) -> str:
    return f"generator_{precision}.engine"


def aoti_file(device: str, precision: str) -> str:
    return f"generator_{torch.device(device).type}_{precision}.pt2"


class GeneratorBackend(Protocol):
    name: str
    device: torch.device

    def __call__(
        self, cond: torch.Tensor, z: torch.Tensor, noise: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cond (B, 8, R, R), z (B, z_dim), noise per block -> image (B, 3, R, R), grade logits (B, 5)."""
        ...


def weights_file(run: str | Path) -> Path:
    """The weights load_generator reads: the EMA copy when the run has one."""
    return generator_weights(run)


def weights_digest(run: str | Path) -> str:
    return sha256_file(weights_file(run))


Opener = Callable[[Path, str | Path, str, str, int | None, str | Path | None], GeneratorBackend]
_RUNTIMES: dict[str, Opener] = {}


def _runtime(name: str) -> Callable[[Opener], Opener]:
    """Registers opener(folder, run, device, precision, batch, trt_plugin) as backend `name` (the
    export folder is resolved and the run, name and precision checked before it is called)."""
    def register(opener: Opener) -> Opener:
        _RUNTIMES[name] = opener
        return opener
    return register


def make_backend(
    name: str,
    run: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    export_dir: str | Path | None = None,
    batch: int | None = None,
    trt_plugin: str | Path | None = None,
) -> GeneratorBackend:
    """The generator of `run` behind backend `name` on `device` at `precision`; `batch`, when
    given, is checked against the batch range the engine or package was built for. `trt_plugin`:
    the plugin library an engine built with it needs (tensorrt only; never read from the export)."""
    device = str(device)
    if name not in _RUNTIMES:
        raise ParameterError(f"{{backend}} {name!r} is not one of {', '.join(_RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ParameterError(f"{{precision}} {precision!r} is not one of {', '.join(PRECISIONS)}")
    if trt_plugin is not None and name != "tensorrt":
        raise ParameterError(f"{{trt_plugin}} applies to {{backend}} tensorrt, not {name}")
    read_run_config(run)  # a clear error when it is not a run folder
    folder = Path(export_dir) if export_dir else Path(run) / "export"
    return _RUNTIMES[name](folder, run, device, precision, batch, trt_plugin)


@_runtime("onnxruntime")
def _open_onnxruntime(folder: Path, run: str | Path, device: str, precision: str, batch: int | None,
                      trt_plugin: None) -> GeneratorBackend:
    from drgan.export.ort_runner import OrtGenerator, has_cuda_provider
    from drgan.export.wrapper import check_cpu_attention_memory

    if precision != "fp32":
        raise ParameterError("{backend} onnxruntime runs the fp32 ONNX file; use {precision} fp32")
    _check_current(folder, ONNX_FILE, run, "--onnx")
    # Without onnxruntime-gpu the session runs on the CPU; outputs are then CPU tensors.
    device = device if has_cuda_provider() else "cpu"
    if device == "cpu":
        check_cpu_attention_memory(read_run_config(run)[0], batch or 1, "ONNX Runtime",
                                   "install onnxruntime-gpu for a GPU or synthesize with --backend torch")
    return OrtGenerator(folder / ONNX_FILE, device)


@_runtime("tensorrt")
def _open_tensorrt(folder: Path, run: str | Path, device: str, precision: str, batch: int | None,
                   trt_plugin: str | Path | None) -> GeneratorBackend:
    from drgan.export.trt_runner import TrtGenerator

    _check_current(folder, engine_file(precision), run, f"--trt --precision {precision}")
    return _check_batch(TrtGenerator(folder / engine_file(precision), device, plugin_library=trt_plugin), batch)


@_runtime("aoti")
def _open_aoti(folder: Path, run: str | Path, device: str, precision: str, batch: int | None,
               trt_plugin: None) -> GeneratorBackend:
    from drgan.export.aoti import AotiGenerator

    _check_current(folder, aoti_file(device, precision), run,
                   f"--aoti --device {torch.device(device).type} --precision {precision}")
    return _check_batch(AotiGenerator(folder / aoti_file(device, precision)), batch)


def _check_batch(runner, batch: int | None):
    lo, hi = runner.sidecar["batch"]["min"], runner.sidecar["batch"]["max"]
    if batch is not None and not lo <= batch <= hi:
        raise ParameterError(f"{{batch}} {batch}: the {runner.name} export takes batches {lo}..{hi}; "
                         f"re-run drgan-export with --batch {batch} or --max-batch {batch}")
    return runner


def read_manifest(folder: Path) -> dict:
    """EXPORT/export.json: {"run": ..., "files": {file name: {"weights_sha256": ..., ...}}}."""
    path = folder / MANIFEST
    if not path.is_file():
        return {"files": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DrganError(f"{path}: malformed export manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise DrganError(f"{path}: malformed export manifest (no 'files' table)")
    return data


def _check_current(folder: Path, file: str, run: str | Path, export_flags: str) -> None:
    """`export_flags`: what `drgan-export` needs to write `file` (the hint of a missing or stale one)."""
    entry = read_manifest(folder)["files"].get(file)
    hint = f"run drgan-export --run {run} --out {folder} {export_flags}"
    if entry is None or not (folder / file).is_file():
        raise DrganError(f"{folder / file}: not exported yet: {hint}")
    if entry.get("weights_sha256") != weights_digest(run):
        raise DrganError(f"{folder / file}: exported from other weights than {weights_file(run)}: {hint}")
