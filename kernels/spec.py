"""One description of each Triton kernel, declared beside it, from which the compile check
(kernels/compile_check.py) and the native build (native/gen_kernels.py) derive what they compile."""
from __future__ import annotations

from dataclasses import dataclass, field

import triton

INPUT = "input"  # pointee type of a tensor in the op's input dtype (fp16, bf16 or fp32)


@dataclass(frozen=True)
class Layout:
    unit: tuple[str, ...] = ()                        # stride arguments a launch passes as 1
    meta: dict[str, int] = field(default_factory=dict)  # constexprs the layout fixes (its tile)


@dataclass(frozen=True)
class KernelSpec:
    name: str                               # variant names: '<name> <dtype> ...'
    fn: object                              # the @triton.jit function
    pointers: dict[str, str]                # pointer argument -> pointee type ('fp32', or INPUT)
    floats: tuple[str, ...] = ()            # fp32 scalars; every other runtime argument is an i32
    configs: tuple[triton.Config, ...] = field(default_factory=lambda: (triton.Config({}),))  # tiles, warps, stages
    layouts: dict[str, Layout] = field(default_factory=lambda: {"contiguous": Layout()})

    def types(self, dtype: str) -> dict[str, str]:
        """Triton type of every runtime argument for inputs of `dtype`."""
        pointee = {arg: dtype if kind == INPUT else kind for arg, kind in self.pointers.items()}
        return {arg: f"*{pointee[arg]}" if arg in pointee else "fp32" if arg in self.floats else "i32"
                for arg in self.fn.arg_names}
