"""paper-1280 local-stage training step on one GPU: bf16, Triton kernels vs the reference ops.

    python bench/gpu/training.py --out OUT/training.json [--dry-run]

Each variant builds the trainer (VGG19 perceptual with random weights: same cost as real ones),
warms up, then times a few full G + D steps; ms/step and peak memory per variant; the first variant
also profiles one step (torch.profiler: the top kernels by device time, the spatial attention's
forward and backward kernels' share). The last variant repeats the first with cudnn.benchmark
(cuDNN times its algorithms for each convolution shape; last, so that no other variant runs with
the plans it found). A variant that
fails (out of memory, missing kernel) is recorded with its error and the next one runs; the part
then exits 1. First, exact resume on the device (resume_check.py: RNG state, 2+2 steps).
"""
from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path

import _part  # first: with --dry-run it switches Triton's interpreter on before drgan.kernels loads
import torch
from torch.utils.data import DataLoader, Dataset

from drgan.checkpoint import save_tensors
from drgan.config import preset
from drgan.grading_space import GradingSpace
from drgan.training.gan import GanTrainer
from drgan.training.options import GanOptions
from drgan.training.vgg import VGG19Features
from resume_check import resume_matches

BUDGET_S = 60
PROFILE_TOP = 15
# Kernels by name: the spatial attention's forward and its backward (the default, atomic-dQ one and
# the deterministic one's extra dQ kernel).
PROFILE_GROUPS = {"spatial_attention_fwd": ("_fwd_kernel",),
                  "spatial_attention_bwd": ("_bwd_dkdv_kernel", "_bwd_dq_kernel", "_bwd_delta_kernel")}
# impl, batch, steps, precision, cudnn.benchmark
VARIANTS = (("triton", 1, 3, "bf16", False), ("ref", 1, 2, "bf16", False), ("triton", 2, 3, "bf16", False),
            ("triton", 1, 3, "bf16", True))
# --dry-run: the tiny preset, one timed step, Triton in fp32 (the interpreter's bf16 tl.dot is wrong).
DRY_VARIANTS = (("triton", 1, 1, "fp32", False), ("triton", 1, 1, "fp32", True))
RESUME_PRECISION, DRY_RESUME_PRECISION = "bf16", "fp32"


class RandomRetinas(Dataset):
    def __init__(self, count: int, resolution: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.image = torch.rand(count, 3, resolution, resolution, generator=g) * 2 - 1
        self.cond = (torch.rand(count, 8, resolution, resolution, generator=g) > 0.95).float()

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict:
        return {"id": str(i), "image": self.image[i], "cond": self.cond[i], "grade": torch.tensor(i % 5)}


def run_variant(tmp: Path, preset_name: str, device: str, variant: tuple, data: Dataset, profiled: bool = False) -> dict:
    impl, batch, steps, precision, benchmark = variant
    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    opts = GanOptions(out=str(tmp / f"run-{impl}-{batch}{'-benchmark' * benchmark}"), grading_space=str(tmp / "space.safetensors"), preset=preset_name,
                      stage="local", perceptual="vgg19", vgg19_weights=str(tmp / "vgg19.safetensors"), batch=batch,
                      precision=precision, channels_last=True, device=device, kernel_impl=impl)
    trainer = GanTrainer(opts, data)
    b = next(iter(DataLoader(data, batch_size=batch)))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    with _part.cudnn_benchmark(benchmark):
        trainer.train_step(b, 0)  # warm-up: Triton compilation and autotuning (cuDNN's with benchmark)
        sync()
        for s in range(steps):
            start = time.perf_counter()
            values = trainer.train_step(b, s + 1)
            sync()
            times.append(time.perf_counter() - start)
    row = {"impl": impl, "batch": batch, "precision": precision, "cudnn_benchmark": benchmark,
           "ms_per_step": 1000 * sum(times) / len(times),
           "ms_per_image": 1000 * sum(times) / len(times) / batch, "steps": steps,
           "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
           "losses_finite": all(v == v for v in values.values())}
    if profiled:
        row["profile"] = _part.profile(lambda: trainer.train_step(b, steps + 1), cuda, batch, PROFILE_GROUPS, PROFILE_TOP)
    return row


def main() -> None:
    args = _part.arguments(__doc__)
    device = _part.device(args)
    preset_name, variants = ("tiny-64", DRY_VARIANTS) if args.dry_run else ("paper-1280", VARIANTS)
    cfg = preset(preset_name)
    t0 = time.time()
    result = {"device": _part.device_name(device), "torch": torch.__version__, "preset": preset_name, "stage": "local",
              "channels_last": True, "variants": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            result["resume"] = resume_matches(tmp, device, DRY_RESUME_PRECISION if args.dry_run else RESUME_PRECISION,
                                              RandomRetinas)
        except Exception as exc:  # recorded, so the timed variants still run
            result["resume"] = {"pass": False, "error": f"{type(exc).__name__}: {exc}"[:500], "trace": traceback.format_exc()[-1500:]}
        print("resume:", {k: v for k, v in result["resume"].items() if k != "trace"}, flush=True)
        GradingSpace.fit(torch.randn(20, cfg.z_dim).abs(), torch.arange(20) % 5, 5, 0.9).save(tmp / "space.safetensors")
        save_tensors(VGG19Features().state_dict(), tmp / "vgg19.safetensors")
        data = RandomRetinas(2, cfg.resolution)
        for variant in variants:
            impl, batch = variant[:2]
            if not args.dry_run and time.time() - t0 > BUDGET_S:  # the dry run checks every variant's code
                result["variants"].append({"impl": impl, "batch": batch, "skipped": "time budget"})
                continue
            try:
                row = run_variant(tmp, preset_name, device, variant, data, profiled=variant is variants[0])
            except Exception as exc:  # recorded, so the other variants still run
                row = {"impl": impl, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:500], "trace": traceback.format_exc()[-1500:]}
            print({k: v for k, v in row.items() if k not in ("trace", "profile")}, flush=True)
            if "profile" in row:
                _part.print_profile(row["profile"])
            result["variants"].append(row)
    result["total_s"] = time.time() - t0
    result["pass"] = result["resume"]["pass"] and not any("error" in row for row in result["variants"])
    _part.write(args.out, result, args.dry_run)
    raise SystemExit(0 if result["pass"] else 1)


if __name__ == "__main__":
    main()
