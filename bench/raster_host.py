"""What the main thread spends queueing one batch's conditions (drgan.synthesis.raster) at
paper-1280, batch 16: the aten operations it dispatches (each one a kernel launch or a view on a
GPU) and its time per batch on this machine's CPU, alone and while placement threads draw lesions
as the synthesis runner's do. The second figure shows the interpreter's lock at work: every
operation gives the lock up and must win it back from the placement threads.

    python bench/raster_host.py --out bench/results/raster_host.json [--threads 0,2] [--repeat 30]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from drgan.cli.common import run_script
from drgan.data.lesions import lesion_primitives
from drgan.synthesis.raster import condition_masks
from drgan.synthesis.structures import DeviceStructures, StructurePool

SIZE, BATCH, STRUCTURES = 1280, 16, 4


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _place_forever(pool: StructurePool, stop: threading.Event) -> None:
    rng = np.random.default_rng(1)
    while not stop.is_set():
        lesion_primitives(pool.geometry(int(rng.integers(STRUCTURES))), int(rng.integers(5)), rng, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--threads", default="0,2", help="placement threads beside the main thread, per measurement")
    parser.add_argument("--repeat", type=int, default=30, help="batches timed per measurement (the median is kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the runner's own stages on the CPU (runtime.intra_op_threads)
    pool = StructurePool.phantom(SIZE, 0)
    rng = np.random.default_rng(0)
    primitives = [lesion_primitives(pool.geometry(i % STRUCTURES), i % 5, rng, None)[0] for i in range(BATCH)]
    structures = DeviceStructures(pool, SIZE, torch.device("cpu"), BATCH)
    slots = structures.slots([i % STRUCTURES for i in range(BATCH)])
    out = torch.empty((BATCH, 8, SIZE, SIZE))
    lesions = torch.empty((BATCH, 6, SIZE, SIZE), dtype=torch.uint8)
    with _Count() as count:
        condition_masks(structures.planes, slots, primitives, out=out, lesions=lesions)
    runs = []
    for threads in (int(t) for t in args.threads.split(",")):
        stop = threading.Event()
        placers = [threading.Thread(target=_place_forever, args=(pool, stop)) for _ in range(threads)]
        for t in placers:
            t.start()
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            condition_masks(structures.planes, slots, primitives, out=out, lesions=lesions)
            times.append(time.perf_counter() - start)
        stop.set()
        for t in placers:
            t.join()
        runs.append({"placement_threads": threads, "main_thread_ms_per_batch": round(1e3 * float(np.median(times)), 1)})
        print(f"{threads} placement threads: {runs[-1]['main_thread_ms_per_batch']} ms per batch")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"preset": "paper-1280", "batch": BATCH, "ellipses": int(sum(map(len, primitives))),
              "aten_ops_per_batch": count.ops, "runs": runs, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "commit": commit}
    print(f"{count.ops} aten operations per batch ({result['ellipses']} ellipses)")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    sys.exit(run_script(main))
