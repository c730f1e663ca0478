"""Compile the kernels the C launchers call to cubin and PTX, and write the C table that describes them.

Run by the CMake build (no GPU or driver needed: Triton compiles for an explicit GPUTarget):

    python native/gen_kernels.py --out DIR --arch 80 --arch 90 --qk-block 16 --qk-block 64

Each kernel is compiled for one tile configuration per architecture, for fp16 and bf16, in up to
three layouts: two specialized the way a JIT launch with such tensors would be (unit strides folded
to the constant 1, strides and sizes divisible by 16 so loads vectorize) and a generic one that
takes any strides. The C side picks the first layout whose conditions the call meets.

Writes into DIR:
    cubin/<variant>.sm_<arch>.cubin, ptx/<variant>.ptx   every image (PTX: from the lowest arch,
                                                         JIT-compiled by the driver on newer GPUs)
    drgan_kernels.bin, drgan_kernels_blob.S              the images in one blob, embedded with .incbin
    drgan_kernel_table.h, drgan_kernel_table.c           argument indices and the image table
    drgan_kernel_constants.h                             the kernels' constants the C launchers share
    kernels.json                                         what was compiled, with its metadata
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

# The interpreter's triton.jit yields functions that cannot be compiled.
os.environ.pop("TRITON_INTERPRET", None)

from drgan.kernels import adain_triton, channel_attention_triton, spatial_attention_triton  # noqa: E402
from drgan.kernels import compile_check as cc  # noqa: E402
from drgan.kernels.spec import KernelSpec  # noqa: E402

DTYPES = ("fp16", "bf16")  # C enum order: DRGAN_FLOAT16, DRGAN_BFLOAT16; the partial sum runs in fp32
DTYPE_IDS = {"fp16": 0, "bf16": 1, "fp32": 2}
# Spatial attention tiles: Hopper takes the first (large) tuning configuration; sm_80 images (and the
# PTX run on newer GPUs) take the small one, which also fits the 99 KB of consumer Ampere/Ada/Blackwell.
SPATIAL_CONFIG = {90: 0, 80: 2}
ALIGN = 64  # byte alignment of each image in the blob
# Constants of the kernels' Python side that the C launchers use: C macro -> value.
CONSTANTS = {
    "DRGAN_LOG2E": spatial_attention_triton.LOG2E,
    "DRGAN_SPATIAL_MIN_BLOCK_D": spatial_attention_triton.MIN_BLOCK_D,
    "DRGAN_SPATIAL_MAX_QK_DIM": spatial_attention_triton.MAX_QK_DIM,
    "DRGAN_CHANNEL_TARGET_PROGRAMS": channel_attention_triton.TARGET_PROGRAMS,
    "DRGAN_ADAIN_TARGET_PROGRAMS": adain_triton.TARGET_PROGRAMS,
}
PTX_ARCH = 0  # arch field of PTX images in the table


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    unit: tuple[str, ...]     # stride arguments folded to the constant 1 (the call must pass 1)
    checked: tuple[str, ...]  # integer arguments assumed divisible by 16 (the call must meet it)
    assumed: tuple[str, ...] = ()  # integer arguments divisible by 16 by construction (not checked)
    pointers: bool = True     # pointers assumed 16-byte aligned (checked)


@dataclasses.dataclass
class Kernel:
    c_name: str               # enum name in the C table
    spec: KernelSpec
    layouts: tuple[Layout, ...]
    keys: tuple[int, ...] = (0,)  # spatial attention: BLOCK_D values compiled; else one key 0
    dtypes: tuple[str, ...] = DTYPES
    choices: dict[str, object] = dataclasses.field(default_factory=dict)  # constexprs the launcher fixes


def _strides(prefix: str, axes: str) -> tuple[str, ...]:
    return tuple(f"stride_{prefix}{a}" for a in axes)


def kernels(qk_blocks: tuple[int, ...]) -> list[Kernel]:
    qk, vo = _strides("q", "bn") + _strides("k", "bn"), _strides("v", "bn") + _strides("o", "bn")
    unit_qkvo = ("stride_qd", "stride_kd", "stride_vd", "stride_od")
    out = [
        Kernel("SPATIAL_FWD", spatial_attention_triton.FWD, (
            Layout("aligned", unit_qkvo, qk + vo + ("DQK", "DV")),
            Layout("qk_unaligned", unit_qkvo, vo + ("DV",)),
            Layout("generic", (), (), pointers=False),
        ), tuple(qk_blocks), choices={"QK_PADDED": False}),  # the C API takes Q/K as the caller has them
    ]
    for c_name, spec in (("CHANNEL_GRAM", channel_attention_triton.GRAM), ("CHANNEL_APPLY", channel_attention_triton.APPLY)):
        outs = spec is channel_attention_triton.APPLY
        out.append(Kernel(c_name, spec, (
            Layout("contiguous", ("stride_xn",) + (("stride_on",) if outs else ()),
                   _strides("x", "bc") + (_strides("o", "bc") if outs else ()) + ("N",),
                   () if outs else ("chunk",)),
            Layout("channels_last", ("stride_xc",) + (("stride_oc",) if outs else ()),
                   _strides("x", "bn") + (_strides("o", "bn") if outs else ()) + ("C",),
                   () if outs else ("chunk",)),
            Layout("generic", (), (), () if outs else ("chunk",), pointers=False),
        )))
    for c_name, spec in (("ADAIN_REDUCE", adain_triton.REDUCE), ("ADAIN_FORWARD", adain_triton.FORWARD)):
        ys = spec is adain_triton.FORWARD
        # The reduction runs forward only: DY is x and its strides are not passed.
        choices = {} if ys else {"BACKWARD": False}
        out.append(Kernel(c_name, spec, (
            Layout("contiguous", ("stride_xp",) + (("stride_yp",) if ys else ()),
                   _strides("x", "bc") + (_strides("y", "bc") if ys else ()) + ("HW",), ("chunk",)),
            Layout("channels_last", ("stride_xc",) + (("stride_yc",) if ys else ()),
                   _strides("x", "bp") + (_strides("y", "bp") if ys else ()) + ("C",), ("chunk",)),
            Layout("generic", (), (), ("chunk",), pointers=False),
        ), choices=choices))
    out.append(Kernel("CHANNEL_SUM", channel_attention_triton.SUM,
                      (Layout("aligned", (), ("count",)), Layout("generic", (), (), pointers=False)), dtypes=("fp32",)))
    return out


def _variant(kernel: Kernel, dtype: str, layout: Layout, key: int, arch: int) -> cc.Variant:
    """The compile check's variant of this kernel specialized for one layout, key and arch."""
    spec = kernel.spec
    config = spec.configs[SPATIAL_CONFIG[arch]] if len(spec.configs) > 1 else None
    tile = layout.name if layout.name in spec.layouts else "contiguous"  # the tile (AdaIN's differs by layout)
    base = cc.variant(spec, dtype, tile, config, key, **kernel.choices)
    # The C launcher's conditions replace the compile check's unit strides.
    constexprs = {k: v for k, v in base.constexprs.items() if not k.startswith("stride_")}
    constexprs.update({arg: 1 for arg in layout.unit})
    pointers = tuple(a for a, t in base.types.items() if t.startswith("*")) if layout.pointers else ()
    aligned = pointers + layout.checked + layout.assumed
    name = f"{kernel.c_name.lower()}_{dtype}_{layout.name}" + (f"_d{key}" if key else "")
    return dataclasses.replace(base, name=name, constexprs=constexprs, aligned=aligned)


