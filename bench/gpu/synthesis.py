"""paper-1280 synthesis on the GPU: images/s end to end and the share of time the GPU sat idle.

Untrained weights (speed does not depend on training), phantom structures, bf16, channels_last,
Triton kernels (impl auto), CUDA graphs, JPEG encoded on the GPU where torchvision is present.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from synthesis_fixtures import make_run  # noqa: E402

from drgan.synthesis.runner import SynthesisOptions, synthesize  # noqa: E402
from drgan.synthesis.writer import gpu_jpeg_encoder  # noqa: E402

COUNT, BATCH = 320, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON result file")
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "preset": "paper-1280", "batch": BATCH,
               "gpu_jpeg": gpu_jpeg_encoder(95) is not None, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", preset_name="paper-1280")
        # Warm-up: Triton autotuning, CUDA-graph capture, phantom structures rendered once.
        synthesize(SynthesisOptions(checkpoint=str(run), out=f"{tmp}/warm", count=BATCH, batch=BATCH, format="jpeg", progress=False))
        for fmt in ("jpeg", "png"):
            s = synthesize(SynthesisOptions(checkpoint=str(run), out=f"{tmp}/{fmt}", count=COUNT, batch=BATCH, format=fmt, progress=False))
            row = {"format": fmt, "images": s.generated, "seconds": round(s.seconds, 2),
                   "images_per_second": round(s.images_per_second, 1),
                   "gpu_idle_share": None if s.gpu_idle_share is None else round(s.gpu_idle_share, 3)}
            results["runs"].append(row)
            print(f"{fmt:5s} {row['images']} images  {row['images_per_second']:7.1f} images/s  GPU idle {row['gpu_idle_share']}")
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
