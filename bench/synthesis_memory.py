"""Peak host memory of `drgan synthesize --backend null` at paper-1280 against the image count.

Each count runs in its own process (`drgan synthesize ... --device cpu`); its peak resident set
comes from the kernel (os.wait4's resource usage of that child). Flat peaks across counts show
that nothing grows with the count (journal rows, futures, buffers).

    python bench/synthesis_memory.py --out bench/results/synthesis_memory.json [--counts 100,400]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PRESET = "paper-1280"


def peak_rss_mib(count: int, fmt: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "drgan.cli", "synthesize", "--backend", "null", "--preset", PRESET,
                                  "--out", f"{tmp}/set", "--count", str(count), "--format", fmt, "--device", "cpu", "--json"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)    # this child's own peak (ru_maxrss, KiB)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise SystemExit(f"drgan synthesize --count {count} exited with {child.returncode}")
    return {"images": count, "format": fmt, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "seconds": round(time.perf_counter() - start, 1)}


def _counts(text: str) -> list[int]:
    try:
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers, e.g. 100,400") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: each count must be >= 1")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--counts", type=_counts, default="100,400", help="image counts, comma-separated, each >= 1")
    parser.add_argument("--format", default="jpeg")
    args = parser.parse_args()
    results = {"preset": PRESET, "load_average_before": os.getloadavg(), "runs": []}
    for count in args.counts:
        results["runs"].append(peak_rss_mib(count, args.format))
        print(json.dumps(results["runs"][-1]))
    results["load_average_after"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
