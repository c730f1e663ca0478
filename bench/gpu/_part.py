"""What every part of the GPU check shares: its arguments, its device and the JSON it writes.

`--dry-run` runs a part on the CPU at its smallest shapes, Triton kernels in the interpreter, so
a typo or a wrong argument shows up in CI instead of in the GPU window. Import this module before
anything imports drgan.kernels: the interpreter is switched on at import time.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402


def arguments(doc: str, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """--out (the JSON path) and --dry-run, besides whatever `parser` already holds."""
    parser = parser or argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON report path")
    parser.add_argument("--dry-run", action="store_true", help="CPU, smallest shapes, Triton in its interpreter")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit(f"{Path(sys.argv[0]).name} needs a CUDA GPU (or --dry-run)")
    return args


def device(args: argparse.Namespace) -> str:
    return "cpu" if args.dry_run else "cuda"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else device


def write(path: Path, report: dict, dry_run: bool) -> None:
    """The report as JSON, marked with whether it came from a dry run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dry_run": dry_run, **report}, indent=2) + "\n")


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """cuDNN times every algorithm of a new convolution shape and keeps the fastest (on), or takes
    its heuristic's first choice (off, PyTorch's default)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the kernels' error measure against their references."""
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12)).item()


def time_ms(fn: Callable[[], object], rep_ms: int = 60) -> float:
    """Median milliseconds per call (CUDA events through triton's do_bench, which clears the L2
    between calls); on the CPU the wall clock of one call after one warm-up call."""
    if torch.cuda.is_available():
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median"))
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def profile(run: Callable[[], object], cuda: bool, per: int, groups: dict[str, tuple[str, ...]], top: int = 15) -> dict:
    """Self time per kernel over one `run()` (device time on CUDA, host time on the CPU), divided by
    `per` (images): the total, the `top` kernels, and per group the kernels whose names contain one
    of its substrings."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)

    def ms(chosen) -> float:
        return sum(getattr(e, attr) for e in chosen) / 1e3 / per

    return {"clock": "device" if cuda else "host", "total_ms_per_image": ms(events),
            **{f"{group}_ms_per_image": ms(e for e in events if any(k in e.key for k in keys)) for group, keys in groups.items()},
            "top": [{"name": e.key[:120], "calls": e.count, "ms_per_image": ms([e])} for e in events[:top]]}


def print_profile(prof: dict) -> None:
    """A `profile` result for the log: the total, each group, then the top kernels."""
    groups = ", ".join(f"{key[: -len('_ms_per_image')].replace('_', ' ')} {value:.2f} ms" for key, value in prof.items()
                       if key.endswith("_ms_per_image") and key != "total_ms_per_image")
    print(f"profile ({prof['clock']} time, per image): {prof['total_ms_per_image']:.2f} ms, {groups}", flush=True)
    for row in prof["top"]:
        print(f"  {row['ms_per_image']:8.3f} ms  x{row['calls']:<4d} {row['name']}", flush=True)
