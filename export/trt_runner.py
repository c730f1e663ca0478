"""Run a TensorRT engine: execute_async_v3 with tensor addresses, CUDA graphs for repeated batch sizes.

Buffers are torch CUDA tensors, so no other CUDA binding is needed. For each batch size seen, the
first call at a batch size sets the shapes and enqueues once (TensorRT applies deferred shape work
there, which must not happen inside a capture), then captures the enqueue into a CUDA graph that later
calls at that size replay. One graph is kept: a new batch size (a last, partial batch) re-captures,
since a graph holds the shapes and addresses it was captured with.
"""
from __future__ import annotations

from pathlib import Path

import torch

from drgan.errors import DrganError, ParameterError
from drgan.export.sidecar import read_sidecar
from drgan.export.trt_build import import_tensorrt
from drgan.export.wrapper import OUTPUT_NAMES


def uses_plugin(sidecar: dict) -> bool:
    """Whether the engine needs the plugin library; older sidecars recorded its path instead."""
    return bool(sidecar.get("trt_plugin") or sidecar.get("plugin_library"))


class TrtGenerator:
    """A TensorRT engine of the inference generator: call(cond, z, noise) -> (image, grade_logits)."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: str = "cuda", cuda_graph: bool = True,
                 plugin_library: str | Path | None = None) -> None:
        """`plugin_library`: the drgan attention plugin an engine built with --trt-plugin needs. Only
        the caller names it: a path read from the sidecar would run a downloaded folder's native code."""
        trt = import_tensorrt()
        path = Path(engine_path)
        if not path.is_file():
            raise DrganError(f"{path}: engine not found (run drgan-export --trt first)")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise DrganError(f"device {device}: TensorRT engines run on a CUDA GPU")
        self.sidecar = read_sidecar(path)
        if plugin_library is not None:
            from drgan.export.onnx_plugin import load_trt_plugin

            load_trt_plugin(trt, plugin_library)
        elif uses_plugin(self.sidecar):
            raise ParameterError(
                f"{path}: built with the drgan attention plugin; name the library with {{trt_plugin}} "
                "(it runs native code: only one you built or trust)"
            )
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):  # an engine and its context live on the GPU current when made
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise DrganError(f"{path}: TensorRT could not load the engine (built by another TensorRT version or GPU?)")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise DrganError(f"{path}: TensorRT could not create an execution context (GPU memory for the "
                                 "engine's largest batch?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        # Bound by name, in the order the call takes them: the engine's own order is not documented.
        self.inputs = sorted((n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT), key=_input_order)
        self.outputs = sorted((n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT),
                              key=lambda n: OUTPUT_NAMES.index(n) if n in OUTPUT_NAMES else len(OUTPUT_NAMES))
        self.stream = torch.cuda.Stream(self.device)
        self.cuda_graph = cuda_graph
        self.graph: tuple[int, torch.cuda.CUDAGraph, list[torch.Tensor], list[torch.Tensor]] | None = None

    def __call__(
        self, cond: torch.Tensor, z: torch.Tensor, noise: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.cuda.device(self.device):  # the context's calls act on the current GPU
            return self._call(cond, z, noise)

    def _call(self, cond: torch.Tensor, z: torch.Tensor, noise: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = [t.to(self.device, torch.float32).contiguous() for t in (cond, z, *noise)]
        if len(tensors) != len(self.inputs):
            raise DrganError(f"the engine takes {len(self.inputs)} inputs, got {len(tensors)}")
        batch = tensors[0].shape[0]
        lo, hi = self.sidecar["batch"]["min"], self.sidecar["batch"]["max"]
        if not lo <= batch <= hi:
            raise DrganError(f"batch {batch} is outside the engine's profile {lo}..{hi} (rebuild it with drgan-export --max-batch)")
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.cuda_graph:
            outputs = self._bind(tensors)
            self._enqueue()
        else:
            if self.graph is None or self.graph[0] != batch:
                self.graph = None  # release the old graph's pool before capturing anew
                self.graph = (batch, *self._capture(tensors))
            _, graph, static_in, static_out = self.graph
            with torch.cuda.stream(self.stream):
                for dst, src in zip(static_in, tensors):
                    dst.copy_(src)
                graph.replay()
                outputs = [o.clone() for o in static_out]  # the next replay overwrites the static buffers
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return outputs[0], outputs[1]

    def _bind(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        for name, t in zip(self.inputs, tensors):
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        return outputs

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise DrganError("TensorRT execute_async_v3 failed (see its log above)")

    def _capture(self, tensors: list[torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor], list[torch.Tensor]]:
        static_in = [t.clone() for t in tensors]
        with torch.cuda.stream(self.stream):
            outputs = self._bind(static_in)
            self._enqueue()  # applies the new shapes outside the capture
            self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the encoder threads' own CUDA calls during a capture do not invalidate it
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            self._enqueue()
        return graph, static_in, outputs


def _input_order(name: str) -> tuple[int, int]:
    """cond, z, noise0, noise1, ...: the order of the call's arguments (wrapper.input_names)."""
    if name in ("cond", "z"):
        return ("cond", "z").index(name), 0
    return 2, int(name[5:]) if name.startswith("noise") and name[5:].isdigit() else 1 << 30
