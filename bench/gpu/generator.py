"""Paper-1280 generator forward on one GPU: Triton kernels against the reference ops.

Batch 8 (halved on out-of-memory), bf16 autocast, channels_last, inference_mode; random weights
with the SCA gammas switched on (they start at 0), so both paths compute the same attention work.
Both paths run the generator as synthesis does, with BatchNorm folded into the convolutions; the
Triton path is also timed unfolded (`triton_unfolded_bn`) and with the spatial attention's P@V in
fp8 (`triton_fp8_attention`, `drgan synthesize --fp8-attention`; compute capability 8.9+).
Reports ms per image, the speedup and the peak memory of each path, and where the Triton path's
time goes: torch.profiler over one batch, the PROFILE_TOP kernels by device time, and the spatial
attention forward's share.

Then what the time outside attention is made of, and what recovers it:
- `convolutions`: every convolution of the folded generator at the input shape a forward pass gives
  it (identical layers grouped, `count`), timed alone in bf16 channels_last: with cuDNN's heuristic
  choice of algorithm (the default, `heuristic_ms`), with `cudnn.benchmark` (each algorithm timed,
  `benchmark_ms`), and where a channel count is not a multiple of 16 (the 8 mask channels, the 3
  RGB channels) zero-padded to one (`padded16_ms`, the padding copies not counted); ms per image,
  the achieved TFLOP/s and the sums over the generator (`convolutions_ms_per_image`).
- `triton_cudnn_benchmark`: the whole generator with `cudnn.benchmark`.
- `triton_compiled_convs`: the whole generator with every multi-layer part that holds no Triton
  kernel (encoder stages, residual blocks, merge and up-sampling stages, the local enhancer, the
  mapping network) under torch.compile; `compile_s` is what the first batch cost. Last, with the
  report written before it starts, so a compile past the part's limit loses nothing else.

    python3 bench/gpu/generator.py --out OUT/generator.json [--dry-run]
"""
from __future__ import annotations

import copy
import time

import _part  # first: with --dry-run it switches Triton's interpreter on before drgan.kernels loads
import torch
from _part import cudnn_benchmark, time_ms
from torch import nn

from drgan.config import preset
from drgan.kernels.spatial_attention import fp8_pv_unsupported
from drgan.nn import DRGANGenerator, set_attention_fp8, set_kernel_impl
from drgan.nn.layers import fold_batchnorm

PRESET = "paper-1280"
BATCHES = (8, 4, 2, 1)  # tried in order until one fits
IMPLS = ("triton", "ref")
ITERS = {"triton": 5, "ref": 2}  # the reference path takes seconds per batch
SCA_GAMMA = 0.1
PROFILE_TOP = 15
COMPILE_LIMIT = 64  # dynamo recompilations allowed per code object (see whole_generator_variants)
CHANNEL_MULTIPLE = 16  # bf16 tensor-core kernels want channel counts in multiples of 8-16
AUTOCAST = torch.bfloat16
IMAGE_TOL = 2e-2  # largest |Triton - reference| image difference that passes ([-1, 1] images)
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


