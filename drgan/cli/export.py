"""`drgan export` / `drgan-export`: ONNX (checked with ONNX Runtime), TensorRT engines, AOTInductor packages.

The files it writes to OUT (default RUN/export) are listed in drgan.export.pipeline."""
from __future__ import annotations

import functools
import json

import click

from drgan.cli.common import BATCH, DEVICE_HELP, HELP_NAMES, IntRange
from drgan.config import PRECISIONS, STAGES
from drgan.errors import UsageError


@click.command(context_settings=HELP_NAMES)
@click.option("--run", "--checkpoint", "run", required=True, type=click.Path(file_okay=False), help="Run folder (run.json + G_ema/G.safetensors).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder to write.  [default: RUN/export]")
@click.option("--onnx", "want_onnx", is_flag=True, help="Write the ONNX file (the default when no format is named).")
@click.option("--trt", "want_trt", is_flag=True, help="Build a TensorRT engine (needs TensorRT and a GPU; an engine runs native code: load only engines you built or trust).")
@click.option("--aoti", "want_aoti", is_flag=True, help="Compile an AOTInductor .pt2 package (native code: load only packages you built or trust).")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(PRECISIONS), help="Engine/package precision (the ONNX file is always fp32).")
@click.option("--batch", type=BATCH, help="Fixed batch size (not with --min/--opt/--max-batch).")
@click.option("--min-batch", type=BATCH, help="Smallest batch of the engine/package.  [default: 1]")
@click.option("--opt-batch", type=BATCH, help="Batch TensorRT tunes for, min..max.  [default: 4]")
@click.option("--max-batch", type=BATCH, help="Largest batch of the engine/package.  [default: 16]")
@click.option("--stage", type=click.Choice(list(STAGES)), help="Stage to export; must be the run's (global: Gm at half resolution).  [default: the run's stage]")
@click.option("--opset", default=23, show_default=True, type=int, help="ONNX opset, 23..25 (23: the first with the Attention op; 25: the newest the exporter converts to).")
@click.option("--device", default="auto", show_default=True, help="Device of the AOTInductor package: " + DEVICE_HELP)
@click.option("--external-data", is_flag=True, help="Keep the ONNX weights in a .data file (automatic above 1 GB).")
@click.option("--pad-qk/--no-pad-qk", default=True, show_default=True, help="TensorRT path: zero-pad Q/K to V's width (fused attention; ~1.9x attention FLOPs); --no-pad-qk builds from "
                   "generator.onnx itself, whose Attention nodes TensorRT may not split where no fused kernel fits.")
@click.option("--trt-plugin", "trt_plugin", type=click.Path(dir_okay=False), help="TensorRT path: run each spatial attention as the drgan plugin (libdrgan_trt_plugin.so of the native build) instead of padding Q/K; it runs native code, and synthesis loads it only when named again with --trt-plugin.")
@click.option("--opt-level", type=IntRange(0, 5), help="TensorRT builder optimization level.  [default: 3]")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache to reuse and update.  [default: OUT/timing.cache]")
@click.option("--json", "as_json", is_flag=True, help="Print export.json (every file written, with its checks) instead of the progress lines, which go to stderr.")
def export(
    run: str, out: str | None, want_onnx: bool, want_trt: bool, want_aoti: bool, precision: str,
    batch: int | None, min_batch: int | None, opt_batch: int | None, max_batch: int | None, stage: str | None,
    opset: int, device: str, external_data: bool, pad_qk: bool, opt_level: int | None, timing_cache: str | None,
    trt_plugin: str | None, as_json: bool,
) -> None:
    """Export the inference generator (mapping network + generator; inputs cond, z, noise0..noise2;
    outputs image, grade_logits)."""
    from drgan.export.pipeline import ExportOptions, export_run  # torch: not for `drgan -h`
    from drgan.export.sidecar import BatchProfile

    options = ExportOptions(
        onnx=want_onnx or not (want_trt or want_aoti), trt=want_trt, aoti=want_aoti, precision=precision, opset=opset,
        device=device, external_data=external_data or None, pad_qk=pad_qk, trt_plugin=trt_plugin, opt_level=opt_level,
        timing_cache=timing_cache,
    )
    profile = BatchProfile.from_options(batch, min_batch, opt_batch, max_batch)  # first: a usage error
    given = [f"{{{k}}}" for k, v in (("batch", batch), ("min_batch", min_batch), ("opt_batch", opt_batch),
                                     ("max_batch", max_batch)) if v is not None]
    if given and not (want_trt or want_aoti):  # the ONNX file's batch axis is dynamic: they would be ignored
        verb = "sets" if len(given) == 1 else "set"
        raise UsageError(f"{', '.join(given)} {verb} the batch range of an engine or package: add {{trt}} or {{aoti}}")
    log = functools.partial(click.echo, err=as_json)
    manifest = export_run(run, out, options, profile, stage, log=log)  # killed: run_command lets it remove its temp folder
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
