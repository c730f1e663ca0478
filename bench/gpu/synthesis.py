"""paper-1280 synthesis on the GPU: images/s end to end and the share of time the GPU sat idle.

Untrained weights (speed does not depend on training), phantom structures, bf16, channels_last,
Triton kernels (impl auto), CUDA graphs, JPEG encoded on the GPU where torchvision is present.

    python3 bench/gpu/synthesis.py --out OUT/synthesis.json [--dry-run]
"""
import sys
import tempfile
from pathlib import Path

import _part  # first: with --dry-run it switches Triton's interpreter on before drgan.kernels loads
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from synthesis_fixtures import make_run  # noqa: E402

from drgan.synthesis.runner import SynthesisOptions, synthesize  # noqa: E402
from drgan.synthesis.writer import gpu_jpeg_encoder  # noqa: E402

PRESET, COUNT, BATCH = "paper-1280", 320, 16
DRY_PRESET, DRY_COUNT, DRY_BATCH = "tiny-64", 2, 2


def main() -> None:
    args = _part.arguments(__doc__)
    preset, count, batch = (DRY_PRESET, DRY_COUNT, DRY_BATCH) if args.dry_run else (PRESET, COUNT, BATCH)
    device = _part.device(args)
    results = {"device": _part.device_name(device), "preset": preset, "batch": batch,
               "gpu_jpeg": device == "cuda" and gpu_jpeg_encoder(95) is not None, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", preset_name=preset)

        def options(out: str, images: int, fmt: str) -> SynthesisOptions:
            return SynthesisOptions(checkpoint=str(run), out=f"{tmp}/{out}", count=images, batch=batch, format=fmt,
                                    device=device, progress=False)

        # Warm-up: Triton autotuning, CUDA-graph capture, phantom structures rendered once.
        synthesize(options("warm", batch, "jpeg"))
        for fmt in ("jpeg", "png"):
            s = synthesize(options(fmt, count, fmt))
            row = {"format": fmt, "images": s.generated, "seconds": round(s.seconds, 2),
                   "images_per_second": round(s.images_per_second, 1),
                   "gpu_idle_share": None if s.gpu_idle_share is None else round(s.gpu_idle_share, 3)}
            results["runs"].append(row)
            print(f"{fmt:5s} {row['images']} images  {row['images_per_second']:7.1f} images/s  GPU idle {row['gpu_idle_share']}")
    _part.write(args.out, results, args.dry_run)


if __name__ == "__main__":
    main()
