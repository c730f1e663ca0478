"""AOTInductor: the inference generator compiled ahead of time into a .pt2 package.

torch.export traces the generator (spatial attention through F.scaled_dot_product_attention) and
torch._inductor.aoti_compile_and_package compiles it for one device and precision. The package loads
with torch._inductor.aoti_load_package and runs without drgan's model code. A package is native code:
the sidecar records its sha256 and the loader refuses a package that differs, which proves it is the
file the export wrote beside that sidecar (both sit in one folder: it is no signature, so load only
packages you built or trust). A fixed batch (--batch)
compiles static shapes; a range compiles a dynamic batch axis bounded by --min-batch/--max-batch.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from drgan.config import ModelConfig
from drgan.errors import DrganError, ParameterError
from drgan.export.sidecar import BatchProfile, read_sidecar, sidecar_path, write_sidecar
from drgan.io import atomic_save, sha256_file
from drgan.export.wrapper import check_cpu_attention_memory, example_inputs, input_shapes, output_shapes, prepare
from drgan.nn import DRGANGenerator

# Memory-efficient SDPA kernels need fp16/bf16 head sizes in multiples of 8 (paper-1280's last block has 4).
CUDA_QK_MULTIPLE = 8


def compile_aoti(
    generator: DRGANGenerator,
    path: str | Path,
    profile: BatchProfile,
    device: str = "cpu",
    precision: str = "fp32",
) -> Path:
    """Compile `generator` into the package `path` (written atomically) plus its JSON sidecar."""
    path = Path(path)
    device_type = torch.device(device).type
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("{device} cuda: no CUDA GPU is visible")
    if device_type == "cpu":
        check_cpu_attention_memory(generator.cfg, profile.max, "an AOTInductor package",
                                   "compile it for CUDA ({device} cuda); synthesis on the CPU runs the torch backend")
    model = prepare(generator, impl="sdpa", precision=precision, pad_qk=CUDA_QK_MULTIPLE if device_type == "cuda" else None)
    model = model.to(device)
    # Trace at batch >= 2 unless fixed: a size-1 axis would be specialized to 1.
    trace_batch = profile.min if profile.fixed else min(max(2, profile.opt), profile.max)
    args = example_inputs(generator, trace_batch, device=device)
    dynamic_shapes = None
    if not profile.fixed:
        batch = torch.export.Dim("batch", min=profile.min, max=profile.max)
        dynamic_shapes = ({0: batch}, {0: batch}, tuple({0: batch} for _ in args[2:]))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
        # keep_suffix: the packager insists on the .pt2 suffix
        atomic_save(path, lambda tmp: torch._inductor.aoti_compile_and_package(program, package_path=str(tmp)), keep_suffix=True)
    write_sidecar(path, {
        "format": "aotinductor-package",
        "device": device_type,
        "precision": precision,
        "torch_version": torch.__version__,
        "gpu": torch.cuda.get_device_name() if device_type == "cuda" else None,
        "batch": {"min": profile.min, "opt": profile.opt, "max": profile.max},
        "inputs": {k: [-1, *v[1:]] for k, v in input_shapes(generator, 1).items()},
        "outputs": {k: [-1, *v[1:]] for k, v in output_shapes(generator, 1).items()},
        "dtype": "float32",
        "stage": generator.stage,
        "model": generator.cfg.to_dict(),
        "sha256": sha256_file(path),
    })
    return path


def check_package(path: Path, sidecar: dict) -> None:
    """Refuse a package that is not the file its export wrote (its sha256 is in the sidecar)."""
    recorded = sidecar.get("sha256")
    hint = "re-run drgan-export --aoti (a package runs native code: load only packages you built or trust)"
    if not recorded:
        raise DrganError(f"{path}: {sidecar_path(path).name} records no sha256 of the package: {hint}")
    if sha256_file(path) != recorded:
        raise DrganError(f"{path}: not the package its export wrote (sha256 differs from {sidecar_path(path).name}): {hint}")


class AotiGenerator:
    """A loaded .pt2 package: call(cond, z, noise) -> (image, grade_logits), fp32 I/O on its device."""

    name = "aoti"

    def __init__(self, path: str | Path, device: str | torch.device | None = None) -> None:
        """`device`: the GPU to load a CUDA package on (cuda:N); the current one when None."""
        path = Path(path)
        if not path.is_file():
            raise DrganError(f"{path}: AOTInductor package not found (run drgan-export --aoti first)")
        self.sidecar = read_sidecar(path)
        self.device = torch.device(self.sidecar["device"])
        if device is not None and torch.device(device).type == self.device.type:
            self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DrganError(f"{path}: compiled for CUDA, but no CUDA GPU is visible")
        if self.device.type == "cpu" and "model" in self.sidecar:
            check_cpu_attention_memory(ModelConfig.from_dict(self.sidecar["model"]), self.sidecar["batch"]["min"],
                                       "an AOTInductor package", "use {backend} torch, or a package compiled for CUDA")
        check_package(path, self.sidecar)
        # Without an index the package loads its weights on the current GPU, not the one asked for.
        index = self.device.index if self.device.index is not None else -1
        self.package = torch._inductor.aoti_load_package(str(path), device_index=index)

    def __call__(
        self, cond: torch.Tensor, z: torch.Tensor, noise: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.sidecar["batch"]["min"], self.sidecar["batch"]["max"]
        if not lo <= cond.shape[0] <= hi:
            raise DrganError(f"batch {cond.shape[0]} is outside the package's range {lo}..{hi} (re-export it with drgan-export --batch or --max-batch)")
        with torch.no_grad():
            image, logits = self.package(*(t.to(self.device, torch.float32) for t in (cond, z, *noise)))
        return image, logits


# The child of run_in_fresh_process: load the package, run it on the saved inputs, save the outputs.
_FRESH_RUN = """
import sys
from safetensors.torch import load_file, save_file
from drgan.export.aoti import AotiGenerator
runner = AotiGenerator(sys.argv[1], sys.argv[4])
inputs = load_file(sys.argv[2])
inputs = [inputs[str(i)] for i in range(len(inputs))]
image, logits = runner(inputs[0], inputs[1], inputs[2:])
save_file({"image": image.float().cpu().contiguous(), "grade_logits": logits.float().cpu().contiguous()}, sys.argv[3])
"""


def fresh_process_command(path: Path, inputs: Path, outputs: Path, device: str) -> list[str]:
    return [sys.executable, "-c", _FRESH_RUN, str(path), str(inputs), str(outputs), device]


def run_in_fresh_process(path: str | Path, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, grade_logits) of the package on `inputs`, loaded and run by a new interpreter: the
    way synthesis uses it, and a crash in torch's loader becomes one error instead of killing the
    caller (torch 2.11 died with SIGSEGV loading a CUDA package in the process that compiled it).
    The package is loaded on the inputs' device (cuda:N: the child's GPU 0 otherwise)."""
    with tempfile.TemporaryDirectory() as tmp:
        given, got = Path(tmp) / "inputs.safetensors", Path(tmp) / "outputs.safetensors"
        save_file({str(i): t.detach().cpu().contiguous() for i, t in enumerate(inputs)}, str(given))
        device = str(inputs[0].device)  # a CUDA tensor's device names its index
        done = subprocess.run(fresh_process_command(Path(path), given, got, device), capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            reason = (f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0
                      else f"exit status {done.returncode}: {lines[-1] if lines else 'no message'}")
            raise DrganError(f"{path}: loading and running the package in a fresh process failed ({reason})")
        outputs = load_file(str(got))
    return outputs["image"], outputs["grade_logits"]
