"""One paper-1280 generator forward (batch 1, fp32, reference ops) on the CPU: seconds and peak RSS.

    python bench/paper_cpu_forward.py --out bench/results/paper1280_cpu_forward.json
"""
import argparse
import json
import platform
import resource
import sys
import time

import torch

from drgan.cli.common import run_script
from drgan.config import preset
from drgan.nn import DRGANGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON result file")
    args = parser.parse_args()
    cfg = preset("paper-1280")
    g = DRGANGenerator(cfg, "local").eval()
    cond, z = torch.rand(1, cfg.cond_channels, 1280, 1280), torch.randn(1, cfg.z_dim)
    start = time.perf_counter()
    with torch.inference_mode():
        image, _ = g(cond, z, noise=0)
    seconds = time.perf_counter() - start
    result = {
        "preset": "paper-1280",
        "batch": 1,
        "precision": "fp32",
        "kernels": "ref",
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "finite": bool(torch.isfinite(image).all()),
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    sys.exit(run_script(main))
