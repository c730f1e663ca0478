"""Choosing between the PyTorch reference and the Triton kernel of an op.

`impl='sdpa'` routes spatial attention through `F.scaled_dot_product_attention` (what the ONNX
exporter turns into the standard `Attention` op; also a benchmark baseline); ops without such a
path run their reference. `impl='auto'` takes Triton for CUDA tensors whose shape and dtype the kernel supports, and the
reference otherwise (always on CPU). `impl='triton'` on an unsupported request raises one clear
error. `impl='gluon'` (spatial attention only, opt-in: unmeasured, `auto` never picks it) runs the
Hopper Gluon forward with the Triton backward; it needs CUDA tensors, and raises where the kernel
does not apply. Setting TRITON_INTERPRET=1 before import lets the Triton kernels run on CPU tensors (tests).
"""
from __future__ import annotations

import os

import torch

from drgan.errors import DrganError

IMPLS = ("auto", "ref", "triton", "sdpa", "gluon")
GLUON_OPS = ("spatial_attention",)  # ops with a Gluon kernel
NETWORK_IMPLS = tuple(i for i in IMPLS if i != "gluon")  # what every op of a network runs (Gluon: one op only)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _patch_interpreter_scalars() -> None:
    """Triton 3.6's interpreter turns a scalar into int() of a 1-element array, which numpy >= 2.4
    rejects: every loop with a runtime bound failed. Take the element instead."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch


def _patch_interpreter_fp8_casts() -> None:
    """Triton 3.6's interpreter rounds to fp8 without carrying into the exponent (0.498 -> 0.25 in
    e4m3) and truncates subnormals, where the GPU's cvt.rn rounds to nearest even: convert through
    torch's float8 casts instead, so the fp8 P@V path tests the GPU's numbers."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    fp8 = {tl.float8e4nv: torch.float8_e4m3fn, tl.float8e5: torch.float8_e5m2}
    original = interpreter.InterpreterBuilder.create_fp_to_fp

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        target = fp8.get(dst_type.scalar)
        if target is None or src.dtype.scalar.primitive_bitwidth == 8:
            return original(self, src, dst_type, rounding_mode)
        wide = torch.from_numpy(np.ascontiguousarray(src.data).astype(np.float32))
        return interpreter.TensorHandle(wide.to(target).view(torch.uint8).numpy(), dst_type.scalar)

    interpreter.InterpreterBuilder.create_fp_to_fp = create_fp_to_fp


if interpreting() and triton_available():
    _patch_interpreter_scalars()
    _patch_interpreter_fp8_casts()


def resolve(op: str, impl: str, tensors: tuple[torch.Tensor, ...], unsupported: str | None) -> str:
    """Return 'ref', 'sdpa', 'triton' or 'gluon' for this call (ops without an sdpa path treat it as 'ref').

    `unsupported` is None when the Triton kernel handles these inputs, else the reason it does not.
    """
    if impl not in IMPLS:
        raise DrganError(f"{op}: impl={impl!r} is not one of {IMPLS}")
    if impl in ("ref", "sdpa"):
        return impl
    if impl == "auto":
        ok = triton_available() and unsupported is None and all(t.is_cuda for t in tensors)
        return "triton" if ok else "ref"
    if impl == "gluon" and op not in GLUON_OPS:
        raise DrganError(f"{op}: impl='gluon' exists only for {', '.join(GLUON_OPS)}")
    if not triton_available():
        raise DrganError(f"{op}: impl={impl!r} needs the triton package (pip install triton)")
    if impl == "gluon" and not all(t.is_cuda for t in tensors):
        raise DrganError(f"{op}: impl='gluon' needs CUDA tensors on a Hopper GPU (Gluon has no CPU interpreter)")
    on_device = all(t.is_cuda for t in tensors) or (interpreting() and all(t.device.type == "cpu" for t in tensors))
    if not on_device:
        raise DrganError(f"{op}: impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    if unsupported is not None:
        raise DrganError(f"{op}: impl={impl!r} does not support this call: {unsupported}")
    return impl
