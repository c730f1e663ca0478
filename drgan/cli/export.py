"""`drgan export` / `drgan-export`: ONNX (checked with ONNX Runtime), TensorRT engines, AOTInductor packages.

Files written to OUT (default RUN/export), described in OUT/export.json:
    generator.onnx (+ .data)             fp32, dynamic batch, opset 23 (`Attention` per SCA block)
    generator_trt.onnx (+ .data)         the same with Q/K zero-padded for TensorRT's fused attention
    generator_trt_plugin.onnx (+ .data)  with --trt-plugin: each attention a drgan::DrganSpatialAttention node
    generator_<precision>.engine (+ .json)      TensorRT engine and its sidecar; timing.cache beside it
    generator_<device>_<precision>.pt2 (+ .json) AOTInductor package and its sidecar
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from drgan.cli.common import IntRange
from drgan.config import STAGES
from drgan.errors import DrganError
from drgan.io import check_writable_dir


@click.command()
@click.option("--run", "--checkpoint", "run", required=True, type=click.Path(file_okay=False), help="Run folder (run.json + G_ema/G.safetensors).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder to write.  [default: RUN/export]")
@click.option("--onnx", "want_onnx", is_flag=True, help="Write the ONNX file (the default when no format is named).")
@click.option("--trt", "want_trt", is_flag=True, help="Build a TensorRT engine (needs TensorRT and a GPU).")
@click.option("--aoti", "want_aoti", is_flag=True, help="Compile an AOTInductor .pt2 package.")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "bf16"]), help="Engine/package precision (the ONNX file is always fp32).")
@click.option("--batch", type=IntRange(1), help="Fixed batch size (not with --min/--opt/--max-batch).")
@click.option("--min-batch", type=IntRange(1), help="Smallest batch of the engine/package.  [default: 1]")
@click.option("--opt-batch", type=IntRange(1), help="Batch TensorRT tunes for, min..max.  [default: 4]")
@click.option("--max-batch", type=IntRange(1), help="Largest batch of the engine/package.  [default: 16]")
@click.option("--stage", type=click.Choice(list(STAGES)), help="Stage to export; must be the run's (global: Gm at half resolution).  [default: the run's stage]")
@click.option("--opset", default=23, show_default=True, type=int, help="ONNX opset, >= 23 (the Attention op).")
@click.option("--device", help="Device of the AOTInductor package (cpu, cuda).  [default: cuda if available]")
@click.option("--external-data", is_flag=True, help="Keep the ONNX weights in a .data file (automatic above 1 GB).")
@click.option("--pad-qk/--no-pad-qk", default=True, show_default=True, help="TensorRT path: zero-pad Q/K to V's width (fused attention; ~1.9x attention FLOPs).")
@click.option("--trt-plugin", "trt_plugin", type=click.Path(dir_okay=False), help="TensorRT path: run each spatial attention as the drgan plugin (libdrgan_trt_plugin.so of the native build) instead of padding Q/K.")
@click.option("--opt-level", type=IntRange(0, 5), help="TensorRT builder optimization level.  [default: 3]")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache to reuse and update.  [default: OUT/timing.cache]")
def export(
    run: str, out: str | None, want_onnx: bool, want_trt: bool, want_aoti: bool, precision: str,
    batch: int | None, min_batch: int | None, opt_batch: int | None, max_batch: int | None, stage: str | None,
    opset: int, device: str | None, external_data: bool, pad_qk: bool, opt_level: int | None, timing_cache: str | None,
    trt_plugin: str | None,
) -> None:
    """Export the inference generator (mapping network + generator; inputs cond, z, noise0..noise2;
    outputs image, grade_logits)."""
    from drgan.export.sidecar import BatchProfile
    from drgan.export.trt_build import import_tensorrt

    if want_trt:
        import_tensorrt()  # first: a missing TensorRT stops before any work
    if not (want_onnx or want_trt or want_aoti):
        want_onnx = True
    if precision != "fp32" and not (want_trt or want_aoti):
        raise DrganError(f"--precision {precision} applies to --trt and --aoti; the ONNX file is always fp32")
    if not want_trt and (opt_level is not None or timing_cache is not None or trt_plugin is not None):
        raise DrganError("--opt-level, --timing-cache and --trt-plugin configure the TensorRT build: add --trt")
    if trt_plugin is not None and precision == "fp32":
        raise DrganError("--trt-plugin runs the fp16/bf16 kernels: add --precision fp16 or --precision bf16")
    profile = BatchProfile.from_options(batch, min_batch, opt_batch, max_batch)
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise DrganError(f"--device {device}: no CUDA GPU is visible")
    if want_trt and not torch.cuda.is_available():
        raise DrganError("--trt needs a CUDA GPU: TensorRT builds its engine for the GPU it runs on")

    out_dir = Path(out) if out else Path(run) / "export"
    check_writable_dir(out_dir)  # before the export's minutes of work
    _Exporter(Path(run), out_dir, stage).run(
        want_onnx=want_onnx, want_trt=want_trt, want_aoti=want_aoti, precision=precision, profile=profile,
        opset=opset, device=device, external_data=external_data or None, pad_qk=pad_qk,
        opt_level=3 if opt_level is None else opt_level, timing_cache=timing_cache, trt_plugin=trt_plugin,
    )


class _Exporter:
    """Writes the requested artifacts, checks each, and keeps OUT/export.json up to date."""

    def __init__(self, run: Path, out: Path, stage: str | None) -> None:
        from drgan.export.backends import read_manifest, weights_digest, weights_file

        self.start = time.perf_counter()
        self.run_dir, self.out = run, out
        self.status(f"loading {run}")
        self.generator = _load_stage(run, stage)
        self.sha = weights_digest(run)
        out.mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(out)
        self.manifest = {
            "run": str(run.resolve()),
            "weights": str(weights_file(run).name),
            "files": manifest["files"],
        }
        self.written: list[Path] = []

    def status(self, message: str) -> None:
        click.echo(f"[{time.perf_counter() - self.start:6.1f}s] {message}")

    def run(self, want_onnx, want_trt, want_aoti, precision, profile, opset, device, external_data, pad_qk, opt_level, timing_cache,
            trt_plugin=None) -> None:
        from drgan.export import backends

        g = self.generator
        self.status(f"generator: {g.stage} stage, {g.resolution} px, "
                    f"{sum(p.numel() for p in g.parameters()) / 1e6:.1f} M parameters")
        if want_onnx:
            self.onnx(backends.ONNX_FILE, opset, external_data, pad_qk=None)
        if want_trt and trt_plugin:
            from drgan.export.onnx_plugin import ONNX_FILE as PLUGIN_ONNX_FILE

            self.plugin_onnx(PLUGIN_ONNX_FILE, opset, external_data)
            self.trt(PLUGIN_ONNX_FILE, backends.engine_file(precision), profile, precision, opt_level, timing_cache,
                     plugin_library=trt_plugin)
        elif want_trt:
            onnx_file = backends.TRT_ONNX_FILE if pad_qk else backends.ONNX_FILE
            if pad_qk or not want_onnx:
                self.onnx(onnx_file, opset, external_data, pad_qk="v" if pad_qk else None)
            self.trt(onnx_file, backends.engine_file(precision), profile, precision, opt_level, timing_cache)
        if want_aoti:
            self.aoti(backends.aoti_file(device, precision), profile, device, precision)
        self.save_manifest()
        click.echo(f"wrote {len(self.written)} file(s) to {self.out}:")
        for path in self.written:
            click.echo(f"  {path.name:<40} {path.stat().st_size / 1e6:10.1f} MB")

    def onnx(self, name: str, opset: int, external_data: bool | None, pad_qk: str | None) -> None:
        from drgan.export.onnx_check import check_graph
        from drgan.export.onnx_export import data_path, export_onnx
        from drgan.export.ort_runner import verify_onnx
        from drgan.export.wrapper import attention_flops, pad_attention_qk, prepare

        path = self.out / name
        padded = " (Q/K zero-padded to V's width)" if pad_qk else ""
        self.status(f"ONNX opset {opset}{padded}: exporting {path.name}")
        if pad_qk:
            plain = attention_flops(self.generator)
            wide = attention_flops(pad_attention_qk(prepare(self.generator).generator))
            self.status(f"  padding Q/K raises the attention cost from {plain / 1e9:.1f} to {wide / 1e9:.1f} GFLOP per image")
        export_onnx(self.generator, path, opset=opset, pad_qk=pad_qk, external_data=external_data)
        report = check_graph(path, expected_attention=len(self.generator.global_gen.synth))
        self.status(f"  graph check passed: {report.summary()}")
        self.status("  ONNX Runtime vs PyTorch (fp32)")
        comparisons = verify_onnx(path, self.generator)
        for c in comparisons:
            self.status(f"    {c.line()}")
        self.record(path, {"opset": opset, "qk_padded": bool(pad_qk), "op_counts": report.op_counts,
                           "onnxruntime_check": [c.line() for c in comparisons]})
        if data_path(path).is_file():
            self.written.append(data_path(path))

    def plugin_onnx(self, name: str, opset: int, external_data: bool | None) -> None:
        from drgan.export.onnx_export import data_path, export_onnx
        from drgan.export.onnx_plugin import OP_TYPE, check_plugin_graph, convert_file

        path = self.out / name
        self.status(f"ONNX opset {opset} with {OP_TYPE} plugin nodes: exporting {path.name}")
        export_onnx(self.generator, path, opset=opset, external_data=external_data)
        convert_file(path, path)
        counts = check_plugin_graph(path, expected=len(self.generator.global_gen.synth))
        self.status(f"  graph check passed: {counts[OP_TYPE]} {OP_TYPE} nodes (ONNX Runtime cannot run them; "
                    "the engine is compared with PyTorch instead)")
        self.record(path, {"opset": opset, "trt_plugin": True, "op_counts": counts})
        if data_path(path).is_file():
            self.written.append(data_path(path))

    def trt(self, onnx_name: str, name: str, profile, precision: str, opt_level: int, timing_cache: str | None,
            plugin_library: str | None = None) -> None:
        from drgan.export.sidecar import sidecar_path
        from drgan.export.trt_build import build_engine
        from drgan.export.trt_runner import TrtGenerator

        path = self.out / name
        cache = Path(timing_cache) if timing_cache else self.out / "timing.cache"
        self.status(f"TensorRT {precision} engine, batch {profile.min}/{profile.opt}/{profile.max}, "
                    f"optimization level {opt_level}: building {path.name} (minutes)")
        build_engine(self.out / onnx_name, path, self.generator, profile, precision, cache, opt_level, plugin_library)
        diff = self.compare(TrtGenerator(path), profile.min)
        self.status(f"  engine loaded; max abs diff vs PyTorch fp32 at batch {profile.min}: {diff:.2e}")
        self.record(path, {"precision": precision, "onnx": onnx_name, "max_abs_diff_vs_torch": diff})
        self.written += [sidecar_path(path), cache]

    def aoti(self, name: str, profile, device: str, precision: str) -> None:
        from drgan.export.aoti import AotiGenerator, compile_aoti
        from drgan.export.sidecar import sidecar_path

        path = self.out / name
        shape = f"batch {profile.min}" if profile.fixed else f"batch {profile.min}..{profile.max}"
        self.status(f"AOTInductor {device} {precision}, {shape}: compiling {path.name} (minutes)")
        compile_aoti(self.generator, path, profile, device, precision)
        diff = self.compare(AotiGenerator(path), profile.min)
        self.status(f"  package loaded; max abs diff vs PyTorch fp32 at batch {profile.min}: {diff:.2e}")
        if precision == "fp32" and diff > 1e-3:
            raise DrganError(f"{path}: the AOTInductor package differs from PyTorch by {diff:.2e} (> 1e-3)")
        self.record(path, {"precision": precision, "device": device, "max_abs_diff_vs_torch": diff})
        self.written.append(sidecar_path(path))

    def compare(self, runner, batch: int) -> float:
        """Max abs difference of a runner's outputs from the eager fp32 generator's."""
        import torch

        from drgan.export.wrapper import example_inputs

        inputs = example_inputs(self.generator, batch, seed=1, device=runner.device)
        image, logits = runner(inputs[0], inputs[1], list(inputs[2:]))
        with torch.no_grad():  # the reference on the runner's device: paper-1280 on a CPU takes minutes
            ref_image, ref_logits = self.generator.to(runner.device)(inputs[0], inputs[1], list(inputs[2:]))
        self.generator.cpu()
        return max((image - ref_image).abs().max().item(), (logits - ref_logits).abs().max().item())

    def record(self, path: Path, info: dict) -> None:
        self.manifest["files"][path.name] = {"weights_sha256": self.sha, **info}
        self.written.append(path)

    def save_manifest(self) -> None:
        from drgan.io import atomic_write_bytes
        from drgan.export.backends import MANIFEST
        from drgan.export.wrapper import OUTPUT_NAMES, input_shapes, output_shapes

        g = self.generator
        self.manifest.update({
            "stage": g.stage,
            "resolution": g.resolution,
            "inputs": {k: [-1, *v[1:]] for k, v in input_shapes(g, 1).items()},
            "outputs": {k: [-1, *v[1:]] for k, v in output_shapes(g, 1).items()},
            "output_names": list(OUTPUT_NAMES),
            "model": g.cfg.to_dict(),
        })
        path = self.out / MANIFEST
        atomic_write_bytes(path, (json.dumps(self.manifest, indent=2, sort_keys=True) + "\n").encode())
        self.written.append(path)


def _load_stage(run: Path, stage: str | None):
    """The run's generator; --stage only confirms which one (a local run has no global RGB head:
    pix2pixHD drops it when the local enhancer is added, so its Gm cannot be exported alone)."""
    from drgan.checkpoint import load_generator, read_run_config

    _, run_stage, _ = read_run_config(run)
    if stage is not None and stage != run_stage:
        raise DrganError(f"--stage {stage}: {run} is a {run_stage}-stage run; export it with --stage {run_stage}")
    return load_generator(run)
