"""The kernels exactly as the host code launches them, compiled without a GPU.

A Triton launch specializes the kernel on its arguments: 16-byte aligned pointers, integers
divisible by 16 and integers equal to 1 each change the code (vector widths, cp.async pipelining,
folded strides). `captured_launches` runs the real host-side wrappers on `meta` tensors (shapes and
strides, no memory) and records every launch instead of running it; for an autotuned kernel it
records one launch per configuration the autotuner may pick for those arguments (after its
pruning). `compile_launch` then lowers a recorded launch through Triton's own argument binder,
so the cubin is the one the JIT would build on a GPU for the same tensors.

Run with TRITON_INTERPRET unset (the interpreter's kernels cannot be compiled).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.experimental.gluon._runtime import GluonASTSource
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature


@dataclass
class Launch:
    fn: JITFunction   # the kernel
    args: tuple       # positional arguments as the wrapper passed them (meta tensors, ints, floats)
    kwargs: dict      # constexprs and compile options (num_warps, num_stages, maxnreg)

    @property
    def name(self) -> str:
        return self.fn.__name__

    def constexpr(self, name: str):
        """A constexpr or runtime argument of this launch, by name."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[self.fn.arg_names.index(name)]


@contextlib.contextmanager
def captured_launches() -> Iterator[list[Launch]]:
    """Within the block, kernel launches are recorded into the yielded list and not run."""
    recorded: list[Launch] = []

    def run_jit(self, *args, grid, warmup, **kwargs):
        recorded.append(Launch(self, args, kwargs))

    def run_tuned(self, *args, **kwargs):
        kwargs.pop("grid", None)
        kwargs.pop("warmup", None)
        self.nargs = dict(zip(self.arg_names, args))
        configs = self.prune_configs(kwargs)
        for config in configs:
            recorded.append(Launch(self.fn, args, {**kwargs, **config.all_kwargs()}))
        self.best_config = configs[0]  # what the wrapper reads back after a launch
        self.nargs = None

    saved = JITFunction.run, Autotuner.run
    JITFunction.run, Autotuner.run = run_jit, run_tuned
    try:
        yield recorded
    finally:
        JITFunction.run, Autotuner.run = saved


def compile_launch(launch: Launch, capability: int):
    """The compiled kernel (.asm['cubin'], .metadata) this launch would JIT on sm_`capability`."""
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(launch.fn.signature, launch.fn.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = launch.fn._pack_args(backend, launch.kwargs, bound, specialization, options)
    source = GluonASTSource if launch.fn.is_gluon() else ASTSource
    return triton.compile(source(launch.fn, signature, constexprs, attrs), target=target, options=options.__dict__)
