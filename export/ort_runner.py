"""ONNX Runtime: run an exported generator and compare it with PyTorch.

The CUDA execution provider is used when onnxruntime-gpu provides it and the tensors live on a GPU
(inputs and outputs then stay on the device through I/O binding); the CPU provider otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drgan.errors import DrganError
from drgan.export.wrapper import OUTPUT_NAMES, attention_widths, example_inputs
from drgan.nn import DRGANGenerator

# ONNX Runtime's CPU Attention kernel holds the whole (B, N, N) fp32 score matrix: above this many
# bytes the comparison is skipped on the CPU (paper-1280: N = 102,400, 42 GB per image).
CPU_SCORE_BUDGET = 4 << 30
TOLERANCE = 1e-3  # max abs difference allowed in fp32


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime":
            raise DrganError("ONNX Runtime is not installed: pip install 'drgan[onnx]'") from None
        # Installed but broken, or its import cut short (a signal).
        raise DrganError(f"ONNX Runtime cannot be imported: {exc}") from None
    return onnxruntime


def has_cuda_provider() -> bool:
    return "CUDAExecutionProvider" in _ort().get_available_providers()


def providers(device: str) -> list:
    """Execution providers for `device` ('cpu', 'cuda' or 'cuda:N'), best first. The CUDA provider
    is given the device's index: it runs on GPU 0 otherwise, whatever torch's current device."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not has_cuda_provider():
            raise DrganError("device cuda: this onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu)")
        return [("CUDAExecutionProvider", {"device_id": _gpu_index(dev)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _gpu_index(device: torch.device) -> int:
    """A CUDA device's index; the current GPU's for plain 'cuda'."""
    return device.index if device.index is not None else torch.cuda.current_device()


class OrtGenerator:
    """An exported generator in an ONNX Runtime session: call(cond, z, noise) -> (image, grade_logits)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        ort = _ort()
        path = Path(path)
        if not path.is_file():
            raise DrganError(f"{path}: ONNX file not found (run drgan-export --onnx first)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.device = torch.device(device)
        state = ort.capi.onnxruntime_pybind11_state  # where ONNX Runtime's exception types live
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers(device))
        except (state.Fail, state.InvalidArgument, state.NoSuchFile, state.InvalidProtobuf, state.InvalidGraph,
                state.NotImplemented, state.RuntimeException) as exc:
            # e.g. external data that lies outside the model's folder, which ONNX Runtime refuses
            reason = str(exc).strip().splitlines()[0].split(" : ")[-1]
            raise DrganError(f"{path}: ONNX Runtime cannot load it ({reason})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(
        self, cond: torch.Tensor, z: torch.Tensor, noise: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = [t.float().contiguous() for t in (cond, z, *noise)]
        if len(tensors) != len(self.input_names):
            raise DrganError(f"the ONNX model takes {len(self.input_names)} inputs, got {len(tensors)}")
        if self.device.type == "cuda":
            return self._run_bound(tensors)
        out = self.session.run(list(OUTPUT_NAMES), {n: t.cpu().numpy() for n, t in zip(self.input_names, tensors)})
        return torch.from_numpy(out[0]), torch.from_numpy(out[1])

    def _run_bound(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Device-resident run: bind torch CUDA buffers so nothing crosses to the host."""
        binding = self.session.io_binding()
        index = _gpu_index(self.device)
        tensors = [t.to(self.device) for t in tensors]  # held until the run: ONNX Runtime reads their memory
        for name, t in zip(self.input_names, tensors):
            binding.bind_input(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        b = tensors[0].shape[0]
        # the export leaves only the batch dynamic: the rest of each output's shape is the model's own
        image, logits = (torch.empty((b, *out.shape[1:]), device=self.device) for out in self.session.get_outputs())
        for name, t in zip(OUTPUT_NAMES, (image, logits)):
            binding.bind_output(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        # ONNX Runtime runs on a stream of its own that does not wait for torch's: the inputs, queued
        # asynchronously (the synthesis runner's stream), must be written before it reads them.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)  # returns once its outputs are written
        return image, logits


@dataclass
class Comparison:
    batch: int
    image_max_abs: float | None     # None: skipped (see `skipped`)
    logits_max_abs: float | None
    skipped: str = ""

    def line(self) -> str:
        if self.skipped:
            return f"batch {self.batch}: skipped ({self.skipped})"
        return f"batch {self.batch}: max abs diff image {self.image_max_abs:.2e}, grade logits {self.logits_max_abs:.2e}"


def verify_onnx(
    path: str | Path,
    generator: DRGANGenerator,
    batches: tuple[int, ...] = (1, 3),
) -> list[Comparison]:
    """Compare the ONNX model at `path`, run by ONNX Runtime on the CPU, with `generator` (fp32,
    eager) at each batch size.

    Raises DrganError when any difference exceeds TOLERANCE; batches whose CPU score matrix would
    not fit CPU_SCORE_BUDGET are reported as skipped.
    """
    runner = None
    results = []
    widest = max((n for n, _, _ in attention_widths(generator)), default=0)
    for b in batches:
        if b * widest * widest * 4 > CPU_SCORE_BUDGET:
            reason = (f"ONNX Runtime's CPU Attention would hold a {widest} x {widest} score matrix per image; "
                      "check on a GPU with onnxruntime-gpu")
            results.append(Comparison(b, None, None, reason))
            continue
        runner = runner or OrtGenerator(path, "cpu")
        cond, z, *noise = example_inputs(generator, b, seed=b)
        with torch.no_grad():
            ref_image, ref_logits = generator.float()(cond, z, noise)
        image, logits = runner(cond, z, noise)
        result = Comparison(
            b,
            (image.cpu() - ref_image).abs().max().item(),
            (logits.cpu() - ref_logits).abs().max().item(),
        )
        results.append(result)
        if not all(0 <= d <= TOLERANCE for d in (result.image_max_abs, result.logits_max_abs)):  # NaN fails too
            raise DrganError(f"{path}: ONNX Runtime differs from PyTorch beyond {TOLERANCE:g}: {result.line()}")
    return results
