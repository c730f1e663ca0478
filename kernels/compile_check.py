"""Compile every Triton kernel, for each tuning configuration and dtype, to a cubin without a GPU.

The CPU interpreter accepts programs the GPU compiler rejects (a `tl.dot` with K < 16, a tile
that does not fit shared memory), so this lowers each kernel for sm_90 and sm_80: the matrix of
variants (every kernel, configuration, dtype and layout; pointers 16-byte aligned, unit strides
folded to 1) proves that everything compiles. `--launches` compiles the spatial attention exactly
as the host code launches it at the paper's shapes (drgan.kernels.launches: same specialization
of sizes and strides, the autotuner's configurations for those sizes) and checks the main loops of
the forward and backward kernels in the sm_90a SASS (drgan.kernels.sass): Hopper tensor cores, no
two-byte loads, one exponential per score, no spills, registers under REGISTER_CAP; the same for
the Gluon forward (drgan.kernels.spatial_attention_gluon) at the shapes it supports, its consumer
loop within the consumer partition's register budget. Run it with TRITON_INTERPRET unset
(under the interpreter `triton.jit` yields functions that cannot be compiled):

    python -m drgan.kernels.compile_check              # the matrix, sm_90 and sm_80; exit 1 on any failure
    python -m drgan.kernels.compile_check --launches [--json OUT.json]   # launches and their SASS
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget

from drgan.config import PRESETS
from drgan.runtime import deterministic_algorithms
from drgan.kernels import (
    adain_triton,
    channel_attention_triton,
    launches,
    sass,
    spatial_attention_gluon,
    spatial_attention_triton,
)
from drgan.kernels.spec import KernelSpec

DTYPES = ("fp16", "bf16", "fp32")
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TARGETS = (90, 80)
# Shared memory per block the hardware grants (opt-in maximum): H100 227 KB, A100 163 KB.
MAX_SHARED = {90: 232448, 80: 166912}


@dataclass
class Variant:
    name: str                   # kernel and the choices that made this variant
    fn: object                  # the triton.JITFunction
    types: dict[str, str]       # argument -> triton type ('*fp16', 'i32', 'fp32', ...)
    constexprs: dict[str, object] = field(default_factory=dict)  # argument -> constant (1 for unit strides)
    num_warps: int = 4
    num_stages: int = 3
    tuned: str = ""             # autotuned kernels: the group whose configurations the autotuner picks from
    dtype: str = ""             # fp16 | bf16 | fp32
    qk_block: int = 0           # spatial attention: the padded Q/K width BLOCK_D
    aligned: tuple[str, ...] | None = None  # arguments assumed multiples of 16 (pointers: bytes); None: every pointer


def _signature(
    fn, types: dict[str, str], constexprs: dict[str, object], aligned: tuple[str, ...] | None = None
) -> tuple[dict, dict]:
    """Triton's signature and attributes; `aligned` as in Variant (what a launch with these values
    would specialize: the JIT marks 16-aligned pointers and integers divisible by 16)."""
    signature, attrs = {}, {}
    for index, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
        else:
            signature[arg] = types[arg]
            if (types[arg].startswith("*") and aligned is None) or (aligned is not None and arg in aligned):
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, attrs


def variant(spec: KernelSpec, dtype: str, layout: str = "contiguous", config: triton.Config | None = None,
            qk_block: int = 0, **choices) -> Variant:
    """`spec` for inputs of `dtype` with `layout`'s unit strides and tile, `config` (default: the spec's
    first), the padded Q/K width `qk_block` (spatial attention) and the constexpr `choices`."""
    config = config or spec.configs[0]
    tile = spec.layouts[layout]
    # A launch fills in a constexpr's default value; a compile from source must name it.
    defaults = {p.name: p.default for p in spec.fn.params if p.is_constexpr and p.has_default}
    constexprs = {**defaults, **{arg: 1 for arg in tile.unit}, **tile.meta, **config.kwargs, **choices}
    if qk_block:
        constexprs["BLOCK_D"] = qk_block
    if "PRECISION" in spec.fn.arg_names:
        constexprs["PRECISION"] = spatial_attention_triton.dot_precision(TORCH_DTYPES[dtype])
    words = [spec.name, dtype, *([layout] if len(spec.layouts) > 1 else []), *([f"D{qk_block}"] if qk_block else []),
             *(f"{k.lower()}={v}" for k, v in choices.items())]
    tuned = " ".join(words) if len(spec.configs) > 1 else ""
    name = f"{tuned} {config}" if tuned else " ".join(words)
    return Variant(name, spec.fn, spec.types(dtype), constexprs, config.num_warps, config.num_stages, tuned, dtype, qk_block)


def spatial_variants() -> list[Variant]:
    mod = spatial_attention_triton
    out = []
    for dtype in DTYPES:
        for qk_block in (16, 64, 128):
            if dtype == "fp32" and qk_block > mod.MAX_QK_DIM_FP32:
                continue  # refused by spatial_attention._triton_unsupported
            out += [variant(mod.FWD, dtype, config=config, qk_block=qk_block, QK_PADDED=True) for config in mod.FWD_CONFIGS]
            out += [variant(spec, dtype, config=config, qk_block=qk_block, QK_PADDED=True)
                    for spec in (mod.DKDV, mod.DQ) for config in spec.configs]
            out += [variant(mod.DKDV, dtype, config=config, qk_block=qk_block, QK_PADDED=True, DQ_ATOMIC=True)
                    for config in mod.DKDV.configs]
        out.append(variant(mod.DELTA, dtype))
    return out


def channel_variants() -> list[Variant]:
    mod = channel_attention_triton
    pairs = [variant(spec, dtype, layout) for dtype in DTYPES for layout in mod.GRAM.layouts for spec in (mod.GRAM, mod.APPLY)]
    return pairs + [variant(mod.SUM, "fp32")]


def adain_variants() -> list[Variant]:
    mod = adain_triton
    out = []
    for dtype in DTYPES:
        for layout in mod.REDUCE.layouts:
            out += [variant(mod.REDUCE, dtype, layout, BACKWARD=backward) for backward in (False, True)]
            out += [variant(mod.FORWARD, dtype, layout), variant(mod.BACKWARD, dtype, layout)]
    return out


def all_variants() -> list[Variant]:
    return spatial_variants() + channel_variants() + adain_variants()


def compile_variant(variant: Variant, capability: int):
    """The compiled kernel (.asm['cubin'], .asm['ptx'], .metadata: name, shared, num_warps); raises on a
    compiler error."""
    if not isinstance(variant.fn, triton.runtime.jit.JITFunction):
        raise RuntimeError("kernels were imported under TRITON_INTERPRET=1; run this check without it")
    signature, attrs = _signature(variant.fn, variant.types, variant.constexprs, variant.aligned)
    source = triton.compiler.ASTSource(fn=variant.fn, signature=signature, constexprs=variant.constexprs, attrs=attrs)
    return triton.compile(
        source,
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": variant.num_warps, "num_stages": variant.num_stages},
    )


def check(capabilities=TARGETS, dtypes=tuple(DTYPES), qk_blocks=(16, 64, 128), verbose: bool = True) -> list[str]:
    """Compile the selected variants for every target; returns one line per failure.

    A tuned configuration that exceeds shared memory is only reported: the autotuner skips it at
    launch. It fails when no configuration of its group fits.
    """
    variants = [v for v in all_variants() if v.dtype in dtypes and (not v.qk_block or v.qk_block in qk_blocks)]
    failures = []
    for capability in capabilities:
        fitting: dict[str, int] = {}
        for variant in variants:
            start = time.perf_counter()
            try:
                kernel = compile_variant(variant, capability)
                assert kernel.asm["cubin"], "empty cubin"
                shared = kernel.metadata.shared
                if shared > MAX_SHARED[capability] and not variant.tuned:
                    raise RuntimeError(f"needs {shared} B of shared memory, sm_{capability} has {MAX_SHARED[capability]}")
                fits = shared <= MAX_SHARED[capability]
                status = f"ok  shared {shared:6d} B" + ("" if fits else " (too large: the autotuner skips it)")
                if variant.tuned:
                    fitting[variant.tuned] = fitting.get(variant.tuned, 0) + fits
            except Exception as exc:  # report every variant, not just the first failure
                status = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                failures.append(f"sm_{capability} {variant.name}: {status}")
            if verbose:
                print(f"sm_{capability} {variant.name:60.60s} {status} ({time.perf_counter() - start:.1f} s)", flush=True)
        failures += [f"sm_{capability} {group}: no configuration fits in shared memory"
                     for group, count in fitting.items() if count == 0]
    return failures


# Registers per thread an attention kernel may use: below ptxas' ceiling of 255, where it starts
# trading registers for recomputation and spills.
REGISTER_CAP = 240
LAUNCH_BATCH = 8  # the synthesis batch the paper-1280 numbers are measured at


def paper_spatial_shapes() -> list[tuple[int, int, int]]:
    """(N, Dqk, Dv) of each SCA block of paper-1280, coarse to fine: 6,400 / 25,600 / 102,400."""
    return list(PRESETS["paper-1280"].attention_shapes)


def spatial_launches(n: int, dqk: int, dv: int, batch: int, dtype: torch.dtype) -> list[launches.Launch]:
    """Every kernel launch of one spatial attention forward and backward on the tokens of
    channels_last maps ((B, N, C) views, unit stride along C), as the SCA module calls it, then
    the deterministic backward's and the fp8 P@V forward's (pv_fp8)."""
    q, k = (torch.empty(batch, n, dqk, dtype=dtype, device="meta", requires_grad=True) for _ in range(2))
    v = torch.empty(batch, n, dv, dtype=dtype, device="meta", requires_grad=True)
    with launches.captured_launches() as recorded:
        out = spatial_attention_triton.spatial_attention_triton(q, k, v)
        out.backward(torch.empty_like(out), retain_graph=True)
        with deterministic_algorithms():
            out.backward(torch.empty_like(out))
        with torch.no_grad():
            spatial_attention_triton.spatial_attention_triton(q, k, v, pv_fp8=True)
    return recorded


def gluon_launches(n: int, dqk: int, dv: int, batch: int, dtype: torch.dtype) -> list[launches.Launch]:
    """The Gluon forward's launch for these shapes, Q/K padded as _SpatialAttention pads them."""
    q = spatial_attention_triton.padded_qk(torch.empty(batch, n, dqk, dtype=dtype, device="meta"))
    v = torch.empty(batch, n, dv, dtype=dtype, device="meta")
    with launches.captured_launches() as recorded:
        spatial_attention_gluon.forward(q, q, v, spatial_attention_triton.LOG2E)
    return recorded


