"""paper-1280 synthesis on the GPU: images/s end to end and the share of time the GPU sat idle.

Untrained weights (speed does not depend on training), phantom structures (rendered before the
clock starts), bf16, channels_last, Triton kernels (impl auto), CUDA graphs, JPEG encoded on the
GPU where torchvision is present. Each format runs with the real generator and with the null
backend (the host side alone: can this host feed the GPU?), with per-stage times and the
bounding stage.

    python3 bench/gpu/synthesis.py --out OUT/synthesis.json [--dry-run]
"""
import sys
import tempfile
from pathlib import Path

import _part  # first: with --dry-run it switches Triton's interpreter on before drgan.kernels loads
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from synthesis_fixtures import make_run  # noqa: E402

from drgan import config  # noqa: E402
from drgan.synthesis.runner import SynthesisOptions, synthesize  # noqa: E402
from drgan.synthesis.encode import gpu_jpeg_encoder  # noqa: E402
from drgan.synthesis.structures import StructurePool  # noqa: E402

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

        def options(out: str, images: int, fmt: str, backend: str) -> SynthesisOptions:
            return SynthesisOptions(checkpoint=str(run), out=f"{tmp}/{out}", count=images, batch=batch, format=fmt,
                                    device=device, progress=False, backend=backend)

        # Warm-up: the structure pool of seed 0 rendered (the runner reuses it), Triton
        # autotuning, CUDA-graph capture.
        pool = StructurePool.phantom(config.preset(preset).resolution, 0)   # make_run: local stage
        for j in range(len(pool)):
            pool.geometry(j)
        synthesize(options("warm", batch, "jpeg", "torch"))
        for backend in ("torch", "null"):
            for fmt in ("jpeg", "png"):
                s = synthesize(options(f"{backend}-{fmt}", count, fmt, backend))
                summary = s.to_dict()
                row = {"backend": backend, "format": fmt, "images": s.generated, "seconds": round(s.seconds, 2),
                       "images_per_second": round(s.generated / s.pipeline_seconds, 1),
                       "gpu_idle_share": summary["gpu_idle_share"], "bound": s.bound,
                       "stage_ms_per_image": summary["stage_ms_per_image"]}
                results["runs"].append(row)
                print(f"{backend:5s} {fmt:5s} {row['images']} images  {row['images_per_second']:7.1f} images/s  "
                      f"GPU idle {row['gpu_idle_share']}  bound by {row['bound']}")
    _part.write(args.out, results, args.dry_run)


if __name__ == "__main__":
    main()
