"""Compile every Triton kernel, for each tuning configuration and dtype, to a cubin without a GPU.

The CPU interpreter accepts programs the GPU compiler rejects (a `tl.dot` with K < 16, a tile
that does not fit shared memory), so this lowers each kernel the way a launch would: pointers
16-byte aligned, unit strides specialized to the constant 1. Run it with TRITON_INTERPRET unset
(under the interpreter `triton.jit` yields functions that cannot be compiled):

    python -m drgan.kernels.compile_check            # sm_90 and sm_80, exits 1 on any failure
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget

from drgan.kernels import adain_triton, channel_attention_triton, spatial_attention_triton

DTYPES = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
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


def _typed(fn, pointers: dict[str, str], floats: tuple[str, ...] = ()) -> dict[str, str]:
    """Every argument an i32 unless named a pointer (with its type) or a float."""
    return {arg: pointers.get(arg, "fp32" if arg in floats else "i32") for arg in fn.arg_names}


def spatial_variants() -> list[Variant]:
    mod = spatial_attention_triton
    out = []
    for dtype, ptr in DTYPES.items():
        precision = mod.dot_precision(TORCH_DTYPES[dtype])
        for block_d in (16, 64, 128):
            if dtype == "fp32" and block_d > mod.MAX_QK_DIM_FP32:
                continue  # refused by spatial_attention._triton_unsupported
            unit = {"stride_qd": 1, "stride_kd": 1, "stride_vd": 1, "BLOCK_D": block_d, "PRECISION": precision}
            for config in mod.FWD_CONFIGS:
                fn = mod._fwd_kernel
                types = _typed(fn, {"Q": ptr, "K": ptr, "V": ptr, "O": ptr, "LSE": "*fp32"}, ("qk_scale",))
                out.append(Variant(f"spatial_fwd {dtype} D{block_d} {config}", fn, types,
                                   {**unit, "stride_od": 1, **config.kwargs}, config.num_warps, config.num_stages,
                                   f"spatial_fwd {dtype} D{block_d}", dtype, block_d))
            for config in mod.BWD_CONFIGS:
                common = {"Q": ptr, "K": ptr, "V": ptr, "DO": ptr, "LSE": "*fp32", "DELTA": "*fp32"}
                fn = mod._bwd_dkdv_kernel
                types = _typed(fn, {**common, "DK_PART": "*fp32", "DV_OUT": ptr}, ("qk_scale", "scale"))
                out.append(Variant(f"spatial_dkdv {dtype} D{block_d} {config}", fn, types,
                                   {**unit, "stride_gd": 1, "stride_xd": 1, **config.kwargs},
                                   config.num_warps, config.num_stages, f"spatial_dkdv {dtype} D{block_d}", dtype, block_d))
                fn = mod._bwd_dq_kernel
                types = _typed(fn, {**common, "DQ_PART": "*fp32"}, ("qk_scale", "scale"))
                out.append(Variant(f"spatial_dq {dtype} D{block_d} {config}", fn, types,
                                   {**unit, "stride_gd": 1, **config.kwargs}, config.num_warps, config.num_stages,
                                   f"spatial_dq {dtype} D{block_d}", dtype, block_d))
        fn = mod._bwd_delta_kernel
        out.append(Variant(f"spatial_delta {dtype}", fn, _typed(fn, {"O": ptr, "DO": ptr, "DELTA": "*fp32"}),
                           {"stride_od": 1, "stride_gd": 1, "BLOCK_M": 64, "BLOCK_DV": 64}, dtype=dtype))
    return out


def channel_variants() -> list[Variant]:
    mod = channel_attention_triton
    out = []
    for dtype, ptr in DTYPES.items():
        precision = spatial_attention_triton.dot_precision(TORCH_DTYPES[dtype])
        # A channels_last map flattened to (B, C, N) has unit stride along C; a contiguous one along N.
        for layout, unit in (("contiguous", "stride_xn"), ("channels_last", "stride_xc")):
            fn = mod._gram_kernel
            out.append(Variant(f"channel_gram {dtype} {layout}", fn, _typed(fn, {"X": ptr, "E_PART": "*fp32"}),
                               {unit: 1, **mod.GRAM_META, "PRECISION": precision}, mod.NUM_WARPS, mod.NUM_STAGES,
                               dtype=dtype))
            fn = mod._apply_kernel
            out_unit = unit.replace("x", "o")
            out.append(Variant(f"channel_apply {dtype} {layout}", fn, _typed(fn, {"X": ptr, "E": "*fp32", "OUT": ptr}),
                               {unit: 1, out_unit: 1, **mod.APPLY_META, "PRECISION": precision},
                               mod.NUM_WARPS, mod.NUM_STAGES, dtype=dtype))
    fn = mod._sum_parts_kernel
    out.append(Variant("channel_sum fp32", fn, _typed(fn, {"PART": "*fp32", "OUT": "*fp32"}), mod.SUM_META,
                       mod.NUM_WARPS, 1, dtype="fp32"))
    return out


def adain_variants() -> list[Variant]:
    mod = adain_triton
    out = []
    for dtype, ptr in DTYPES.items():
        for channels_last in (False, True):
            layout = "channels_last" if channels_last else "contiguous"
            axis = "c" if channels_last else "p"
            meta = mod.tile(channels_last)
            for backward in (False, True):
                fn = mod._reduce_kernel
                stats = "*fp32" if backward else ptr
                types = _typed(fn, {"X": ptr, "DY": ptr, "SHIFT_OR_MEAN": stats, "RSTD": stats, "PART": "*fp32"})
                out.append(Variant(f"adain_reduce {dtype} {layout} backward={backward}", fn, types,
                                   {f"stride_x{axis}": 1, f"stride_g{axis}": 1, "BACKWARD": backward, **meta},
                                   mod.NUM_WARPS, dtype=dtype))
            fn = mod._forward_kernel
            types = _typed(fn, {"X": ptr, "GAMMA": ptr, "BETA": ptr, "Y": ptr, "PART": "*fp32",
                                "MEAN": "*fp32", "RSTD": "*fp32"}, ("eps",))
            out.append(Variant(f"adain_forward {dtype} {layout}", fn, types,
                               {f"stride_x{axis}": 1, f"stride_y{axis}": 1, **meta}, mod.NUM_WARPS, dtype=dtype))
            fn = mod._backward_kernel
            types = _typed(fn, {"X": ptr, "DY": ptr, "GAMMA": ptr, "MEAN": "*fp32", "RSTD": "*fp32", "PART": "*fp32",
                                "DX": ptr, "DGAMMA": "*fp32", "DBETA": "*fp32"})
            out.append(Variant(f"adain_backward {dtype} {layout}", fn, types,
                               {f"stride_x{axis}": 1, f"stride_g{axis}": 1, f"stride_d{axis}": 1, **meta},
                               mod.NUM_WARPS, dtype=dtype))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=TARGETS, help="compute capability (repeatable; default all)")
    parser.add_argument("--dtype", action="append", choices=tuple(DTYPES), help="input dtype (repeatable; default all)")
    parser.add_argument("--qk-block", type=int, action="append", choices=(16, 64, 128),
                        help="spatial attention padded Q/K width (repeatable; default all)")
    args = parser.parse_args()
    failures = check(tuple(args.arch or TARGETS), tuple(args.dtype or DTYPES), tuple(args.qk_block or (16, 64, 128)))
    for line in failures:
        print(line, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
