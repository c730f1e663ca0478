"""bench/gpu_check.sh --dry-run: every part of the GPU check runs on the CPU and leaves its JSON,
so a typo, an import error or a wrong argument fails here instead of in the GPU window."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


# nvidia-smi absent, failing without a driver, and running with no GPU to list.
NO_GPU = {
    "absent": (None, "nvidia-smi not found"),
    "no driver": ("echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"; exit 9",
                  "nvidia-smi -L: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."),
    "no device": ("echo 'No devices were found'; exit 6", "nvidia-smi -L: No devices were found"),
}


def _run_without_dry_run(tmp_path: Path, nvidia_smi: str | None) -> subprocess.CompletedProcess:
    bash = shutil.which("bash")
    # A PATH of links to the usual tools only, so a real nvidia-smi on this machine is out of reach.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "timeout", "grep", "date", "mkdir", "mktemp", "cat", "tail", "ln", "rm", "wc"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    if nvidia_smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!{bash}\n{nvidia_smi}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    python = tmp_path / "python"  # leaves a mark if the script installs or runs anything
    python.write_text(f"#!{bash}\n: > {tmp_path / 'python-ran'}\nexit 1\n")
    python.chmod(0o755)
    env = {**os.environ, "PATH": str(bin_dir), "OUT": str(tmp_path / "out"), "PYTHON": str(python),
           "TMPDIR": str(tmp_path)}
    return subprocess.run([bash, str(ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("case", list(NO_GPU))
def test_without_a_gpu_it_stops_in_one_line_before_installing_or_writing(tmp_path, case):
    script, why = NO_GPU[case]
    run = _run_without_dry_run(tmp_path, script)
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout == "" and run.stderr == (
        f"gpu_check.sh: no NVIDIA GPU visible ({why}): run it on a GPU machine, or use --dry-run\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "python-ran").exists()


def test_a_listed_gpu_passes_the_check(tmp_path):
    # The lent machines' nvidia-smi -L format; the fake python then fails the install and the import.
    listed = "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0f2c)'; echo '  MIG 3g.40gb Device 0: (UUID: MIG-1a)'"
    run = _run_without_dry_run(tmp_path, f'[[ $1 == -L ]] && {{ {listed}; exit 0; }}; echo "NVIDIA H100, 81559 MiB, 570"')
    assert "no NVIDIA GPU" not in run.stderr, run.stderr
    assert (tmp_path / "python-ran").exists() and (tmp_path / "out/device.txt").read_text().startswith("NVIDIA H100")
    assert run.returncode == 1 and "drgan does not import" in run.stdout, run.stdout + run.stderr


def test_help_prints_the_header_and_runs_nothing(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--help"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "OUT": str(tmp_path / "out")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Every GPU correctness check") and "bash bench/gpu_check.sh -h" in proc.stdout
    assert "set -u" not in proc.stdout and not (tmp_path / "out").exists()
