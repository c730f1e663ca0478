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


def _compile_check(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "drgan.kernels.compile_check", *args], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"compile failures:\n{result.stderr[-4000:]}\n{result.stdout[-4000:]}"
    return result.stdout


def test_kernels_compile_for_hopper():
    assert " ok " in _compile_check("--arch", "90", "--qk-block", "16")


def test_kernels_compile_for_ampere_fp16():
    assert " ok " in _compile_check("--arch", "80", "--qk-block", "16", "--dtype", "fp16")


@pytest.mark.slow
def test_kernels_compile_every_variant():
    assert " ok " in _compile_check()


@pytest.fixture(scope="module")
def launch_rows(tmp_path_factory) -> list[dict]:
    """compile_check --launches (it exits 1 on any SASS problem): one row per launch."""
    import json

    report = tmp_path_factory.mktemp("launches") / "launches.json"
    _compile_check("--launches", "--json", str(report))
    return json.loads(report.read_text())["launches"]


def test_spatial_attention_launches_pass_the_sass_checks(launch_rows):
    """The launches the host code makes at the paper's shapes (sizes and strides specialized as a
    GPU launch would) keep the main loops on Hopper's floor: HGMMA, no two-byte loads, one
    exponential per score, no spills, registers under the cap (drgan.kernels.compile_check)."""
    rows = launch_rows
    forward = [r for r in rows if r["kernel"] == "_fwd_kernel" and r["N"] == 102400]
    assert forward and all(r["config"]["BLOCK_DV"] == 128 and r["exp_per_score"] < 1.07 for r in forward)
    assert {r["kernel"] for r in rows} == {"_fwd_kernel", "_bwd_delta_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel",
                                           "_gluon_fwd_kernel"}
    assert all(r["loop"]["HGMMA"] > 0 for r in rows if r["kernel"] != "_bwd_delta_kernel")
    # The backward's key-block kernel twice per shape: with the atomic dQ (the default: one exp per
    # score for the whole backward at N = 102,400, dQ through RED) and for the deterministic backward.
    dkdv = [r for r in rows if r["kernel"] == "_bwd_dkdv_kernel"]
    assert {r["dq"] for r in dkdv} == {"atomic", "kernel"}
    atomic = [r for r in dkdv if r["dq"] == "atomic" and r["N"] == 102400]
    assert atomic and all(r["loop"]["RED"] > 0 and r["exp_per_score"] == 1.0 and not r["problems"] for r in atomic)
    # The fp8 P@V forward (pv_fp8): fp8 warpgroup MMA for P@V, V pipelined, no problems where checked.
    fp8 = [r for r in rows if r.get("pv") == "fp8" and r["N"] >= 25600]
    assert fp8 and all(r["loop"]["QGMMA"] > 0 and r["loop"]["LDGSTS"] > 0 and not r["problems"] for r in fp8)


def test_gluon_forward_launches_pass_the_sass_checks(launch_rows):
    """The Gluon forward compiles for sm_90a at N = 102,400 (Dv 128) and 25,600 (Dv 256), batch 8,
    bf16, and its consumer loop holds: HGMMA, one exponential per score plus one rescale per row,
    no spills, within the consumer partition's registers."""
    gluon = {r["N"]: r for r in launch_rows if r["kernel"] == "_gluon_fwd_kernel"}
    assert set(gluon) == {102400, 25600}  # Dv = 512 (N = 6,400) is left to the Triton kernel
    for row in gluon.values():
        block_m, block_n = row["config"]["BLOCK_M"], row["config"]["BLOCK_N"]
        assert row["problems"] == []
        assert row["loop"]["MUFU.EX2"] == block_m * block_n // 128 + block_m // 32
        # S = Q K^T: one MMA (K = 16); P V: BLOCK_N / 16 of them.
        assert row["loop"]["HGMMA"] == 1 + block_n // 16
        assert row["stack"] == 0 and row["loop_registers"] <= row["config"]["worker_regs"][0]
        assert row["shared"] <= 232448


UNPADDED_PROBE = """
import torch
from drgan.kernels import compile_check as cc, launches, sass, spatial_attention_triton as sat
q = torch.empty(8, 102400, 4, dtype=torch.bfloat16, device="meta")
v = torch.empty(8, 102400, 128, dtype=torch.bfloat16, device="meta")
with launches.captured_launches() as recorded:
    sat.spatial_attention_triton(q, q, v)
launch = next(l for l in recorded if l.fn is sat._fwd_kernel)
assert launch.args[0].shape[2] == 16 and launch.kwargs["QK_PADDED"], "the wrapper pads Q/K to 16 columns"
# The same launch with the caller's unpadded Q/K (what the C API passes) loads K two bytes at a time.
raw = launches.Launch(launch.fn, (q, q, *launch.args[2:5], *q.stride(), *q.stride(), *launch.args[11:]),
                      {**launch.kwargs, "QK_PADDED": False})
problems = cc.attention_problems(raw, sass.inspect(launches.compile_launch(raw, 90)))
print("PROBLEMS", problems)
assert any("two-byte" in p for p in problems), problems
"""


def test_sass_checks_catch_unpadded_keys():
    """The checks fail where they should: Q/K as the C API takes them (4 columns, masked)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter's kernels do not compile
    result = subprocess.run([sys.executable, "-c", UNPADDED_PROBE], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    assert "two-byte" in result.stdout
