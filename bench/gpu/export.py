"""Generator latency per image on one GPU: PyTorch eager vs AOTInductor (and TensorRT where installed).

    python bench/gpu/export.py --out OUT/export.json [--preset paper-1280] [--precision bf16] [--batch 1] [--dry-run]

Random weights with the attention branches switched on (cost does not depend on the values). Eager runs
twice: with the kernels the torch backend uses (impl 'auto') and with the SDPA path the AOTInductor
package is compiled from, so compile gains and kernel choice are told apart. The package is
compiled by compile_aoti and loaded first in a fresh interpreter, then in this process (torch 2.11
crashed loading a CUDA package in the process that compiled it); the TensorRT engine comes from
drgan-export's pipeline (export_run: built, then checked against eager fp32).
The JSON is rewritten after each part, so a part cut off by the time limit leaves the earlier
numbers. --dry-run: the tiny preset in fp32 on the CPU, and the AOTInductor export only has its
options checked (it takes minutes on a CPU; tests/test_export_aoti.py compiles for real).
"""
from __future__ import annotations

import argparse
import inspect
import tempfile
import time
import traceback
from pathlib import Path

import _part  # first: with --dry-run it switches Triton's interpreter on before drgan.kernels loads
import torch

from drgan.checkpoint import save_module
from drgan.config import preset
from drgan.errors import DrganError
from drgan.export.aoti import AotiGenerator, compile_aoti, run_in_fresh_process
from drgan.export.backends import aoti_file, engine_file
from drgan.export.pipeline import ExportOptions, export_run
from drgan.export.sidecar import BatchProfile
from drgan.export.trt_runner import TrtGenerator
from drgan.export.wrapper import example_inputs, prepare
from drgan.nn import DRGANGenerator
from drgan.runs import write_run_config


def fresh_process_check(path: Path, inputs: list[torch.Tensor], reference: torch.Tensor) -> dict:
    """Load and run the package in a new interpreter (as drgan-export checks it): seconds, difference
    from eager, or the error (a SIGSEGV in torch's loader is named)."""
    start = time.perf_counter()
    try:
        image, _ = run_in_fresh_process(path, inputs)
    except DrganError as exc:
        return {"error": str(exc)[-500:]}
    return {"seconds": round(time.perf_counter() - start, 1),
            "max_abs_diff_vs_eager": round((image.to(reference.device).float() - reference).abs().max().item(), 4)}


def latency_ms(run, args, repeats: int) -> float:
    """Median ms per call after two warm-up calls: CUDA events around each call (wall clock on CPU)."""
    for _ in range(2):
        run(*args)
    times = []
    for _ in range(repeats):
        if args[0].is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(*args)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            run(*args)
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> bool:
    """Runs every backend; True when none failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper-1280")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--batch", default=1, type=int)
    parser.add_argument("--repeats", default=10, type=int)
    opts = _part.arguments(__doc__, parser)
    if opts.dry_run:
        opts.preset, opts.precision, opts.repeats = "tiny-64", "fp32", 1
    device = _part.device(opts)
    torch.manual_seed(0)
    g = DRGANGenerator(preset(opts.preset), "local").eval()
    for block in g.global_gen.synth:
        block.sca.gamma_s.data.fill_(0.5)
        block.sca.gamma_c.data.fill_(0.5)
    inputs = [t.to(device) for t in example_inputs(g, opts.batch)]
    result = {"device": _part.device_name(device), "torch": torch.__version__, "preset": opts.preset,
              "precision": opts.precision, "batch": opts.batch, "ms_per_image": {}, "notes": {}}

    def save() -> None:
        result["pass"] = not any("error" in note for note in result["notes"].values())
        _part.write(opts.out, result, opts.dry_run)

    def record(name: str, run, extra: dict | None = None) -> None:
        try:
            with torch.inference_mode():
                ms = latency_ms(run, inputs, opts.repeats) / opts.batch
                image, _ = run(*inputs)
            result["ms_per_image"][name] = round(ms, 2)
            result["notes"][name] = {"max_abs_diff_vs_eager": round((image.float() - reference).abs().max().item(), 4), **(extra or {})}
            print(f"{name:<24} {ms:9.2f} ms/image")
        except Exception as exc:  # one failing backend (out of memory, missing kernel) must not hide the rest
            result["notes"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            traceback.print_exc()
        save()

    eager = prepare(g, impl="auto", precision=opts.precision).to(device).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = eager(*inputs)[0].float()
    record("torch-eager", eager)
    del eager
    sdpa = prepare(g, impl="sdpa", precision=opts.precision, pad_qk=8).to(device)
    record("torch-eager-sdpa", sdpa)
    del sdpa
    if device == "cuda":
        torch.cuda.empty_cache()

    with tempfile.TemporaryDirectory() as tmp:
        run, out = Path(tmp) / "run", Path(tmp) / "export"
        write_run_config(run, g.cfg, g.stage)  # the random weights as a run folder: what drgan-export reads
        save_module(g, run / "G_ema.safetensors")
        profile = BatchProfile(opts.batch, opts.batch, opts.batch)
        out.mkdir()
        if opts.dry_run:
            inspect.signature(compile_aoti).bind(g, out / "g.pt2", profile, device, opts.precision)
            result["notes"]["aoti"] = {"skipped": "dry run: options checked, not compiled"}
        else:
            try:
                start = time.perf_counter()
                path = compile_aoti(g, out / aoti_file(device, opts.precision), profile, device, opts.precision)
                compile_s = round(time.perf_counter() - start, 1)
                print(f"AOTInductor compile: {compile_s} s", flush=True)
                # First in a fresh process: torch 2.11 crashed (SIGSEGV) loading a CUDA package in the
                # process that compiled it; this tells whether a fresh process loads it.
                fresh = result["notes"]["aoti_fresh_process"] = fresh_process_check(path, inputs, reference)
                save()
                if "error" in fresh:  # loading it here too would die the same way, before TensorRT's turn
                    result["notes"]["aoti"] = {"skipped": "the package did not load in a fresh process (aoti_fresh_process)"}
                else:
                    package = AotiGenerator(path)
                    record("aoti", lambda c, z, *n: package(c, z, list(n)), {"compile_s": compile_s})
            except Exception as exc:
                result["notes"]["aoti"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                traceback.print_exc()
        save()
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            result["notes"]["tensorrt"] = {"skipped": "tensorrt is not installed"}
            save()
            return result["pass"]
        precision = "fp16" if opts.precision == "fp32" else opts.precision
        trt_out = Path(tmp) / "trt"  # its own folder: drgan-export refuses one holding the package's files
        try:
            export_run(run, trt_out, ExportOptions(onnx=False, trt=True, precision=precision), profile)
            engine = TrtGenerator(trt_out / engine_file(precision))
            record("tensorrt", lambda c, z, *n: engine(c, z, list(n)), {"precision": precision})
        except Exception as exc:
            result["notes"]["tensorrt"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            traceback.print_exc()
        save()
    return result["pass"]


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
