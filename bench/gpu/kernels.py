"""GPU check and benchmark of the Triton kernels at the paper's shapes (one GPU, bf16 and fp16).

(1) Each kernel against its reference: spatial attention forward at N = 6,400 / 25,600 / 102,400
(QK dims 64 / 16 / 4, V dims 512 / 256 / 128, batch 1) and backward: up to N = BACKWARD_CHECK_MAX_N
against autograd of the reference, beyond (N = 102,400, where the checkpointed reference backward
takes minutes) against the closed-form reference gradients of sampled query rows and key columns;
channel attention at the SCA shapes; AdaIN at 80x80x512 ... 640x640x64, contiguous and
channels_last, forward and backward.
(2) The Gluon Hopper forward (impl='gluon') at each spatial shape it supports, after everything
else (the report is written first, so a hang there loses nothing): its error against the
reference (gluon_forward_rel_err, counted in pass) and its time (gluon_fwd_ms, first dtype only);
elsewhere "gluon": "skipped: <reason>", and a failure is recorded as "gluon": "failed: ...".
The backward is checked as it runs by default (dQ added atomically) and, in the first dtype,
under torch.use_deterministic_algorithms (dQ from its own kernel): deterministic_*_rel_err
against the default's gradients.
(3) Timings: spatial attention Triton forward and backward (both backwards: triton_bwd_ms and
triton_bwd_deterministic_ms, the latter the two-kernel backward of earlier runs) vs the chunked reference,
F.scaled_dot_product_attention (memory-efficient backend, Q/K zero-padded to 8) and torch.compile
of the reference's chunk step; AdaIN achieved bandwidth against the device's own copy bandwidth (measured first:
bytes read plus written by a large device-to-device copy).

    python3 bench/gpu/kernels.py --out OUT/kernels.json [--dry-run]
"""
from __future__ import annotations

import importlib
import time

import _part  # first: with --dry-run it switches Triton's interpreter on before drgan.kernels loads
from _part import rel_err, time_ms
import torch
import torch.nn.functional as F

from drgan.config import preset
from drgan.kernels import adain, adain_ref, channel_attention, channel_attention_ref, spatial_attention
from drgan.kernels.spatial_attention import fp8_pv_unsupported, spatial_attention_grads_ref, spatial_attention_ref
from drgan.kernels.spatial_attention_triton import tuners
from drgan.runtime import deterministic_algorithms

SPATIAL_SHAPES = list(preset("paper-1280").attention_shapes)  # (N, Dqk, Dv), batch 1
CHANNEL_SHAPES = [(512, 6400), (256, 25600), (128, 102400)]  # (C, N), batch 1
ADAIN_SHAPES = [(80, 512), (160, 256), (320, 128), (640, 64)]  # (side, C)
ADAIN_BATCH = 8
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # timed in the first
BACKWARD_CHECK_MAX_N = 25600
CHECK_ROWS = 4096  # query rows (dq) and key columns (dk, dv) compared at N > BACKWARD_CHECK_MAX_N
REL_TOL = 2e-2  # max |error| / max |reference|, for bf16/fp16 outputs and gradients
FP8_REL_TOL = 0.1  # pv_fp8: e4m3 P and V, about ten times bf16's error (bench/results/fp8-pv-cpu.json)
COPY_BYTES = 1 << 31  # the bandwidth probe's source tensor: far past any L2
SDPA_QK_PAD = 8
TIME_BUDGET_S = 120  # optional baselines are skipped past this, so the part ends within gpu_check's limit
# --dry-run: one shape per branch (the first spatial shape takes the sampled-rows check), fp16
# only (the interpreter's bf16 tl.dot is wrong: numpy has no bf16).
DRY_SPATIAL_SHAPES = [(70, 4, 96), (40, 16, 64)]
DRY_BACKWARD_CHECK_MAX_N = 64
DRY_CHANNEL_SHAPES = [(16, 70)]
DRY_ADAIN_SHAPES = [(6, 8)]
DRY_DTYPES = {"fp16": torch.float16}


