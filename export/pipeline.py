"""The export of a run's generator: ONNX (checked with ONNX Runtime), TensorRT engines, AOTInductor packages.

    manifest = export_run("runs/paper", options=ExportOptions(aoti=True, precision="bf16", device="cuda"))

Files written to OUT (default RUN/export), described in OUT/export.json (the returned manifest):
    generator.onnx (+ .data)             fp32, dynamic batch, opset 23 (`Attention` per SCA block)
    generator_trt.onnx (+ .data)         the same with Q/K zero-padded for TensorRT's fused attention
    generator_trt_plugin.onnx (+ .data)  with trt_plugin: each attention a drgan::DrganSpatialAttention node
    generator_<precision>.engine (+ .json)      TensorRT engine and its sidecar; timing.cache beside it
    generator_<device>_<precision>.pt2 (+ .json) AOTInductor package and its sidecar
Every artifact is checked against the eager fp32 generator before it is recorded.
"""
from __future__ import annotations

import importlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from drgan import locks
from drgan.checkpoint import load_generator, weights_sha256
from drgan.errors import DrganError, ParameterError, UsageError
from drgan.export.aoti import compile_aoti, run_in_fresh_process
from drgan.export.backends import MANIFEST, ONNX_FILE, TRT_ONNX_FILE, aoti_file, engine_file, read_manifest
from drgan.export.onnx_export import check_opset, export_onnx
from drgan.export.onnx_files import data_path
from drgan.export.ort_runner import verify_onnx
from drgan.export.sidecar import BatchProfile, sidecar_path
from drgan.export.trt_build import build_engine, import_tensorrt, mark_attention_decomposable
from drgan.export.trt_runner import TrtGenerator
from drgan.export.wrapper import OUTPUT_NAMES, attention_flops, example_inputs, input_shapes, output_shapes, pad_attention_qk, prepare
from drgan.io import atomic_write_json, check_writable_dir, remove_temp_files
from drgan.nn import DRGANGenerator
from drgan.runs import generator_weights, require_kind
from drgan.runtime import current_gpu, resolve_device


@dataclass(frozen=True)
class ExportOptions:
    """What to write and how; checked on construction (the `{name}` fields of an error are these names)."""

    onnx: bool = True                       # the fp32 ONNX file, checked with ONNX Runtime
    trt: bool = False                       # a TensorRT engine (needs TensorRT and a GPU)
    aoti: bool = False                      # an AOTInductor .pt2 package
    precision: str = "fp32"                 # engine/package precision: 'fp32' | 'fp16' | 'bf16'
    opset: int = 23                         # ONNX opset, 23 (the Attention op) to 25 (the exporter's newest)
    device: str = "auto"                    # device of the package: auto (cuda if available), cpu, cuda, cuda:N
    external_data: bool | None = None       # ONNX weights in a .data file; None: automatic above 1 GB
    pad_qk: bool = True                     # TensorRT: zero-pad Q/K to V's width for its fused attention
    trt_plugin: str | Path | None = None    # TensorRT: libdrgan_trt_plugin.so runs each attention instead
    opt_level: int | None = None            # TensorRT builder optimization level; None: its default, 3
    timing_cache: str | Path | None = None  # TensorRT timing cache to reuse and update; None: OUT/timing.cache

    def __post_init__(self) -> None:
        if self.trt:
            import_tensorrt()  # first: a missing TensorRT stops before any work
        if not (self.onnx or self.trt or self.aoti):
            raise ParameterError("nothing to export: name one of {onnx}, {trt}, {aoti}")
        # An option the outputs asked for would ignore, or one that needs another: usage errors.
        if self.precision != "fp32" and not (self.trt or self.aoti):
            raise UsageError(f"{{precision}} {self.precision} applies to {{trt}} and {{aoti}}; the ONNX file is always fp32")
        if not self.trt and (self.opt_level is not None or self.timing_cache is not None or self.trt_plugin is not None):
            raise UsageError("{opt_level}, {timing_cache} and {trt_plugin} configure the TensorRT build: add {trt}")
        if not self.pad_qk and not self.trt:
            raise UsageError("{no_pad_qk} configures the TensorRT build: add {trt}")
        if self.trt_plugin is not None and self.precision == "fp32":
            raise UsageError("{trt_plugin} runs the fp16/bf16 kernels: add {precision} fp16 or {precision} bf16")
        if self.device != "auto" and not self.aoti:  # an engine is built on the current GPU, the ONNX file for none
            raise UsageError(f"{{device}} {self.device} is the device of the AOTInductor package: add {{aoti}}")
        if self.external_data and not (self.onnx or self.trt):  # an engine is built from an ONNX file it writes
            raise UsageError("{external_data} applies to ONNX files; {aoti} alone writes none: add {onnx}")


