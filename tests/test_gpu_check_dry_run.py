"""bench/gpu_check.sh --dry-run: every part of the GPU check runs on the CPU and leaves its JSON,
so a typo, an import error or a wrong argument fails here instead of in the GPU window."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check_report", ROOT / "bench" / "gpu" / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)
MAX_FILES = 8  # what comes back from the GPU machine


def test_dry_run_runs_every_part_and_writes_its_json(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], env=env, capture_output=True,
                         text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["device.txt", *(f"{part}.json" for part in report.PARTS)])
    assert len(names) <= MAX_FILES
    for part in report.PARTS:
        data = json.loads((tmp_path / f"{part}.json").read_text())
        assert data["dry_run"] is True, part
        # fid skips without the Inception weights, native without CMake or a C compiler.
        assert data["part"]["outcome"] in ("passed", "skipped"), (part, data["part"])
    markdown = report.render(tmp_path)
    assert "**Dry run**" in markdown and all(f"## {part}" in markdown for part in report.PARTS)


def test_a_part_that_wrote_nothing_still_leaves_its_outcome(tmp_path):
    log = tmp_path / "kernels.log"
    log.write_text("x" * 10 + "the end of the log")
    out = tmp_path / "kernels.json"
    report.record(out, 124, 140, log, dry_run=False)
    data = json.loads(out.read_text())
    assert data["part"]["outcome"] == "timed out" and data["part"]["log_tail"].endswith("the end of the log")
    out.write_text(json.dumps({"pass": False}))
    report.record(out, 1, 3, log, dry_run=False)
    assert json.loads(out.read_text())["part"]["outcome"] == "failed"
    assert "| kernels | failed | 1 | 3 |" in report.render(tmp_path)
