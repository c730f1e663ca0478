"""Paper-1280 generator forward on one GPU: Triton kernels against the reference ops.

Batch 8 (halved on out-of-memory), bf16 autocast, channels_last, inference_mode; random weights
with the SCA gammas switched on (they start at 0), so both paths compute the same attention work.
Both paths run the generator as synthesis does, with BatchNorm folded into the convolutions; the
Triton path is also timed unfolded (`triton_unfolded_bn`) and with the spatial attention's P@V in
fp8 (`triton_fp8_attention`, `drgan synthesize --fp8-attention`; compute capability 8.9+). Reports ms per image, the speedup and
the peak memory of each path, and where the Triton path's
time goes: torch.profiler over one batch, the PROFILE_TOP kernels by device time, and the spatial
attention forward's share.

    python3 bench/gpu/generator.py --out OUT/generator.json [--dry-run]
"""
from __future__ import annotations

import time

import _part  # first: with --dry-run it switches Triton's interpreter on before drgan.kernels loads
import torch

from drgan.config import preset
from drgan.nn import DRGANGenerator, set_attention_fp8, set_kernel_impl
from drgan.nn.layers import fold_batchnorm

PRESET = "paper-1280"
BATCHES = (8, 4, 2, 1)  # tried in order until one fits
IMPLS = ("triton", "ref")
ITERS = {"triton": 5, "ref": 2}  # the reference path takes seconds per batch
SCA_GAMMA = 0.1
PROFILE_TOP = 15
AUTOCAST = torch.bfloat16
# --dry-run: the tiny preset, one pass each; fp16 autocast (the interpreter's bf16 tl.dot is wrong).
DRY_PRESET, DRY_BATCHES, DRY_ITERS, DRY_AUTOCAST = "tiny-64", (1,), {"triton": 1, "ref": 1}, torch.float16


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


def time_forward(gen: DRGANGenerator, cond: torch.Tensor, z: torch.Tensor, impl: str, iters: int,
                 autocast: torch.dtype) -> tuple[float, torch.Tensor, int]:
    """(ms per batch, the image of the last run, peak bytes allocated)."""
    set_kernel_impl(gen, impl)
    cuda = cond.is_cuda
    with torch.inference_mode(), torch.autocast(cond.device.type, dtype=autocast):
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


def profile_forward(gen: DRGANGenerator, cond: torch.Tensor, z: torch.Tensor, autocast: torch.dtype) -> dict:
    """Self device time per kernel (host time on the CPU) over one Triton-path batch, per image."""
    set_kernel_impl(gen, "triton")

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(cond.device.type, dtype=autocast):
            gen(cond, z, noise=0)

    return _part.profile(forward, cond.is_cuda, cond.shape[0], {"spatial_attention_fwd": ("_fwd_kernel",)}, PROFILE_TOP)


def run(preset_name: str, device: str, batches=BATCHES, iters=ITERS, autocast: torch.dtype = AUTOCAST) -> dict:
    unfolded = build(preset_name, device)
    gen = fold_batchnorm(unfolded)
    report = {"preset": preset_name, "device": _part.device_name(device),
              "torch": torch.__version__, "dtype": f"{autocast} autocast", "memory_format": "channels_last",
              "sca_gamma": SCA_GAMMA}
    for batch in batches:
        try:
            cond, z = inputs(gen, batch, device)
            results, images = {}, {}
            for impl in IMPLS:
                ms, images[impl], peak = time_forward(gen, cond, z, impl, iters[impl], autocast)
                results[impl] = {"ms_per_batch": ms, "ms_per_image": ms / batch, "peak_memory_GiB": peak / 2**30}
            ms, image, _ = time_forward(unfolded, cond, z, "triton", iters["triton"], autocast)
            results["triton_unfolded_bn"] = {"ms_per_image": ms / batch,
                                             "max_abs_image_diff": (image - images["triton"]).abs().max().item()}
            if device != "cuda" or torch.cuda.get_device_capability() >= (8, 9):
                ms, image, _ = time_forward(set_attention_fp8(gen, True), cond, z, "triton", iters["triton"], autocast)
                set_attention_fp8(gen, False)
                results["triton_fp8_attention"] = {"ms_per_image": ms / batch,
                                                   "max_abs_image_diff": (image - images["triton"]).abs().max().item()}
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
    report["profile"] = profile_forward(gen, cond, z, autocast)
    return report


def main() -> None:
    args = _part.arguments(__doc__)
    if args.dry_run:
        report = run(DRY_PRESET, "cpu", DRY_BATCHES, DRY_ITERS, DRY_AUTOCAST)
    else:
        report = run(PRESET, "cuda")
    print(f"{'impl':8s} {'ms/image':>10s} {'peak GiB':>10s}   ({report['preset']}, batch {report['batch']}, "
          f"{report['dtype']}, {report['memory_format']}, {report['device']})")
    for impl in IMPLS:
        r = report[impl]
        print(f"{impl:8s} {r['ms_per_image']:10.2f} {r['peak_memory_GiB']:10.2f}")
    print(f"speedup {report['speedup']:.2f}x; max |image difference| {report['max_abs_image_diff']:.3g}; "
          f"Triton with BatchNorm unfolded {report['triton_unfolded_bn']['ms_per_image']:.2f} ms/image")
    if "triton_fp8_attention" in report:
        fp8 = report["triton_fp8_attention"]
        print(f"Triton with fp8 P@V attention {fp8['ms_per_image']:.2f} ms/image, max |image difference| {fp8['max_abs_image_diff']:.3g}")
    _part.print_profile(report["profile"])
    _part.write(args.out, report, args.dry_run)


if __name__ == "__main__":
    main()