def export_run(
    run: str | Path,
    out: str | Path | None = None,
    options: ExportOptions = ExportOptions(),
    profile: BatchProfile = BatchProfile(1, 4, 16),
    stage: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write, check and record the artifacts `options` asks for; returns the manifest (OUT/export.json).

    `profile` is the batch range of engines and packages; `stage`, when given, must be the run's."""
    device = str(resolve_device(options.device))
    if options.trt and not torch.cuda.is_available():
        raise ParameterError("{trt} needs a CUDA GPU: TensorRT builds its engine for the GPU it runs on")
    check_opset(options.opset)  # before OUT is created
    # Loaded whole now: torch.export imports it lazily, and an interrupt in the middle of that import
    # reached torch's own handler as an AttributeError of the half-loaded module (a traceback, exit 1).
    # (By module name: `import torch._dynamo` here would make `torch` a local name of this function,
    # unbound at the GPU check above.)
    importlib.import_module("torch._dynamo")
    run = Path(run)
    require_kind(run, "gan", "run")  # before the first status line: a folder that is no run is one error line
    out = Path(out) if out else run / "export"
    check_writable_dir(out)  # before the export's minutes of work
    _check_out(out)
    created, exporter = not out.exists(), None
    try:
        exporter = _Exporter(run, out, stage, log)
        with current_gpu(device):  # the eager reference's Triton kernels launch on the current GPU
            exporter.write(options, profile, device)
    except BaseException:
        # Nothing exported into the folder this process created and held: leave none behind. (A
        # process refused by another's lock never gets an exporter, so it never removes theirs.)
        if created and exporter is not None and not exporter.manifest["files"]:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        locks.release(out)
    return exporter.manifest


def _check_out(out: Path) -> None:
    """OUT is new, empty or an earlier export (it holds export.json, written when an export
    starts): a folder of other files, whose generator.onnx would be replaced and its .data
    deleted, is refused as `drgan train --out` refuses a folder that is not its run."""
    # A killed export leaves its lock file and temp files: those are drgan's, not the user's.
    if out.is_dir() and not locks.only_locks_and_temps(out) and not (out / MANIFEST).is_file():
        raise ParameterError(f"{{out}} {out}: folder not empty and not a drgan export (no {MANIFEST}); "
                             "choose a new or empty folder")


class _Exporter:
    """Writes the requested artifacts, checks each, and keeps OUT/export.json up to date."""

    def __init__(self, run: Path, out: Path, stage: str | None, log: Callable[[str], None]) -> None:
        self.start, self.log = time.perf_counter(), log
        self.out = out
        self.status(f"loading {run}")
        self.generator = _load_stage(run, stage)
        self.sha = weights_sha256(self.generator)  # the hash synthesis checks (drgan.export.backends)
        locks.hold(out)  # creates OUT; a second export into it is refused
        _check_out(out)  # again: another process may have written into it meanwhile
        remove_temp_files(out, recursive=False)  # left by a killed export
        self.manifest = {
            "run": str(run.resolve()),
            "weights": str(generator_weights(run).name),
            "files": read_manifest(out)["files"],
        }
        self.written: list[Path] = []
        if not (out / MANIFEST).is_file():
            self.write_manifest()  # marks OUT as an export now: a rerun after a failure is accepted

    def status(self, message: str) -> None:
        self.log(f"[{time.perf_counter() - self.start:6.1f}s] {message}")

    def write(self, options: ExportOptions, profile: BatchProfile, device: str) -> None:
        g = self.generator
        self.status(f"generator: {g.stage} stage, {g.resolution} px, "
                    f"{sum(p.numel() for p in g.parameters()) / 1e6:.1f} M parameters")
        if options.onnx:
            self.onnx(ONNX_FILE, options.opset, options.external_data, pad_qk=None)
        opt_level = 3 if options.opt_level is None else options.opt_level
        if options.trt and options.trt_plugin:
            from drgan.export.onnx_plugin import ONNX_FILE as PLUGIN_ONNX_FILE  # needs onnx: only on this path

            self.plugin_onnx(PLUGIN_ONNX_FILE, options.opset, options.external_data, options.precision)
            self.trt(PLUGIN_ONNX_FILE, engine_file(options.precision), profile, options.precision, opt_level,
                     options.timing_cache, plugin_library=options.trt_plugin)
        elif options.trt:
            onnx_file = TRT_ONNX_FILE if options.pad_qk else ONNX_FILE
            if options.pad_qk or not options.onnx:
                self.onnx(onnx_file, options.opset, options.external_data, pad_qk="v" if options.pad_qk else None)
            self.trt(onnx_file, engine_file(options.precision), profile, options.precision, opt_level, options.timing_cache)
        if options.aoti:
            self.aoti(aoti_file(device, options.precision), profile, device, options.precision)
        self.save_manifest()
        self.log(f"wrote {len(self.written)} file(s) to {self.out}:")
        for path in self.written:
            self.log(f"  {path.name:<40} {path.stat().st_size / 1e6:10.1f} MB")

    def onnx(self, name: str, opset: int, external_data: bool | None, pad_qk: str | None) -> None:
        from drgan.export.onnx_check import check_graph  # needs onnx: not for an engine or package alone

        path = self.out / name
        padded = " (Q/K zero-padded to V's width)" if pad_qk else ""
        self.status(f"ONNX opset {opset}{padded}: exporting {path.name}")
        if pad_qk:
            plain = attention_flops(self.generator)
            wide = attention_flops(pad_attention_qk(prepare(self.generator).generator))
            self.status(f"  padding Q/K raises the attention cost from {plain / 1e9:.1f} to {wide / 1e9:.1f} GFLOP per image")
        checks = {}

        def check(file: Path) -> None:  # before the file replaces an earlier export's
            checks["graph"] = check_graph(file, expected_attention=len(self.generator.global_gen.synth))
            self.status(f"  graph check passed: {checks['graph'].summary()}")
            self.status("  ONNX Runtime vs PyTorch (fp32)")
            checks["onnxruntime"] = verify_onnx(file, self.generator)
            for c in checks["onnxruntime"]:
                self.status(f"    {c.line()}")
            if pad_qk:  # the file TensorRT alone reads
                mark_attention_decomposable(file)

        export_onnx(self.generator, path, opset=opset, pad_qk=pad_qk, external_data=external_data, check=check)
        report, comparisons = checks["graph"], checks["onnxruntime"]
        self.record(path, {"opset": opset, "qk_padded": bool(pad_qk), "op_counts": report.op_counts,
                           "onnxruntime_check": [c.line() for c in comparisons]})
        if data_path(path).is_file():
            self.written.append(data_path(path))

    def plugin_onnx(self, name: str, opset: int, external_data: bool | None, precision: str) -> None:
        from drgan.export.onnx_plugin import OP_TYPE, check_plugin_graph, convert_file

        path = self.out / name
        self.status(f"ONNX opset {opset} with {OP_TYPE} plugin nodes: exporting {path.name}")
        export_onnx(self.generator, path, opset=opset, external_data=external_data)
        convert_file(path, path, precision=precision)  # the plugin runs fp16/bf16 (--trt-plugin needs one)
        counts = check_plugin_graph(path, expected=len(self.generator.global_gen.synth))
        self.status(f"  graph check passed: {counts[OP_TYPE]} {OP_TYPE} nodes (ONNX Runtime cannot run them; "
                    "the engine is compared with PyTorch instead)")
        self.record(path, {"opset": opset, "trt_plugin": True, "op_counts": counts})
        if data_path(path).is_file():
            self.written.append(data_path(path))

    def trt(self, onnx_name: str, name: str, profile: BatchProfile, precision: str, opt_level: int,
            timing_cache: str | Path | None, plugin_library: str | Path | None = None) -> None:
        path = self.out / name
        cache = Path(timing_cache) if timing_cache else self.out / "timing.cache"
        self.unlist(path)
        self.status(f"TensorRT {precision} engine, batch {profile.min}/{profile.opt}/{profile.max}, "
                    f"optimization level {opt_level}: building {path.name} (minutes)")
        build_engine(self.out / onnx_name, path, self.generator, profile, precision, cache, opt_level, plugin_library)
        try:
            engine = TrtGenerator(path, plugin_library=plugin_library)
            diff = self.compare(lambda inputs: engine(inputs[0], inputs[1], list(inputs[2:])), engine.device, profile.min)
            _check_difference(path, "the TensorRT engine", diff, precision, TRT_FP32_TOLERANCE)
        except BaseException:  # failed or interrupted: an engine not checked is not left to be used
            for stale in (path, sidecar_path(path)):
                stale.unlink(missing_ok=True)
            raise
        self.status(f"  engine loaded; max abs diff vs PyTorch fp32 at batch {profile.min}: {diff:.2e}")
        self.record(path, {"precision": precision, "onnx": onnx_name, "max_abs_diff_vs_torch": diff})
        self.written += [sidecar_path(path), cache]

    def aoti(self, name: str, profile: BatchProfile, device: str, precision: str) -> None:
        path = self.out / name
        shape = f"batch {profile.min}" if profile.fixed else f"batch {profile.min}..{profile.max}"
        self.unlist(path)
        self.status(f"AOTInductor {device} {precision}, {shape}: compiling {path.name} (minutes)")
        compile_aoti(self.generator, path, profile, device, precision)
        try:
            diff = self.compare(lambda inputs: run_in_fresh_process(path, inputs), torch.device(device), profile.min)
            _check_difference(path, "the AOTInductor package", diff, precision, AOTI_FP32_TOLERANCE)
        except BaseException:  # failed or interrupted: a package not checked is not left to be used
            for stale in (path, sidecar_path(path)):
                stale.unlink(missing_ok=True)
            raise
        self.status(f"  package loaded in a fresh process; max abs diff vs PyTorch fp32 at batch {profile.min}: {diff:.2e}")
        self.record(path, {"precision": precision, "device": device, "max_abs_diff_vs_torch": diff})
        self.written.append(sidecar_path(path))

    def compare(self, run: Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]],
                device: torch.device, batch: int) -> float:
        """Max abs difference of run(inputs) -> (image, grade_logits) from the eager fp32 generator's."""
        inputs = example_inputs(self.generator, batch, seed=1, device=device)
        image, logits = run(inputs)
        with torch.no_grad():  # the reference on the runner's device: paper-1280 on a CPU takes minutes
            ref_image, ref_logits = self.generator.to(device)(inputs[0], inputs[1], list(inputs[2:]))
        self.generator.cpu()
        image, logits = image.to(device), logits.to(device)
        # torch's max, not Python's: a NaN difference must come out as NaN (max(0.1, nan) is 0.1)
        return torch.stack([(image - ref_image).abs().max(), (logits - ref_logits).abs().max()]).max().item()

    def unlist(self, path: Path) -> None:
        """Before an engine or package is built over an earlier one, which is replaced before its check
        runs: synthesis refuses it until `record` lists the new one (even after a SIGKILL)."""
        if self.manifest["files"].pop(path.name, None) is not None:
            self.write_manifest()

    def record(self, path: Path, info: dict[str, Any]) -> None:
        """List a file that passed its checks; export.json is rewritten at once, so a later failure
        or interrupt keeps it usable."""
        self.manifest["files"][path.name] = {"weights_sha256": self.sha, **info}
        self.written.append(path)
        self.write_manifest()

    def save_manifest(self) -> None:
        self.write_manifest()
        self.written.append(self.out / MANIFEST)

    def write_manifest(self) -> None:
        g = self.generator
        self.manifest.update({
            "stage": g.stage,
            "resolution": g.resolution,
            "inputs": {k: [-1, *v[1:]] for k, v in input_shapes(g, 1).items()},
            "outputs": {k: [-1, *v[1:]] for k, v in output_shapes(g, 1).items()},
            "output_names": list(OUTPUT_NAMES),
            "model": g.cfg.to_dict(),
        })
        atomic_write_json(self.out / MANIFEST, self.manifest, sort_keys=True)


