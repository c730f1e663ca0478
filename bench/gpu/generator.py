"""Paper-1280 generator forward on one GPU: Triton kernels against the reference ops.

Batch 8 (halved on out-of-memory), bf16 autocast, channels_last, inference_mode; random weights
with the SCA gammas switched on (they start at 0), so both paths compute the same attention work.
Reports ms per image, the speedup and the peak memory of each path.

    python3 bench/gpu/generator.py --out OUT/generator.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from drgan.config import preset
from drgan.nn import DRGANGenerator, set_kernel_impl

PRESET = "paper-1280"
BATCHES = (8, 4, 2, 1)  # tried in order until one fits
IMPLS = ("triton", "ref")
ITERS = {"triton": 5, "ref": 2}  # the reference path takes seconds per batch
SCA_GAMMA = 0.1


def build(preset_name: str, device: str) -> DRGANGenerator:
    gen = DRGANGenerator(preset(preset_name), "local").to(device).eval()
    gen = gen.to(memory_format=torch.channels_last)
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith("gamma_s") or name.endswith("gamma_c"):
                p.fill_(SCA_GAMMA)
    return gen


def inputs(gen: DRGANGenerator, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    r = gen.resolution
    gen_rng = torch.Generator(device=device).manual_seed(0)
    cond = torch.rand(batch, gen.cfg.cond_channels, r, r, device=device, generator=gen_rng)
    z = torch.randn(batch, gen.cfg.z_dim, device=device, generator=gen_rng)
    return cond.contiguous(memory_format=torch.channels_last), z


def time_forward(gen: DRGANGenerator, cond: torch.Tensor, z: torch.Tensor, impl: str, iters: int) -> tuple[float, torch.Tensor, int]:
    """(ms per batch, the image of the last run, peak bytes allocated)."""
    set_kernel_impl(gen, impl)
    cuda = cond.is_cuda
    with torch.inference_mode(), torch.autocast(cond.device.type, dtype=torch.bfloat16):
        image, _ = gen(cond, z, noise=0)  # warm-up: compiles and autotunes the kernels
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(iters):
            image, _ = gen(cond, z, noise=0)
        if cuda:
            torch.cuda.synchronize()
        elapsed = (time.perf_counter() - start) * 1e3 / iters
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    return elapsed, image.float(), peak


def run(preset_name: str, device: str, batches=BATCHES, iters=ITERS) -> dict:
    gen = build(preset_name, device)
    report = {"preset": preset_name, "device": torch.cuda.get_device_name() if device == "cuda" else device,
              "torch": torch.__version__, "dtype": "bf16 autocast", "memory_format": "channels_last",
              "sca_gamma": SCA_GAMMA}
    for batch in batches:
        try:
            cond, z = inputs(gen, batch, device)
            results, images = {}, {}
            for impl in IMPLS:
                ms, images[impl], peak = time_forward(gen, cond, z, impl, iters[impl])
                results[impl] = {"ms_per_batch": ms, "ms_per_image": ms / batch, "peak_memory_GiB": peak / 2**30}
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(f"batch {batch}: out of memory, halving", flush=True)
    else:
        raise SystemExit("out of memory even at batch 1")
    report["batch"] = batch
    report.update(results)
    report["speedup"] = results["ref"]["ms_per_image"] / results["triton"]["ms_per_image"]
    report["max_abs_image_diff"] = (images["triton"] - images["ref"]).abs().max().item()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON report path")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu/generator.py needs a CUDA GPU")
    report = run(PRESET, "cuda")
    print(f"{'impl':8s} {'ms/image':>10s} {'peak GiB':>10s}   ({report['preset']}, batch {report['batch']}, "
          f"{report['dtype']}, {report['memory_format']}, {report['device']})")
    for impl in IMPLS:
        r = report[impl]
        print(f"{impl:8s} {r['ms_per_image']:10.2f} {r['peak_memory_GiB']:10.2f}")
    print(f"speedup {report['speedup']:.2f}x; max |image difference| {report['max_abs_image_diff']:.3g}")
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
