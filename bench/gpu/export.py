"""Generator latency per image on one GPU: PyTorch eager vs AOTInductor (and TensorRT where installed).

    python bench/gpu/export.py --out OUT/export.json [--preset paper-1280] [--precision bf16] [--batch 1]

Random weights with the attention branches switched on (cost does not depend on the values). Eager runs
twice: with the kernels the torch backend uses (impl 'auto') and with the SDPA path the AOTInductor
package is compiled from, so compile gains and kernel choice are told apart. The JSON is rewritten
after each part, so a part cut off by the time limit leaves the earlier numbers.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch

from drgan.config import preset
from drgan.export.wrapper import example_inputs, prepare
from drgan.nn import DRGANGenerator


def latency_ms(run, args, repeats: int) -> float:
    """Median ms per call, CUDA events around each call after two warm-up calls."""
    for _ in range(2):
        run(*args)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--preset", default="paper-1280")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--batch", default=1, type=int)
    parser.add_argument("--repeats", default=10, type=int)
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    torch.manual_seed(0)
    g = DRGANGenerator(preset(opts.preset), "local").eval()
    for block in g.global_gen.synth:
        block.sca.gamma_s.data.fill_(0.5)
        block.sca.gamma_c.data.fill_(0.5)
    inputs = [t.cuda() for t in example_inputs(g, opts.batch)]
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": opts.preset,
              "precision": opts.precision, "batch": opts.batch, "ms_per_image": {}, "notes": {}}

    def save() -> None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(result, indent=2) + "\n")

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

    eager = prepare(g, impl="auto", precision=opts.precision).cuda().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = eager(*inputs)[0].float()
    record("torch-eager", eager)
    del eager
    sdpa = prepare(g, impl="sdpa", precision=opts.precision, pad_qk=8).cuda()
    record("torch-eager-sdpa", sdpa)
    del sdpa
    torch.cuda.empty_cache()

    from drgan.export.aoti import AotiGenerator, compile_aoti
    from drgan.export.trt_build import BatchProfile

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        try:
            path = compile_aoti(g, Path(tmp) / "g.pt2", BatchProfile(opts.batch, opts.batch, opts.batch), "cuda", opts.precision)
            compile_s = round(time.perf_counter() - start, 1)
            print(f"AOTInductor compile: {compile_s} s")
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
            return
        from drgan.export.onnx_export import export_onnx
        from drgan.export.trt_build import build_engine
        from drgan.export.trt_runner import TrtGenerator

        onnx_path = export_onnx(g, Path(tmp) / "g.onnx", pad_qk="v")
        profile = BatchProfile(opts.batch, opts.batch, opts.batch)
        precision = "fp16" if opts.precision == "fp32" else opts.precision
        build_engine(onnx_path, Path(tmp) / "g.engine", g, profile, precision, Path(tmp) / "timing.cache")
        engine = TrtGenerator(Path(tmp) / "g.engine")
        record("tensorrt", lambda c, z, *n: engine(c, z, list(n)), {"precision": precision})


if __name__ == "__main__":
    main()