# Largest difference from the eager fp32 generator an fp32 artifact may show (images in [-1, 1]);
# fp16/bf16 ones are only required to be finite. TensorRT's fused attention sums in another order.
AOTI_FP32_TOLERANCE = 1e-3
TRT_FP32_TOLERANCE = 1e-2


def _check_difference(path: Path, what: str, diff: float, precision: str, fp32_tolerance: float) -> None:
    if not math.isfinite(diff):
        raise DrganError(f"{path}: {what} gives non-finite outputs (NaN or inf) where PyTorch's are finite"
                         + ("; try --precision bf16 (fp16 overflows?)" if precision == "fp16" else ""))
    if precision == "fp32" and diff > fp32_tolerance:
        raise DrganError(f"{path}: {what} differs from PyTorch by {diff:.2e} (> {fp32_tolerance:g})")


def _load_stage(run: Path, stage: str | None) -> DRGANGenerator:
    """The run's generator; `stage` only confirms which one (a local run has no global RGB head:
    pix2pixHD drops it when the local enhancer is added, so its Gm cannot be exported alone)."""
    run_stage = require_kind(run, "gan", "run").stage
    if stage is not None and stage != run_stage:
        raise ParameterError(f"{{stage}} {stage}: {run} is a {run_stage}-stage run; export it with {{stage}} {run_stage}")
    return load_generator(run)
