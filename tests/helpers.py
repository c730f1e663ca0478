"""Small measures the tests share."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# The kernels' own device: CUDA where visible, else the CPU under Triton's interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernel = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a CUDA GPU or TRITON_INTERPRET=1 (set by tests/conftest.py without CUDA)",
)


def dead_pid() -> int:
    """The id of a process that has exited: the owner of a temp file a killed writer left."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the kernels' error measure against their references."""
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rows(root: Path) -> list[list[str]]:
    """labels.csv's rows, its header first."""
    with open(root / "labels.csv") as f:
        return list(csv.reader(f))


def write_rows(root: Path, rows_: list[list[str]]) -> None:
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows_)


def one_error(rc: int, _out: str, err: str, code: int = 1) -> str:
    """The one `error:` line of a command's stderr, asserting its exit code and no traceback."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error")]
    assert rc == code and len(lines) == 1 and "Traceback" not in err, (rc, err)
    return lines[0]


def randomize_batchnorm(module: torch.nn.Module) -> None:
    """Eval statistics and affine far from the identity, so a BatchNorm that is skipped, swapped or
    folded wrongly shows."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The list that each fsync of drgan.io appends its file's path to, by the name a temp file will
    be renamed to (drgan.io.temp_path: '.name.tmp-...' -> 'name'), folders by their path."""
    from drgan import io

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append(path if os.path.isdir(path) else os.path.basename(path).lstrip(".").split(io.TEMP_MARK)[0])
        real(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)
    return synced
