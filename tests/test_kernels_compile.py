"""Every Triton kernel compiles to a cubin for sm_90 (H100) and sm_80 (A100) without a GPU.

The CPU interpreter used by the other kernel tests accepts programs the GPU compiler rejects (a
`tl.dot` with K < 16, globals that are not constexpr, tiles that overflow shared memory), so the
real compiler runs here, in a subprocess without TRITON_INTERPRET (under the interpreter the
kernels are not compilable JIT functions). The default run covers every kernel, every tuning
configuration and every dtype on sm_90 with the padded Q/K width 16 (the QK dims 4 and 16), and
fp16 on sm_80; the slow test covers the whole matrix (also `python -m drgan.kernels.compile_check`).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def _compile_check(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "drgan.kernels.compile_check", *args], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"compile failures:\n{result.stderr[-4000:]}\n{result.stdout[-4000:]}"
    assert " ok " in result.stdout


def test_kernels_compile_for_hopper():
    _compile_check("--arch", "90", "--qk-block", "16")


def test_kernels_compile_for_ampere_fp16():
    _compile_check("--arch", "80", "--qk-block", "16", "--dtype", "fp16")


@pytest.mark.slow
def test_kernels_compile_every_variant():
    _compile_check()