_KERNELS: list[Kernel] = []  # set before the worker processes fork; jobs name kernels by index


def _compile(job: tuple[int, str, int, int, int]) -> dict:
    index, dtype, layout_index, key, arch = job
    kernel = _KERNELS[index]
    layout = kernel.layouts[layout_index]
    variant = _variant(kernel, dtype, layout, key, arch)
    start = time.perf_counter()
    compiled = cc.compile_variant(variant, arch)
    meta = compiled.metadata
    if meta.global_scratch_size or meta.profile_scratch_size or meta.num_ctas != 1:
        raise RuntimeError(f"{variant.name} sm_{arch}: needs scratch memory or clusters, which the C launcher does not set up")
    fn = variant.fn
    return {
        "kernel": kernel.c_name, "dtype": dtype, "layout": layout.name, "key": key, "arch": arch,
        "variant": variant.name, "function": meta.name, "num_warps": meta.num_warps, "shared": meta.shared,
        "params": [i for i, a in enumerate(fn.arg_names) if a not in variant.constexprs],
        "param_names": [a for a in fn.arg_names if a not in variant.constexprs],
        "param_types": [variant.types[a] for a in fn.arg_names if a not in variant.constexprs],
        "consts": {a: v for a, v in variant.constexprs.items() if isinstance(v, int)},
        "unit": list(layout.unit),
        "checked": list(layout.checked) + ([a for a, t in variant.types.items() if t.startswith("*")] if layout.pointers else []),
        "cubin": compiled.asm["cubin"], "ptx": compiled.asm["ptx"], "seconds": time.perf_counter() - start,
    }