def copy_bandwidth(device: str) -> float:
    """Bytes per second that a large device-to-device copy moves (read plus written): the ceiling
    of a memory-bound kernel on this card, measured rather than taken from a datasheet."""
    size = COPY_BYTES if device == "cuda" else 1 << 20
    src = torch.rand(size // 4, device=device)  # random, not zeros: METHOD.md
    dst = torch.empty_like(src)
    return 2 * size / (time_ms(lambda: dst.copy_(src)) / 1e3)


def tuning_timings(run) -> dict:
    """ms of every configuration each autotuned kernel tried during `run()` (the tuning it did for
    a new shape), so a tuning space can be judged from one GPU window: {kernel: {config: ms}}."""
    for tuner in tuners.values():
        tuner.configs_timings = None
    run()
    return {name: {str(config): round(float(ms[0] if isinstance(ms, (list, tuple)) else ms), 4)
                   for config, ms in tuner.configs_timings.items()}
            for name, tuner in tuners.items() if getattr(tuner, "configs_timings", None)}


def sdpa_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The baseline: Q/K zero-padded to 8 (the smallest QK dim SDPA backends take), one head."""
    pad = max(0, SDPA_QK_PAD - q.shape[-1])
    q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
    return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=1.0)[:, 0]


def compiled_reference():
    """torch.compile of the reference's per-chunk step, looped over query chunks like the reference."""
    # The package binds the name spatial_attention to the function; fetch the module itself.
    module = importlib.import_module("drgan.kernels.spatial_attention")
    step = torch.compile(module._attend, dynamic=False)

    def run(q, k, v):
        n, rows = q.shape[1], module.chunk_rows(q)
        kf, vf = k.float(), v.float()
        return torch.cat([step(q[:, s : s + rows], kf, vf, 1.0) for s in range(0, n, rows)], 1).to(v.dtype)

    return run


def spatial_inputs(n: int, dqk: int, dv: int, dtype: torch.dtype, device: str, grad: bool = False):
    gen = torch.Generator(device=device).manual_seed(n)
    # DANet applies no 1/sqrt(d) scale: 0.5-std projections keep the scores in a realistic range.
    q = (torch.randn(1, n, dqk, device=device, generator=gen) * 0.5).to(dtype)
    k = (torch.randn(1, n, dqk, device=device, generator=gen) * 0.5).to(dtype)
    v = torch.randn(1, n, dv, device=device, generator=gen).to(dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def sampled_rows(n: int, device: str) -> torch.Tensor:
    """The first and last CHECK_ROWS / 4 rows, where ragged tiles and both ends of the key range
    show, and CHECK_ROWS / 2 rows drawn from the rest, so that every query or key tile may be
    checked (all rows below CHECK_ROWS)."""
    if n <= CHECK_ROWS:
        return torch.arange(n, device=device)
    quarter = CHECK_ROWS // 4
    middle = torch.randperm(n - 2 * quarter, generator=torch.Generator().manual_seed(n))[: CHECK_ROWS // 2] + quarter
    return torch.cat([torch.arange(quarter), middle.sort().values, torch.arange(n - quarter, n)]).to(device)


def check_spatial(n: int, dqk: int, dv: int, dtype: torch.dtype, device: str, backward_max_n: int,
                  deterministic: bool = False) -> dict:
    """Forward and (first call per shape: right after autotuning) backward against the reference;
    `deterministic`: also the deterministic backward against the default one."""
    q, k, v = spatial_inputs(n, dqk, dv, dtype, device, grad=True)
    out = spatial_attention(q, k, v, impl="triton")
    grad = torch.randn_like(out)
    got_g = torch.autograd.grad(out, (q, k, v), grad, retain_graph=deterministic)
    result = {}
    if n <= backward_max_n:
        picked = slice(None)
        want = spatial_attention_ref(q, k, v)
        want_g = torch.autograd.grad(want, (q, k, v), grad)
    else:
        # The checkpointed reference backward would take minutes: the closed-form one gives the
        # exact gradients of sampled query rows (dq) and key columns (dk, dv), and every output row.
        picked = sampled_rows(n, device)
        want, *want_g = spatial_attention_grads_ref(q, k, v, grad, picked, picked)
        with torch.no_grad():
            # At 0.5-std projections the softmax over N keys is nearly flat, so a key tile lost moves
            # the output little: a sharp one (scores x16) makes every key block count.
            sharp_q, sharp_k = q * 4, k * 4
            sharp = spatial_attention(sharp_q, sharp_k, v, impl="triton")
            result["sharp_forward_rel_err"] = rel_err(sharp[:, picked], spatial_attention_ref(sharp_q[:, picked], sharp_k, v))
    result["forward_rel_err"] = rel_err(out, want)
    for name, g, w in zip(("dq", "dk", "dv"), got_g, want_g):
        result[f"{name}_rel_err"] = rel_err(g[:, picked], w)
    if deterministic:
        with deterministic_algorithms(warn_only=True):  # warn_only: cuBLAS' workspace rule aside
            det_g = torch.autograd.grad(out, (q, k, v), grad)
        for name, g, w in zip(("dq", "dk", "dv"), det_g, got_g):
            result[f"deterministic_{name}_rel_err"] = rel_err(g, w)
    result["forward_all_finite"] = bool(torch.isfinite(out).all())  # named apart: the report says why a NaN fails
    result["pass"] = result["forward_all_finite"] and all(v <= REL_TOL for key, v in result.items() if key.endswith("rel_err"))
    return result


def gluon_skip(q: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the Gluon forward does not run on these inputs here; None where it does."""
    from drgan.kernels import spatial_attention_gluon
    from drgan.kernels.spatial_attention_triton import padded_qk

    return spatial_attention_gluon.unsupported(padded_qk(q), v)


def check_gluon(entry: dict, dtype: torch.dtype, device: str, timed: bool) -> None:
    """Adds the Gluon forward's check (and time) to a spatial entry, or why it did not run."""
    n, dqk, dv = entry["N"], entry["Dqk"], entry["Dv"]
    q, k, v = spatial_inputs(n, dqk, dv, dtype, device)
    if (reason := gluon_skip(q, v)) is not None:
        entry["gluon"] = f"skipped: {reason}"
        return
    try:
        with torch.no_grad():
            out = spatial_attention(q, k, v, impl="gluon")
            rows = sampled_rows(n, device)
            entry["gluon_forward_rel_err"] = rel_err(out[:, rows], spatial_attention_ref(q[:, rows], k, v))
            entry["gluon"] = "ran"
            if timed:
                entry["gluon_fwd_ms"] = time_ms(lambda: spatial_attention(q, k, v, impl="gluon"))
                if isinstance(entry.get("triton_fwd_ms"), float):
                    entry["gluon_speedup_vs_triton"] = entry["triton_fwd_ms"] / entry["gluon_fwd_ms"]
    except Exception as exc:  # recorded, so the rest of the part still reports
        entry["gluon"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    entry["pass"] = entry["pass"] and not entry["gluon"].startswith("failed") and \
        entry.get("gluon_forward_rel_err", 0.0) <= REL_TOL


def run_gluon(report: dict, dtypes: dict, device: str) -> None:
    """The Gluon checks on every spatial entry of `report`, in place; timed in the first dtype."""
    first = next(iter(dtypes))
    for entry in report["spatial"]:
        check_gluon(entry, dtypes[entry["dtype"]], device, timed=entry["dtype"] == first)
        _print_row("spatial", {"dtype": entry["dtype"], "N": entry["N"], "pass": entry["pass"],
                               **{k: v for k, v in entry.items() if k.startswith("gluon")}})
    report["pass"] = all(e["pass"] for part in ("spatial", "channel", "adain") for e in report[part])


def check_fp8_spatial(n: int, dqk: int, dv: int, dtype: torch.dtype, device: str) -> dict:
    """The fp8 P@V forward (pv_fp8): its error against the exact attention on the query rows
    check_spatial samples, and its time beside the kernel's (triton_fwd_ms)."""
    if reason := fp8_pv_unsupported(dtype, torch.device(device)):
        return {"fp8_pv": f"skipped: {reason}"}
    q, k, v = spatial_inputs(n, dqk, dv, dtype, device)
    rows = sampled_rows(n, device)
    with torch.no_grad():
        out = spatial_attention(q, k, v, impl="triton", pv_fp8=True)
        err = rel_err(out[:, rows], spatial_attention_ref(q[:, rows], k, v))
        ms = time_ms(lambda: spatial_attention(q, k, v, impl="triton", pv_fp8=True))
    return {"fp8_pv_rel_err": err, "fp8_pv_pass": err <= FP8_REL_TOL, "triton_fp8_pv_fwd_ms": ms}


def bench_spatial(n: int, dqk: int, dv: int, dtype: torch.dtype, device: str, deadline: float, compiled, largest_n: int) -> dict:
    q, k, v = spatial_inputs(n, dqk, dv, dtype, device, grad=True)
    timings = {}
    with torch.no_grad():
        timings["triton_fwd_ms"] = time_ms(lambda: spatial_attention(q, k, v, impl="triton"))
        timings["reference_fwd_ms"] = time_ms(lambda: spatial_attention_ref(q, k, v), rep_ms=20)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                timings["sdpa_efficient_padded_fwd_ms"] = time_ms(lambda: sdpa_padded(q, k, v))
        except RuntimeError as exc:
            timings["sdpa_efficient_padded_fwd_ms"] = f"unavailable: {str(exc).splitlines()[0]}"
        # torch.compile costs tens of seconds per shape: timed at the largest N only.
        if compiled is not None and n == largest_n and time.monotonic() < deadline:
            timings["torch_compile_reference_fwd_ms"] = time_ms(lambda: compiled(q, k, v), rep_ms=20)
        else:
            timings["torch_compile_reference_fwd_ms"] = "skipped: time budget" if compiled is not None else "not run"
    out = spatial_attention(q, k, v, impl="triton")
    grad = torch.randn_like(out)
    timings["triton_bwd_ms"] = time_ms(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True))
    timings["bwd_over_fwd"] = timings["triton_bwd_ms"] / timings["triton_fwd_ms"]
    with deterministic_algorithms(warn_only=True):
        timings["triton_bwd_deterministic_ms"] = time_ms(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True))
    timings["deterministic_bwd_over_fwd"] = timings["triton_bwd_deterministic_ms"] / timings["triton_fwd_ms"]
    sdpa = timings["sdpa_efficient_padded_fwd_ms"]
    if isinstance(sdpa, float):
        timings["speedup_vs_sdpa"] = sdpa / timings["triton_fwd_ms"]
    timings["speedup_vs_reference"] = timings["reference_fwd_ms"] / timings["triton_fwd_ms"]
    return timings


def check_channel(c: int, n: int, dtype: torch.dtype, device: str) -> dict:
    gen = torch.Generator(device=device).manual_seed(c)
    # A channels_last feature map flattened to (1, C, N): unit stride along C.
    x = (torch.randn(1, n, c, device=device, generator=gen) * 0.05).to(dtype).transpose(1, 2)
    out = channel_attention(x, impl="triton")
    result = {"forward_rel_err": rel_err(out, channel_attention_ref(x))}
    result["triton_fwd_ms"] = time_ms(lambda: channel_attention(x, impl="triton"))
    result["reference_fwd_ms"] = time_ms(lambda: channel_attention_ref(x))
    result["pass"] = result["forward_rel_err"] <= REL_TOL
    return result


def check_adain(side: int, c: int, dtype: torch.dtype, channels_last: bool, device: str, batch: int,
                peak_bytes_per_s: float) -> dict:
    gen = torch.Generator(device=device).manual_seed(side)
    x = (torch.randn(batch, c, side, side, device=device, generator=gen) + 0.5).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gamma = (1 + 0.1 * torch.randn(batch, c, device=device, generator=gen)).to(dtype)
    beta = (0.1 * torch.randn(batch, c, device=device, generator=gen)).to(dtype)
    x.requires_grad_(True)
    gamma.requires_grad_(True)
    beta.requires_grad_(True)
    out = adain(x, gamma, beta, impl="triton")
    want = adain_ref(x, gamma, beta)
    grad = torch.randn_like(out)
    got_g = torch.autograd.grad(out, (x, gamma, beta), grad)
    want_g = torch.autograd.grad(want, (x, gamma, beta), grad)
    result = {"forward_rel_err": rel_err(out, want), "layout_kept": out.stride() == x.stride()}
    for name, g, w in zip(("dx", "dgamma", "dbeta"), got_g, want_g):
        result[f"{name}_rel_err"] = rel_err(g, w)
    result["pass"] = result["layout_kept"] and all(v <= REL_TOL for key, v in result.items() if key.endswith("rel_err"))
    with torch.no_grad():
        ms = time_ms(lambda: adain(x, gamma, beta, impl="triton"))
        result["triton_fwd_ms"] = ms
        result["reference_fwd_ms"] = time_ms(lambda: adain_ref(x, gamma, beta))
    # Roofline traffic: read x once, write y once. The kernel reads x twice (statistics, then the
    # affine), so 2/3 of the peak is its ceiling unless the second read hits L2.
    useful = 2 * x.numel() * x.element_size()
    result["useful_GBps"] = useful / ms / 1e6
    result["roofline_fraction"] = useful / (ms / 1e3) / peak_bytes_per_s
    return result


def run(device: str, dtypes: dict, spatial_shapes, channel_shapes, adain_shapes, adain_batch: int,
        backward_max_n: int, compile_baseline: bool, save=lambda report: None) -> dict:
    """Every check and timing; `save(report)` after each spatial shape, so that a crash or a timeout
    later keeps what was measured (the N = 102,400 figures among them)."""
    deadline = time.monotonic() + TIME_BUDGET_S
    largest_n = max(shape[0] for shape in spatial_shapes)
    report = {
        "device": _part.device_name(device),
        "torch": torch.__version__,
        "rel_tol": REL_TOL,
        "spatial": [],
        "channel": [],
        "adain": [],
        "tuning_ms": [],  # median ms of every configuration the autotuner tried, per shape
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        pass
    compiled = compiled_reference() if compile_baseline else None
    peak = copy_bandwidth(device)
    report["copy_GBps"] = peak / 1e9
    print(f"device-to-device copy: {peak / 1e9:.0f} GB/s (read + written)", flush=True)
    for index, (dname, dtype) in enumerate(dtypes.items()):
        for n, dqk, dv in spatial_shapes:
            entry = {"dtype": dname, "N": n, "Dqk": dqk, "Dv": dv}

            def checks() -> None:
                entry.update(check_spatial(n, dqk, dv, dtype, device, backward_max_n, deterministic=index == 0))
                if index == 0:  # the fp8 forward's check, tuning and time: in the first dtype
                    try:  # its first GPU run: a failure is recorded, the bf16 figures still come
                        entry.update(check_fp8_spatial(n, dqk, dv, dtype, device))
                    except Exception as exc:
                        entry.update(fp8_pv_error=f"{type(exc).__name__}: {exc}"[:500], fp8_pv_pass=False)
                    entry["pass"] = entry["pass"] and entry.get("fp8_pv_pass", True)

            tried = tuning_timings(checks)
            report["tuning_ms"] += [{"dtype": dname, "N": n, "Dqk": dqk, "Dv": dv, "kernel": name, "config": config, "ms": ms}
                                    for name, timings in tried.items() for config, ms in timings.items()]
            # Timings in the first dtype only: the others run the same kernels at the same speed.
            if index == 0:
                entry.update(bench_spatial(n, dqk, dv, dtype, device, deadline, compiled, largest_n))
            report["spatial"].append(entry)
            _print_row("spatial", entry)
            report["autotuned"] = _autotuned()
            save(report)
        for c, n in channel_shapes:
            entry = {"dtype": dname, "C": c, "N": n, **check_channel(c, n, dtype, device)}
            report["channel"].append(entry)
            _print_row("channel", entry)
        for side, c in adain_shapes:
            for channels_last in (False, True):
                entry = {"dtype": dname, "shape": [adain_batch, c, side, side], "channels_last": channels_last,
                         **check_adain(side, c, dtype, channels_last, device, adain_batch, peak)}
                report["adain"].append(entry)
                _print_row("adain", entry)
    report["autotuned"] = _autotuned()
    report["pass"] = all(e["pass"] for part in ("spatial", "channel", "adain") for e in report[part])
    return report


def _autotuned() -> dict:
    """What the autotuner chose per launch and key (N, DQK, DV, dtypes...): empty in the interpreter."""
    return {name: {str(key): str(config) for key, config in tuner.cache.items()} for name, tuner in tuners.items()}


def _print_row(part: str, entry: dict) -> None:
    cells = [f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in entry.items()]
    print(f"{'PASS' if entry['pass'] else 'FAIL'} {part:8s} " + " ".join(cells), flush=True)


def main() -> None:
    args = _part.arguments(__doc__)
    if args.dry_run:
        dtypes, device = DRY_DTYPES, "cpu"
        report = run(device, dtypes, DRY_SPATIAL_SHAPES, DRY_CHANNEL_SHAPES, DRY_ADAIN_SHAPES, 2,
                     DRY_BACKWARD_CHECK_MAX_N, compile_baseline=False, save=lambda r: _part.write(args.out, r, True))
    else:
        dtypes, device = DTYPES, "cuda"
        report = run(device, dtypes, SPATIAL_SHAPES, CHANNEL_SHAPES, ADAIN_SHAPES, ADAIN_BATCH,
                     BACKWARD_CHECK_MAX_N, compile_baseline=True, save=lambda r: _part.write(args.out, r, False))
    _part.write(args.out, report, args.dry_run)
    run_gluon(report, dtypes, device)
    _part.write(args.out, report, args.dry_run)
    print(f"{'all checks passed' if report['pass'] else 'SOME CHECKS FAILED'}; report in {args.out}")
    raise SystemExit(0 if report["pass"] else 1)


if __name__ == "__main__":
    main()
