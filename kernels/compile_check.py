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
    constexprs = {**{arg: 1 for arg in tile.unit}, **tile.meta, **config.kwargs, **choices}
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
            out += [variant(mod.FWD, dtype, config=config, qk_block=qk_block) for config in mod.FWD_CONFIGS]
            for config in mod.BWD_CONFIGS:
                out += [variant(spec, dtype, config=config, qk_block=qk_block) for spec in (mod.DKDV, mod.DQ)]
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