def _c_ident(arg: str) -> str:
    return arg.upper()


def write_outputs(out: Path, kernel_list: list[Kernel], results: list[dict], archs: tuple[int, ...]) -> None:
    for stale in [*out.glob("cubin/*.cubin"), *out.glob("ptx/*.ptx")]:  # images of an earlier configuration
        stale.unlink()
    (out / "cubin").mkdir(parents=True, exist_ok=True)
    (out / "ptx").mkdir(parents=True, exist_ok=True)
    blob = bytearray()

    def add(data: bytes) -> tuple[int, int]:
        blob.extend(b"\0" * (-len(blob) % ALIGN))
        offset = len(blob)
        blob.extend(data)
        return offset, len(data)

    images = []
    # PTX of the sm_80 images only: Triton targets sm_90a on Hopper, which newer GPUs cannot JIT.
    ptx_arch = 80 if 80 in archs else None
    # Specialized layouts first so the C side takes the first image that matches; then by arch.
    for r in results:
        (out / "cubin" / f"{r['variant']}.sm_{r['arch']}.cubin").write_bytes(r["cubin"])
        images.append({**r, "image_arch": r["arch"], "blob": add(r["cubin"])})
        if r["arch"] == ptx_arch:
            (out / "ptx" / f"{r['variant']}.ptx").write_text(r["ptx"])
            images.append({**r, "image_arch": PTX_ARCH, "blob": add(r["ptx"].encode() + b"\0")})

    fns = {k.c_name: k.spec.fn for k in kernel_list}
    types_of = {k.c_name: k.spec.types(k.dtypes[0]) for k in kernel_list}  # dtypes differ in pointees only
    layout_ids = {k.c_name: {lay.name: i for i, lay in enumerate(k.layouts)} for k in kernel_list}
    header = [
        "/* Generated by native/gen_kernels.py: argument indices of each kernel, in the Triton signature's order. */",
        "#ifndef DRGAN_KERNEL_TABLE_H", "#define DRGAN_KERNEL_TABLE_H", "",
        "enum drgan_kernel {",
        *[f"  DRGAN_K_{k.c_name}," for k in kernel_list], "  DRGAN_K_COUNT", "};", "",
    ]
    for k in kernel_list:
        names = fns[k.c_name].arg_names
        header += [f"enum {{ /* {k.c_name} */"] + [f"  {k.c_name}_{_c_ident(a)} = {i}," for i, a in enumerate(names)]
        header += [f"  {k.c_name}_NARGS = {len(names)}", "};"]
        header += [f"enum {{ {k.c_name}_LAYOUT_{_c_ident(n)} = {i} }};" for n, i in layout_ids[k.c_name].items()] + [""]
    header += ["#endif", ""]
    (out / "drgan_kernel_table.h").write_text("\n".join(header))
    (out / "drgan_kernel_constants.h").write_text("\n".join([
        "/* Generated by native/gen_kernels.py from the constants of the kernels (kernels/<op>_triton.py). */",
        "#ifndef DRGAN_KERNEL_CONSTANTS_H", "#define DRGAN_KERNEL_CONSTANTS_H", "",
        *[f"#define {name} {value!r}" for name, value in CONSTANTS.items()], "", "#endif", "",
    ]))

    kinds = {"i32": 1, "fp32": 2}
    order = sorted(images, key=lambda im: (im["kernel"], im["dtype"], im["key"], layout_ids[im["kernel"]][im["layout"]],
                                           -im["image_arch"]))
    src = [
        "/* Generated by native/gen_kernels.py: one entry per compiled image. */",
        '#include "runtime.h"', "",
    ]
    rows = []
    for i, im in enumerate(order):
        names = fns[im["kernel"]].arg_names
        types = types_of[im["kernel"]]
        arg_kinds = [0 if types[a].startswith("*") else kinds[types[a]] for a in names]
        consts = [int(im["consts"][a]) if a in im["consts"] else "DRGAN_RUNTIME" for a in names]
        src += [
            f"static const unsigned char params_{i}[] = {{{', '.join(map(str, im['params']))}}};",
            f"static const unsigned char kinds_{i}[] = {{{', '.join(map(str, arg_kinds))}}};",
            f"static const int consts_{i}[] = {{{', '.join(map(str, consts))}}};",
        ]
        mask = lambda args: " | ".join(f"(1ull << {names.index(a)})" for a in args) or "0"  # noqa: E731
        rows.append(
            f'  {{DRGAN_K_{im["kernel"]}, {DTYPE_IDS[im["dtype"]]}, {layout_ids[im["kernel"]][im["layout"]]}, {im["key"]}, '
            f'{im["image_arch"]}, "{im["function"]}", "{im["variant"]}", {im["blob"][0]}u, {im["blob"][1]}u, '
            f'{im["num_warps"]}, {im["shared"]}, {len(im["params"])}, params_{i}, kinds_{i}, consts_{i}, '
            f'{mask(im["unit"])}, {mask(im["checked"])}}},'
        )
    src += ["", "const drgan_image drgan_images[] = {", *rows, "};",
            f"const int drgan_image_count = {len(rows)};", ""]
    (out / "drgan_kernel_table.c").write_text("\n".join(src))

    (out / "drgan_kernels.bin").write_bytes(bytes(blob))
    (out / "drgan_kernels_blob.S").write_text(
        "/* Generated by native/gen_kernels.py: the kernel images, embedded in the library. */\n"
        '\t.section .rodata\n\t.balign 64\n\t.globl drgan_kernel_blob\n\t.hidden drgan_kernel_blob\n'
        "\t.type drgan_kernel_blob, @object\ndrgan_kernel_blob:\n"
        f'\t.incbin "{(out / "drgan_kernels.bin").resolve()}"\n'
        "\t.size drgan_kernel_blob, . - drgan_kernel_blob\n"
        '\t.section .note.GNU-stack,"",@progbits\n'
    )
    manifest = [{k: v for k, v in im.items() if k not in ("cubin", "ptx")} for im in order]
    if ptx_arch is None:
        print("gen_kernels: no sm_80 images, so no PTX: GPUs other than the listed archs get no kernels")
    (out / "kernels.json").write_text(json.dumps({"archs": list(archs), "ptx_from": ptx_arch, "images": manifest},
                                                 indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--arch", type=int, action="append", choices=sorted(SPATIAL_CONFIG),
                        help="compute capability (repeatable; default 80 and 90; PTX comes with 80)")
    parser.add_argument("--qk-block", type=int, action="append", choices=(16, 32, 64, 128),
                        help="spatial attention padded Q/K width to compile (repeatable; Q/K dims up to it)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiler processes")
    args = parser.parse_args()
    archs = tuple(sorted(set(args.arch or SPATIAL_CONFIG)))
    kernel_list = kernels(tuple(sorted(set(args.qk_block or (16, 32, 64, 128)))))
    _KERNELS[:] = kernel_list
    jobs = [(i, d, j, key, arch) for arch in archs for i, k in enumerate(kernel_list) for d in k.dtypes
            for j in range(len(k.layouts)) for key in k.keys]
    start = time.perf_counter()
    print(f"gen_kernels: compiling {len(jobs)} kernel images for sm_{', sm_'.join(map(str, archs))} "
          f"with {args.jobs} processes", flush=True)
    # fork: the children inherit the imported kernels (no CUDA is initialized in this process).
    with multiprocessing.get_context("fork").Pool(max(1, args.jobs)) as pool:
        results = pool.map(_compile, jobs, chunksize=1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_outputs(args.out, kernel_list, results, archs)
    slowest = max(results, key=lambda r: r["seconds"])
    print(f"gen_kernels: {len(results)} images in {time.perf_counter() - start:.1f} s "
          f"(slowest {slowest['variant']} sm_{slowest['arch']}: {slowest['seconds']:.1f} s) -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
