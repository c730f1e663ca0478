"""Host side of synthesis at paper-1280 with the null backend: images/s and host CPU per image.

The null backend stands in for an infinitely fast generator, so what is measured is everything
the host does (placement, conditions, pixel conversion, encoding, writing) on this machine's CPU,
the pool of phantom structures already rendered. Per stage: CPU ms per image (device stages:
main-thread wall ms, as the CPU is the device here). The projection for a 16-core host divides
the total CPU per image into 16 cores' time.

    python bench/synthesis_host.py --out bench/results/synthesis_host.json [--count 96] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

import torch

from drgan.cli.common import run_script
from drgan.synthesis.runner import SynthesisOptions, synthesize
from drgan.synthesis.structures import StructurePool

PRESET, SIZE, BATCH = "paper-1280", 1280, 8


def measure(fmt: str, count: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        s = synthesize(SynthesisOptions(run=None, preset=PRESET, backend="null", out=f"{tmp}/set", count=count,
                                        batch=BATCH, format=fmt, device="cpu", threads=threads, progress=False))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "format": fmt, "images": s.generated, "images_per_second": round(s.generated / s.pipeline_seconds, 2),
        "process_cpu_ms_per_image": round(1e3 * cpu / s.generated, 1),
        "stage_ms_per_image": s.to_dict()["stage_ms_per_image"], "bound": s.bound,
        "projected_16_core_images_per_second": round(16 * s.generated / cpu, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--count", type=int, default=96, help="images per measured run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per format (the best is kept; shared cores vary)")
    parser.add_argument("--formats", default="jpeg,png")
    args = parser.parse_args()
    threads = os.cpu_count() or 2
    torch.set_num_threads(threads)
    pool = StructurePool.phantom(SIZE, 0)          # the runner's pool for seed 0: render it up front
    start = time.perf_counter()
    for j in range(len(pool)):
        pool.geometry(j)
    print(f"structure pool rendered in {time.perf_counter() - start:.0f} s")
    results = {"preset": PRESET, "batch": BATCH, "threads": threads, "cpu": platform.processor() or platform.machine(),
               "load_average_before": os.getloadavg(), "runs": []}
    for fmt in args.formats.split(","):
        runs = [measure(fmt, args.count, threads) for _ in range(args.repeat)]
        for r in runs:
            print(json.dumps(r))
        best = max(runs, key=lambda r: r["images_per_second"])
        results["runs"].append({**best, "all_images_per_second": [r["images_per_second"] for r in runs]})
    results["load_average_after"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(run_script(main))
