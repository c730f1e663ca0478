"""The exported generator's runtimes, opened for the synthesis runner (whose loaders,
drgan.synthesis.backend.load_onnxruntime|load_tensorrt|load_aoti, are the only callers; the one list
of backend names is drgan.synthesis.registry):

    runtime = open_tensorrt(run / "export", run, weights, device="cuda", precision="fp16", batch=8)
    image, grade_logits = runtime(cond, z, noise)     # noise: list of tensors, coarse to fine

"onnxruntime" (EXPORT/generator.onnx; the CUDA execution provider with onnxruntime-gpu, the CPU
otherwise, whatever `device` says), "tensorrt" (EXPORT/generator_<precision>.engine), "aoti"
(EXPORT/generator_<device>_<precision>.pt2). Each file must come from the run's current generator:
export.json records per file the generator's drgan.checkpoint.weights_sha256, and `weights` is that
hash of the generator synthesis loaded. Inputs are float32 tensors on any device; outputs are
float32 on `runtime.device`. TensorRT engines, AOTInductor packages and the TensorRT plugin library
run native code when loaded: load only ones you built or trust; the plugin library is loaded only
when the caller names it (`trt_plugin`), never from a path the export records.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from drgan.errors import DrganError, ParameterError
from drgan.runs import generator_weights, read_run

if TYPE_CHECKING:
    from drgan.export.aoti import AotiGenerator
    from drgan.export.ort_runner import OrtGenerator
    from drgan.export.trt_runner import TrtGenerator

MANIFEST = "export.json"
ONNX_FILE = "generator.onnx"
TRT_ONNX_FILE = "generator_trt.onnx"


def engine_file(precision: str) -> str:
    return f"generator_{precision}.engine"


def aoti_file(device: str, precision: str) -> str:
    return f"generator_{torch.device(device).type}_{precision}.pt2"


def open_onnxruntime(folder: Path, run: str | Path, weights: str, device: str, precision: str, batch: int | None) -> OrtGenerator:
    from drgan.export.ort_runner import OrtGenerator, has_cuda_provider
    from drgan.export.wrapper import check_cpu_attention_memory

    if precision != "fp32":
        raise ParameterError("{backend} onnxruntime runs the fp32 ONNX file; use {precision} fp32")
    _check_current(folder, ONNX_FILE, run, weights, "--onnx")
    # Without onnxruntime-gpu the session runs on the CPU; outputs are then CPU tensors.
    device = device if has_cuda_provider() else "cpu"
    if device == "cpu":
        check_cpu_attention_memory(read_run(run).cfg, batch or 1, "ONNX Runtime",
                                   "install onnxruntime-gpu for a GPU or use {backend} torch")
    return OrtGenerator(folder / ONNX_FILE, device)


def open_tensorrt(folder: Path, run: str | Path, weights: str, device: str, precision: str, batch: int | None,
                  trt_plugin: str | Path | None = None) -> TrtGenerator:
    """`trt_plugin`: the plugin library an engine built with it needs, as the user named it."""
    from drgan.export.trt_build import import_tensorrt
    from drgan.export.trt_runner import TrtGenerator

    import_tensorrt()  # first: the export an absent engine asks for needs TensorRT too
    _check_current(folder, engine_file(precision), run, weights, f"--trt --precision {precision}")
    return _check_batch(TrtGenerator(folder / engine_file(precision), device, plugin_library=trt_plugin), batch)


def open_aoti(folder: Path, run: str | Path, weights: str, device: str, precision: str, batch: int | None) -> AotiGenerator:
    from drgan.export.aoti import AotiGenerator

    _check_current(folder, aoti_file(device, precision), run, weights,
                   f"--aoti --device {torch.device(device).type} --precision {precision}")
    return _check_batch(AotiGenerator(folder / aoti_file(device, precision), device), batch)


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


def _check_current(folder: Path, file: str, run: str | Path, weights: str, export_flags: str) -> None:
    """`export_flags`: what `drgan-export` needs to write `file` (the hint of a missing or stale one)."""
    entry = read_manifest(folder)["files"].get(file)
    hint = f"run drgan-export --run {run} --out {folder} {export_flags}"
    if entry is None or not (folder / file).is_file():
        raise DrganError(f"{folder / file}: not exported yet: {hint}")
    if entry.get("weights_sha256") != weights:
        raise DrganError(f"{folder / file}: exported from other weights than {generator_weights(run)} "
                         f"(or by a drgan that hashed the weights file): {hint}")
