"""Autotuned launches under an emulated autotuner: correct whichever configuration wins.

On a GPU the autotuner runs every configuration on the call's own buffers before the chosen one
runs again, so what a losing configuration leaves behind (extra partial tiles, say) can leak into
the result; the interpreter alone runs one fixed configuration and never sees that. Here each
launch is wrapped in `triton.autotune` with its real configurations and a benchmark that runs
each configuration once, on the real buffers, and reports fixed timings, so that each
configuration in turn is the one chosen.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import drgan.kernels  # noqa: E402
from drgan.kernels import spatial_attention, spatial_attention_ref  # noqa: E402
from drgan.kernels import spatial_attention_triton as sat  # noqa: E402
from drgan.kernels.spatial_attention import spatial_attention_fp8_pv_ref  # noqa: E402
from drgan.runtime import deterministic_algorithms  # noqa: E402
from helpers import DEVICE, needs_kernel, rel_err  # noqa: E402

pytestmark = needs_kernel
# Launches of the backward under torch.use_deterministic_algorithms (the others: "dkdv_dq").
DETERMINISTIC_BACKWARD = {"dkdv", "dq"}
CASES = [(name, winner) for name, (_, configs) in sat.TUNED.items() for winner in range(len(configs))]


def emulated_bench(winner: int, count: int):
    """A do_bench that runs the configuration once and reports it fastest iff it is number `winner`."""
    calls = itertools.count()

    def do_bench(kernel_call, quantiles):
        index = next(calls)
        kernel_call()
        return [1.0 if index % count == winner else 2.0] * len(quantiles)

    do_bench.calls = calls
    return do_bench


def run_tuned(monkeypatch, name: str, winner: int, dv: int):
    """Spatial attention forward and backward (the fp8 forward for fwd_fp8) with launch `name` tuned
    so that configuration `winner` wins among those the autotuner considers at this Dv; returns
    the candidates."""
    configs = sat.TUNED[name][1]
    candidates = sat.whole_dv_tiles(configs, {"DV": dv})
    bench = emulated_bench(candidates.index(configs[winner]), len(candidates))
    tuner = sat.autotuner(name, do_bench=bench)
    monkeypatch.setitem(sat.tuners, name, tuner)
    if name == "fwd_fp8":
        check_fp8_forward(dv)
    else:
        with deterministic_algorithms(name in DETERMINISTIC_BACKWARD):
            check_forward_and_backward(dv)
    assert tuner.best_config is configs[winner]
    assert next(bench.calls) == len(candidates), "each candidate configuration is benchmarked exactly once"
    return candidates


def check_fp8_forward(dv: int) -> None:
    """The fp8 P@V forward (fp16 inputs, inference) against its emulation: one key block at this N
    for most tiles, so the same roundings; two for 32-key tiles."""
    q, k = (torch.randn(2, 40, 4, device=DEVICE).half() for _ in range(2))
    v = torch.randn(2, 40, dv, device=DEVICE).half()
    with torch.no_grad():
        out = spatial_attention(q, k, v, impl="triton", pv_fp8=True)
        want = spatial_attention_fp8_pv_ref(q, k, v)
    assert rel_err(out, want) < 0.03


def check_forward_and_backward(dv: int) -> None:
    q, k = (torch.randn(2, 40, 4, device=DEVICE).requires_grad_(True) for _ in range(2))
    v = torch.randn(2, 40, dv, device=DEVICE).requires_grad_(True)
    out = spatial_attention(q, k, v, impl="triton")
    want = spatial_attention_ref(q, k, v)
    grad = torch.randn_like(out)
    got_grads = torch.autograd.grad(out, (q, k, v), grad)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=0)
    for label, got, expected in zip(("dq", "dk", "dv"), got_grads, want_grads):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0, msg=lambda m, label=label: f"{label}: {m}")


@pytest.mark.parametrize("name, winner", CASES, ids=[f"{n}-config{w}" for n, w in CASES])
def test_spatial_attention_exact_whichever_configuration_wins(monkeypatch, name, winner):
    # Dv 32 below the winner's tile: the tightest tile that holds Dv whole is the winner's, so it is
    # a candidate; tiles of other widths are not.
    dv = sat.TUNED[name][1][winner].kwargs["BLOCK_DV"] - 32
    candidates = run_tuned(monkeypatch, name, winner, dv)
    assert all(c.kwargs["BLOCK_DV"] == dv + 32 for c in candidates)


@pytest.mark.parametrize("name", sorted(sat.TUNED))
def test_dv_wider_than_every_tile_tunes_all_configurations(monkeypatch, name):
    # Dv = 300: no tile holds it whole, so every configuration is measured, with 2 to 5 V tiles
    # writing different partials into the same buffers.
    configs = sat.TUNED[name][1]
    assert run_tuned(monkeypatch, name, len(configs) - 1, 300) == configs


def test_every_autotuned_launch_is_emulated():
    """A kernel tuned anywhere else in drgan.kernels would escape the test above."""
    folder = Path(drgan.kernels.__file__).parent
    tuning = {p.name for p in folder.glob("*.py") if re.search(r"\bautotune\(", p.read_text())}
    assert tuning == {"spatial_attention_triton.py"}
    assert sat.TUNED, "no autotuned launches registered"


def test_lazy_rescale_exact_while_maxima_grow(monkeypatch):
    """The lazy rescale over many key blocks whose row maxima grow both by less and by more than
    its threshold of 8 (log2 units): keys sorted by norm and stretched make later blocks' scores larger."""
    (config,) = [c for c in sat.FWD_CONFIGS if c.kwargs.get("LAZY_RESCALE")]
    monkeypatch.setitem(sat.tuners, "fwd", sat.autotuner("fwd", [config], do_bench=emulated_bench(0, 1)))
    gen = torch.Generator().manual_seed(3)
    block = config.kwargs["BLOCK_N"]
    n = 6 * block
    q = torch.randn(1, n, 4, generator=gen) * 2
    k = torch.randn(1, n, 4, generator=gen)
    k = k[:, k.norm(dim=2)[0].argsort()] * torch.linspace(0.5, 1.5, n)[None, :, None]
    v = torch.randn(1, n, 96, generator=gen)
    # log2-domain running maxima per key block: the growth from block to block, over all rows.
    maxima = ((q[0] @ k[0].T) * sat.LOG2E).unflatten(1, (-1, block)).amax(2).cummax(1).values
    growth = maxima.diff(dim=1).amax(0)
    assert (growth > 8).any() and ((growth > 0) & (growth <= 8)).any(), growth
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    out = spatial_attention(q, k, v, impl="triton")
    torch.testing.assert_close(out, spatial_attention_ref(q, k, v), atol=1e-4, rtol=1e-4)