def _loop_problems(code: sass.Sass, scores: int, rescales: int) -> list[str]:
    """The checks every attention main loop must pass: Hopper tensor cores, no two-byte memory
    accesses, one exponential per score (plus the running-sum rescales), no spills, registers
    under REGISTER_CAP. `scores` and `rescales`: per thread and loop step."""
    problems = []
    if not code.loop_count("HGMMA"):
        problems.append("no HGMMA (Hopper warpgroup MMA) in the main loop")
    if narrow := code.loop_count("LDG.E.U16") + code.loop_count("LDG.E.S16") + code.loop_count("STS.U16"):
        problems.append(f"{narrow} two-byte loads/stores in the main loop (unpadded Q/K)")
    if (ex2 := code.loop_count("MUFU.EX2")) != scores + rescales:
        problems.append(f"{ex2} MUFU.EX2 per loop step where {scores} scores + {rescales} rescales need {scores + rescales}")
    if code.stack or code.spill_instructions:
        problems.append(f"spills ({code.stack} B of stack, {code.spill_instructions} STL/LDL)")
    if code.registers > REGISTER_CAP:
        problems.append(f"{code.registers} registers, over the cap of {REGISTER_CAP}")
    return problems


def gluon_problems(launch: launches.Launch, code: sass.Sass) -> list[str]:
    """What keeps the Gluon forward's consumer loop (code read with innermost=True) off the floor."""
    block_m, block_n = launch.constexpr("BLOCK_M"), launch.constexpr("BLOCK_N")
    # Per consumer warpgroup thread: its share of the scores, and one rescale per row it holds
    # (a warp's 16-row MMA slab gives each thread two rows).
    problems = _loop_problems(code, block_m * block_n // 128, block_m // 32)
    budget = spatial_attention_gluon.WORKER_REGS.value[0]
    if code.loop_registers > budget:
        problems.append(f"the consumer loop names {code.loop_registers} registers, over its partition's {budget}")
    return problems


def _fp8_pv(launch: launches.Launch) -> bool:
    return launch.fn is spatial_attention_triton._fwd_kernel and launch.args[2].dtype == torch.float8_e4m3fn


def _atomic_dq(launch: launches.Launch) -> bool:
    return launch.fn is spatial_attention_triton._bwd_dkdv_kernel and bool(launch.kwargs.get("DQ_ATOMIC"))


def attention_problems(launch: launches.Launch, code: sass.Sass) -> list[str]:
    """What keeps a spatial attention launch (forward, dK/dV or dQ) off the hardware's floor, read
    from its main loop's sm_90a SASS."""
    mod = spatial_attention_triton
    block_m, block_n, warps, dv, block_dv = (launch.constexpr(a) for a in ("BLOCK_M", "BLOCK_N", "num_warps", "DV", "BLOCK_DV"))
    scores = block_m * block_n // (32 * warps)  # per thread and loop step
    # The forward rescales its running sums once per row and step; a warp's 16-row MMA slab gives
    # each thread two rows. The backward reads the saved log-sum-exp instead.
    rescales = block_m // (8 * warps) if launch.fn is mod._fwd_kernel else 0
    problems = _loop_problems(code, scores, rescales)
    if _fp8_pv(launch) and not code.loop_count("QGMMA"):
        problems.append("fp8 V without QGMMA (fp8 warpgroup MMA) in the main loop")
    if _atomic_dq(launch) and not code.loop_count("RED"):
        problems.append("atomic dQ without RED (fire-and-forget global reductions) in the main loop")
    widest = max(c.kwargs["BLOCK_DV"] for fn, configs in mod.TUNED.values() if fn is launch.fn for c in configs)
    if block_dv < dv <= widest:
        problems.append("Dv split over programs that each recompute every exponential, where a tile holds it whole")
    return problems


_TUNED_KERNELS = {fn for fn, _ in spatial_attention_triton.TUNED.values()}


def flop_shares(shapes: list[tuple[int, int, int]]) -> list[float]:
    """Each SCA block's share of the spatial attention's arithmetic (N^2 (Dqk + Dv) each)."""
    flops = [n * n * (dqk + dv) for n, dqk, dv in shapes]
    return [f / sum(flops) for f in flops]


# Blocks with at least this share of the attention's arithmetic must pass the SASS checks; the
# others (paper-1280: N = 6,400, Dv = 512, 1.5 %) are only reported: Dv = 512 cannot be held in
# one tile, and their tiles are chosen by measurement.
CHECKED_SHARE = 0.05


def _launch_row(launch: launches.Launch, code: sass.Sass, config: dict, n: int, dqk: int, dv: int, share: float,
                ops: tuple[str, ...], kind: dict, **fields) -> dict:
    """A launch's row: `kind` (pv or impl), its shape and `fields`, configuration, resources and main-loop counts of `ops`."""
    return {"kernel": launch.name, **kind, "N": n, "Dqk": dqk, "Dv": dv, **fields, "flop_share": round(share, 4), "config": config,
            "registers": code.registers, **({"loop_registers": code.loop_registers} if "impl" in kind else {}),
            "stack": code.stack, "shared": code.shared, "loop": {op: code.loop_count(op) for op in ops}}


def _report(row: dict, name: str, detail: str, failures: list[str], capability: int) -> None:
    """Print `row` (its problems indented below it); a block over CHECKED_SHARE fails on them."""
    if row["flop_share"] >= CHECKED_SHARE:
        failures += [f"sm_{capability} {row['kernel']} N={row['N']} {row['config']}: {p}" for p in row.get("problems", [])]
    loop = " ".join(f"{op}={c}" for op, c in row["loop"].items())
    print(f"sm_{capability} {name:18s} N={row['N']:<6d} Dqk={row['Dqk']:<3d} Dv={row['Dv']:<3d} {row['config']} "
          f"regs {row['registers']}" + (f" (loop {row['loop_registers']})" if "loop_registers" in row else "")
          + f" stack {row['stack']} smem {row['shared']} | loop {loop}" + detail
          + "".join(f"\n    PROBLEM: {p}" for p in row.get("problems", [])), flush=True)


def check_launches() -> tuple[list[str], list[dict]]:
    """Compile the spatial attention's bf16 launches at the paper's shapes for sm_90a; returns the
    SASS problems of the tuned kernels (one line each, blocks over CHECKED_SHARE) and a row per
    launch (resources and main-loop instruction mix), each printed as it is made."""
    capability, dtype = 90, torch.bfloat16
    failures, rows = [], []
    shapes = paper_spatial_shapes()
    for (n, dqk, dv), share in zip(shapes, flop_shares(shapes)):
        for launch in spatial_launches(n, dqk, dv, LAUNCH_BATCH, dtype):
            config = {a: launch.kwargs[a] for a in ("BLOCK_M", "BLOCK_N", "BLOCK_DV", "num_warps", "num_stages", "maxnreg",
                                                    "LAZY_RESCALE") if launch.kwargs.get(a) is not None}
            code = sass.inspect(launches.compile_launch(launch, capability))
            dq = {"dq": "atomic" if _atomic_dq(launch) else "kernel"} if launch.fn is spatial_attention_triton._bwd_dkdv_kernel else {}
            row = _launch_row(launch, code, config, n, dqk, dv, share,
                              ("MUFU.EX2", "HGMMA", "QGMMA", "LDGSTS", "LDG.E", "STS", "BAR.SYNC", "RED"),
                              {"pv": "fp8" if _fp8_pv(launch) else "input"}, **dq)
            detail = ""
            if launch.fn in _TUNED_KERNELS:
                scores = config["BLOCK_M"] * config["BLOCK_N"] // (32 * config["num_warps"])
                dv_tiles = triton.cdiv(dv, config["BLOCK_DV"]) if "BLOCK_DV" in config else 1
                row["exp_per_score"] = round(code.loop_count("MUFU.EX2") * dv_tiles / scores, 3)
                row["problems"] = attention_problems(launch, code)
                detail = f" | exp/score {row['exp_per_score']}"
            rows.append(row)
            _report(row, launch.name + (" fp8" if _fp8_pv(launch) else "") + (" atomic" if _atomic_dq(launch) else ""),
                    detail, failures, capability)
        if spatial_attention_gluon.MAX_V_DIM < dv:
            continue
        for launch in gluon_launches(n, dqk, dv, LAUNCH_BATCH, dtype):
            config = {a: launch.kwargs[a] for a in ("BLOCK_M", "BLOCK_N", "STAGES", "num_warps")}
            config["worker_warps"] = list(spatial_attention_gluon.WORKER_WARPS.value)
            config["worker_regs"] = list(spatial_attention_gluon.WORKER_REGS.value)
            code = sass.inspect(launches.compile_launch(launch, capability), innermost=True)
            row = _launch_row(launch, code, config, n, dqk, dv, share,
                              ("MUFU.EX2", "HGMMA", "WARPGROUP.DEPBAR", "SYNCS", "BAR.SYNC"), {"impl": "gluon"})
            row["exp_per_score"] = round(code.loop_count("MUFU.EX2") / (config["BLOCK_M"] * config["BLOCK_N"] // 128), 3)
            # Exponentials ptxas issues while the step's P @ V is still in flight (between the
            # wait for S and the wait for P @ V); the rest wait for it.
            row["ex2_under_pv"] = code.between("MUFU.EX2", "WARPGROUP.DEPBAR.LE", "WARPGROUP.DEPBAR.LE")
            row["problems"] = gluon_problems(launch, code)
            rows.append(row)
            _report(row, launch.name, f" | exp/score {row['exp_per_score']} | exp under P@V {row['ex2_under_pv']}",
                    failures, capability)
    return failures, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", action="store_true",
                        help="compile the spatial attention as launched at the paper's shapes and check its sm_90a SASS")
    parser.add_argument("--json", help="with --launches: write every launch's resources and loop mix here")
    parser.add_argument("--arch", type=int, action="append", choices=TARGETS, help="compute capability (repeatable; default all)")
    parser.add_argument("--dtype", action="append", choices=tuple(DTYPES), help="input dtype (repeatable; default all)")
    parser.add_argument("--qk-block", type=int, action="append", choices=(16, 64, 128),
                        help="spatial attention padded Q/K width (repeatable; default all)")
    args = parser.parse_args()
    if args.launches:
        failures, rows = check_launches()
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"triton": triton.__version__, "target": "sm_90a", "batch": LAUNCH_BATCH, "launches": rows}, f, indent=1)
        for line in failures:
            print(line, file=sys.stderr)
        sys.exit(1 if failures else 0)
    failures = check(tuple(args.arch or TARGETS), tuple(args.dtype or DTYPES), tuple(args.qk_block or (16, 64, 128)))
    for line in failures:
        print(line, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
