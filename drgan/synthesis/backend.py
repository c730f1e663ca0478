"""Generator backends for the runner, one protocol: backend(cond, z, noise) -> image in [-1, 1].
PyTorch runs here; ONNX Runtime, TensorRT and AOTInductor are the runtimes of drgan.export.backends,
whose outputs (image, grade logits) the loaders below reduce to the image. The null backend is a
capacity check of the host side, not a generator. The loaders at the end are what
drgan.synthesis.registry names; each gives a LoadedBackend whose `weights` is the generator's
drgan.checkpoint.weights_sha256, the hash export.json records for every exported file."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from drgan.errors import ParameterError
from drgan.kernels.spatial_attention import fp8_pv_unsupported
from drgan.nn.layers import fold_batchnorm, set_attention_fp8
from drgan.runtime import autocast_dtype, intra_op_threads, resolve_precision


class Backend(Protocol):
    def __call__(self, cond: torch.Tensor, z: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor: ...


class TorchBackend:
    """Eager PyTorch under inference mode: autocast, channels_last, CUDA graphs for a fixed batch."""

    def __init__(
        self,
        generator: torch.nn.Module,     # DRGANGenerator in eval mode
        device: torch.device,           # where it runs
        precision: str,                 # 'fp32' | 'bf16' | 'fp16' | 'auto' (bf16 on CUDA, fp32 on CPU)
        cuda_graph: bool = True,        # replay one captured graph per batch shape on CUDA
        fp8_attention: bool = False,    # spatial attention's P@V in float8 (opt-in; emulated on CPU)
    ) -> None:
        precision = resolve_precision(precision, device)
        self.device, self.dtype = device, autocast_dtype(precision)
        if fp8_attention and device.type == "cuda":
            # On CUDA the fp8 P@V is the Triton kernel's: refuse what would fall back to the
            # emulating, far slower reference instead.
            if reason := fp8_pv_unsupported(self.dtype or torch.float32, device):
                raise ParameterError(f"{{fp8_attention}} with {{precision}} {precision} on "
                                     f"{torch.cuda.get_device_name(device)}: {reason}")
        # channels_last is faster on CUDA and on CPU alike (bench/results/generator_cpu.json), and so
        # is BatchNorm folded into the convolutions (bench/results/generator_fold_bn_cpu.json); the
        # folded copy leaves `generator` and its weights hash as they are.
        self.g = fold_batchnorm(generator).to(device=device, memory_format=torch.channels_last)
        set_attention_fp8(self.g, fp8_attention)
        self.use_graph = cuda_graph and device.type == "cuda"
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}

    def _forward(self, cond: torch.Tensor, z: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.g(cond, z, noise)[0]

    @torch.inference_mode()
    def predict_grade(self, cond: torch.Tensor) -> torch.Tensor:
        """(B,) grades the encoder's grade head predicts from the masks (the paper's test-time label)."""
        cond = cond.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.g.predict_grade(cond)

    @torch.inference_mode()
    def __call__(self, cond: torch.Tensor, z: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        cond = cond.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        inputs = [cond, z.to(self.device, non_blocking=True), *(n.to(self.device) for n in noise)]
        if not self.use_graph:
            return self._forward(inputs[0], inputs[1], inputs[2:])
        key = tuple(tuple(t.shape) for t in inputs)
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs)
        graph, static_in, static_out = self._graphs[key]
        for dst, src in zip(static_in, inputs):
            dst.copy_(src)
        graph.replay()
        return static_out.clone()

    def _capture(self, inputs: list[torch.Tensor]):
        # Streams of the generator's device, named (torch.cuda.graph still synchronizes the current
        # one: callers make that device current, as the runner does).
        static_in = [t.clone() for t in inputs]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up outside the graph: autotuning, allocator pools
            for _ in range(2):
                self._forward(static_in[0], static_in[1], static_in[2:])
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the encoder threads' own CUDA calls during a capture do not invalidate it
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device), capture_error_mode="thread_local"):
            static_out = self._forward(static_in[0], static_in[1], static_in[2:])
        return graph, static_in, static_out


class NullBackend:
    """Reads the whole condition tensor (as a generator would) and returns one fixed image: a
    phantom fundus, so that encoders see realistic content. Measures whether the host side can
    feed a GPU; it generates nothing."""

    def __init__(self, size: int, device: torch.device) -> None:
        from drgan.data.phantom import render_phantom

        # channels_last, as a generator's output: the runner's pixel conversion then reads it in order.
        image = torch.from_numpy(render_phantom(size, 2, 0).image).permute(2, 0, 1)[None]
        self.image = (image.float() / 127.5 - 1.0).to(device).contiguous(memory_format=torch.channels_last)
        self._out: torch.Tensor | None = None   # reused: the runner is done with it by the next call

    @torch.inference_mode()
    def __call__(self, cond: torch.Tensor, z: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        # The reduction reads every condition value; adding its zero keeps it on the data path.
        # On the CPU on one intra-op thread, as the runner's own stages (it stands in for no work).
        with intra_op_threads(1) if cond.device.type == "cpu" else contextlib.nullcontext():
            seen = cond.amax(dim=(1, 2, 3)) * 0.0
        shape = (len(cond), *self.image.shape[1:])
        if self._out is None or self._out.shape != shape:
            self._out = torch.empty(shape, device=self.image.device).contiguous(memory_format=torch.channels_last)
        return torch.add(self.image, seen[:, None, None, None], out=self._out)


@dataclass
class LoadedBackend:
    call: Backend
    noise_shapes: Callable[[int], list[tuple[int, ...]]]   # per batch size; [] when no noise is used
    weights: str                                            # sha256 of the generator's weights, or "none"
    precision: str                                          # resolved
    predict_grade: Backend | None = None                    # cond -> grade from the encoder's grade head (None: null)


def load_null(run: str | Path | None, size: int, device: torch.device, precision: str, batch: int,
              trt_plugin: None = None) -> LoadedBackend:
    return LoadedBackend(NullBackend(size, device), lambda b: [], "none", resolve_precision(precision, device))


def load_torch(run: str | Path | None, size: int, device: torch.device, precision: str, batch: int,
               trt_plugin: None = None, fp8_attention: bool = False) -> LoadedBackend:
    from drgan.checkpoint import load_generator, weights_sha256

    g = load_generator(run)
    backend = TorchBackend(g, device, precision, fp8_attention=fp8_attention)
    return LoadedBackend(backend, g.noise_shapes, weights_sha256(g), resolve_precision(precision, device),
                         backend.predict_grade)


def load_onnxruntime(run: str | Path | None, size: int, device: torch.device, precision: str,
                     batch: int, trt_plugin: None = None) -> LoadedBackend:
    from drgan.export.backends import open_onnxruntime

    # The exported ONNX file is fp32.
    return _load_exported(open_onnxruntime, run, device, "fp32" if precision == "auto" else precision, batch)


def load_tensorrt(run: str | Path | None, size: int, device: torch.device, precision: str,
                  batch: int, trt_plugin: str | Path | None = None) -> LoadedBackend:
    from drgan.export.backends import open_tensorrt

    return _load_exported(functools.partial(open_tensorrt, trt_plugin=trt_plugin), run, device, precision, batch)


def load_aoti(run: str | Path | None, size: int, device: torch.device, precision: str, batch: int,
              trt_plugin: None = None) -> LoadedBackend:
    from drgan.export.backends import open_aoti

    return _load_exported(open_aoti, run, device, precision, batch)


def _load_exported(open_runtime: Callable, run: str | Path, device: torch.device, precision: str,
                   batch: int) -> LoadedBackend:
    """A runtime of drgan.export.backends on the run's exported generator (RUN/export), which must
    come from the generator's current weights."""
    from drgan.checkpoint import load_generator, weights_sha256

    g = load_generator(run)
    weights = weights_sha256(g)
    precision = resolve_precision(precision, device)
    runtime = open_runtime(Path(run) / "export", run, weights, str(device), precision, batch)
    # The exported graph has no grade head: predictions come from the PyTorch encoder (built lazily).
    encoder = functools.cache(lambda: TorchBackend(g, device, precision, cuda_graph=False))
    return LoadedBackend(lambda cond, z, noise: runtime(cond, z, noise)[0], g.noise_shapes, weights, precision,
                         lambda cond: encoder().predict_grade(cond))