def conv_flops(conv: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """2 x multiply-adds of one call: each output element (each input element, for a transposed
    convolution, which scatters) takes in/groups (out/groups) x kernel taps of them."""
    taps = conv.kernel_size[0] * conv.kernel_size[1]
    if isinstance(conv, nn.ConvTranspose2d):
        return 2.0 * x.numel() * conv.out_channels // conv.groups * taps
    return 2.0 * y.numel() * conv.in_channels // conv.groups * taps


def convolutions(gen: DRGANGenerator, cond: torch.Tensor, z: torch.Tensor, autocast: torch.dtype) -> list[dict]:
    """Every convolution of `gen` with the input shape one forward pass gives it; identical
    layers (same kind, channels, kernel, stride and input shape) grouped with their count."""
    groups: dict[tuple, dict] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            shape = tuple(args[0].shape)
            key = (type(module), module.in_channels, module.out_channels, module.kernel_size, module.stride, shape)
            groups.setdefault(key, {"layer": name, "module": module, "shape": shape, "count": 0})["count"] += 1
        return hook

    convs = [(name, m) for name, m in gen.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    handles = [m.register_forward_hook(record(name)) for name, m in convs]
    try:
        set_kernel_impl(gen, "triton")
        with torch.inference_mode(), torch.autocast(cond.device.type, dtype=autocast):
            gen(cond, z, noise=0)
    finally:
        for handle in handles:
            handle.remove()
    return list(groups.values())


def padded(conv: nn.Module, multiple: int) -> nn.Module | None:
    """The same convolution with its channel counts rounded up to `multiple` (random weights: for
    timing), or None where they are multiples already."""
    c_in, c_out = (-(-c // multiple) * multiple for c in (conv.in_channels, conv.out_channels))
    if (c_in, c_out) == (conv.in_channels, conv.out_channels):
        return None
    extra = {"output_padding": conv.output_padding} if isinstance(conv, nn.ConvTranspose2d) else {}
    return type(conv)(c_in, c_out, conv.kernel_size, stride=conv.stride, padding=conv.padding, **extra)


def time_convolutions(layers: list[dict], dtype: torch.dtype) -> dict:
    """Each grouped convolution timed alone (see the module doc), per image, and the sums."""
    rows = []
    for entry in layers:
        conv, shape = entry["module"], entry["shape"]
        device = conv.weight.device
        row = {"layer": entry["layer"], "count": entry["count"], "kind": type(conv).__name__,
               "input": "x".join(map(str, shape[1:])), "out_channels": conv.out_channels,
               "kernel": conv.kernel_size[0], "stride": conv.stride[0]}
        layer = copy.deepcopy(conv).to(dtype=dtype, memory_format=torch.channels_last)
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            flops = conv_flops(layer, x, layer(x)) / shape[0]
            # Heuristic first: cuDNN may keep for later calls the plan a benchmark found.
            for mode, on in (("heuristic", False), ("benchmark", True)):
                with cudnn_benchmark(on):  # time_ms's warm-up calls run cuDNN's search
                    row[f"{mode}_ms"] = time_ms(lambda: layer(x), rep_ms=20) / shape[0]
            row["benchmark_TFLOPs"] = flops / row["benchmark_ms"] / 1e9
            wide = padded(conv, CHANNEL_MULTIPLE)
            if wide is not None:
                wide = wide.to(device=device, dtype=dtype, memory_format=torch.channels_last)
                x = torch.randn(shape[0], wide.in_channels, *shape[2:], device=device, dtype=dtype)
                x = x.contiguous(memory_format=torch.channels_last)
                with cudnn_benchmark(True):
                    row["padded16_ms"] = time_ms(lambda: wide(x), rep_ms=20) / shape[0]
        rows.append(row)
    rows.sort(key=lambda r: r["count"] * r["heuristic_ms"], reverse=True)
    total = {mode: sum(r["count"] * r[f"{mode}_ms"] for r in rows) for mode in ("heuristic", "benchmark")}
    return {"convolutions_ms_per_image": total, "convolutions": rows}


def compile_conv_parts(module: nn.Module) -> nn.Module:
    """`module` with each largest part that has a forward of its own, more than one layer, and no
    Triton kernel inside under torch.compile (in place). The attention and AdaIN kernels stay
    outside the graphs: Inductor would not trace their launches; a lone layer gains nothing."""
    for name, child in list(module.named_children()):
        has_kernel = any(hasattr(m, "impl") for m in child.modules())
        has_forward = type(child).forward is not nn.Module.forward
        if not has_kernel and has_forward and any(True for _ in child.children()):
            setattr(module, name, torch.compile(child))
        else:  # a leaf has no parts: recursing into it does nothing
            compile_conv_parts(child)
    return module


def run(preset_name: str, device: str, batches=BATCHES, iters=ITERS, autocast: torch.dtype = AUTOCAST) -> tuple:
    """(report, the folded generator, the batch it ran, its Triton-path image)."""
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
            if fp8_pv_unsupported(autocast, torch.device(device)) is None:
                try:  # fp8 off again even when this runs out of memory: the smaller batch times bf16
                    ms, image, _ = time_forward(set_attention_fp8(gen, True), cond, z, "triton", iters["triton"], autocast)
                finally:
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
    # A broken kernel must not give a time to report: finite images within IMAGE_TOL of the reference
    # (the H200 run: 1.2e-3). NaN fails the comparison.
    report["pass"] = bool(torch.isfinite(images["triton"]).all()) and report["max_abs_image_diff"] <= IMAGE_TOL
    report["profile"] = profile_forward(gen, cond, z, autocast)
    report.update(time_convolutions(convolutions(gen, cond, z, autocast), autocast))
    return report, gen, cond, z, images["triton"]


def whole_generator_variants(report: dict, gen: DRGANGenerator, cond: torch.Tensor, z: torch.Tensor,
                             image: torch.Tensor, iters: dict, autocast: torch.dtype, save) -> None:
    """The Triton-path generator with cudnn.benchmark, then with its conv parts compiled (under
    cudnn.benchmark too, so that the two differ by the compilation alone); `save()` after each."""
    batch = cond.shape[0]
    with cudnn_benchmark(True):
        ms, out, _ = time_forward(gen, cond, z, "triton", iters["triton"], autocast)
        report["triton_cudnn_benchmark"] = {"ms_per_image": ms / batch, "max_abs_image_diff": (out - image).abs().max().item()}
        save()
        compiled = compile_conv_parts(copy.deepcopy(gen))
        # The compiled parts share one code object (Module._call_impl): each is a recompilation
        # of it, past dynamo's default limit of 8 (the rest would silently stay eager).
        with torch._dynamo.config.patch(recompile_limit=COMPILE_LIMIT):
            start = time.perf_counter()
            with torch.inference_mode(), torch.autocast(cond.device.type, dtype=autocast):
                compiled(cond, z, noise=0)
            compile_s = time.perf_counter() - start
            ms, out, _ = time_forward(compiled, cond, z, "triton", iters["triton"], autocast)
        parts = sum(isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in compiled.modules())
    report["triton_compiled_convs"] = {"ms_per_image": ms / batch, "compile_s": compile_s, "parts": parts,
                                       "max_abs_image_diff": (out - image).abs().max().item()}
    save()


def print_convolutions(report: dict) -> None:
    total = report["convolutions_ms_per_image"]
    print(f"convolutions alone: {total['heuristic']:.2f} ms/image with cuDNN's heuristic, "
          f"{total['benchmark']:.2f} with cudnn.benchmark", flush=True)
    for r in report["convolutions"]:
        wide = f", padded to 16 channels {r['padded16_ms']:.3f}" if "padded16_ms" in r else ""
        print(f"  {r['count']:2d} x {r['kind']:15s} {r['input']:>14s} -> {r['out_channels']:3d} k{r['kernel']} s{r['stride']}: "
              f"{r['heuristic_ms']:.3f} / {r['benchmark_ms']:.3f} ms ({r['benchmark_TFLOPs']:.3g} TFLOP/s){wide}", flush=True)


def main() -> None:
    args = _part.arguments(__doc__)
    if args.dry_run:
        iters, autocast = DRY_ITERS, DRY_AUTOCAST
        report, gen, cond, z, image = run(DRY_PRESET, "cpu", DRY_BATCHES, iters, autocast)
    else:
        iters, autocast = ITERS, AUTOCAST
        report, gen, cond, z, image = run(PRESET, "cuda")
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
    print_convolutions(report)
    _part.write(args.out, report, args.dry_run)
    whole_generator_variants(report, gen, cond, z, image, iters, autocast,
                             lambda: _part.write(args.out, report, args.dry_run))
    for name in ("triton_cudnn_benchmark", "triton_compiled_convs"):
        print(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in report[name].items()), flush=True)
    raise SystemExit(0 if report["pass"] else 1)


if __name__ == "__main__":
    main()
