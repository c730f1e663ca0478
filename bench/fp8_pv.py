"""What the fp8 P@V costs in accuracy: the spatial attention with P and V rounded to float8 e4m3
(Hopper's fp8 wgmma inputs), emulated in PyTorch on the CPU, against the exact one.

The fp8 P@V kernel (spatial_attention's pv_fp8) computes p = exp2(s - m) in fp32 as the bf16 one
does, keeps the row sum l in fp32, and rounds p (in [0, 1]) and V (scaled per channel so its
largest magnitude is e4m3's 448) to e4m3 before the product; the scale is undone on the fp32
accumulator. This script
measures that rounding (drgan.kernels.spatial_attention_fp8_pv_ref, what `pv_fp8` runs on the CPU),
in three places:
  1. the attention output at each paper-1280 block (N = 6,400 / 25,600 / 102,400; random inputs,
     the scores' spread of the GPU check; sampled query rows against every key);
  2. the attention's error relative to the bf16 rounding the kernels already make (same inputs);
  3. the images of a small-256 generator whose SCA blocks run the emulation, against the exact
     attention, with the spatial branch switched fully on (gamma_s = 1; a new generator has 0).
The trained-generator gate (condition fidelity, SWD of synthesized sets) is bench/fp8_pv_images.py.

    python bench/fp8_pv.py --out bench/results/fp8-pv-cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from drgan.cli.common import run_script
from drgan.config import PRESETS
from drgan.kernels.spatial_attention import spatial_attention_fp8_pv_ref, spatial_attention_ref
from drgan.nn import DRGANGenerator, set_attention_fp8

ROWS = 1024  # query rows sampled per block (first and last halves)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def attention_errors(n: int, dqk: int, dv: int) -> dict:
    gen = torch.Generator().manual_seed(n)
    # The GPU check's inputs: DANet applies no 1/sqrt(d) scale, 0.5-std projections.
    q = torch.randn(1, n, dqk, generator=gen) * 0.5
    k = torch.randn(1, n, dqk, generator=gen) * 0.5
    v = torch.randn(1, n, dv, generator=gen)
    rows = torch.cat([torch.arange(ROWS // 2), torch.arange(n - ROWS // 2, n)])
    exact = spatial_attention_ref(q[:, rows], k, v)
    bf16 = spatial_attention_ref(q[:, rows].bfloat16(), k.bfloat16(), v.bfloat16())
    fp8 = spatial_attention_fp8_pv_ref(q[:, rows], k, v)
    return {"N": n, "Dqk": dqk, "Dv": dv, "rows": ROWS,
            "fp8_pv_rel_err": rel_err(fp8, exact), "bf16_rel_err": rel_err(bf16, exact)}


def image_errors(preset: str = "small-256", batch: int = 2) -> dict:
    cfg = PRESETS[preset]
    torch.manual_seed(0)
    g = DRGANGenerator(cfg, "local").eval()
    for name, p in g.named_parameters():
        if name.endswith("gamma_s"):
            p.data.fill_(1.0)
    cond = (torch.rand(batch, cfg.cond_channels, cfg.resolution, cfg.resolution) > 0.9).float()
    z = torch.randn(batch, cfg.z_dim)
    with torch.inference_mode():
        exact, _ = g(cond, z, noise=0)
        fp8, _ = set_attention_fp8(g, True)(cond, z, noise=0)
    diff = (fp8 - exact).abs()
    mse = ((fp8 - exact) ** 2).mean().item()
    # Images are in [-1, 1]: a peak-to-peak of 2, so PSNR = 10 log10(4 / MSE); 8-bit levels = 127.5 per unit.
    return {"preset": preset, "batch": batch, "gamma_s": 1.0,
            "max_abs_diff": diff.max().item(), "max_diff_8bit_levels": diff.max().item() * 127.5,
            "mean_abs_diff": diff.mean().item(),
            "psnr_db": float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--out", help="JSON result file")
    args = parser.parse_args()
    cfg = PRESETS["paper-1280"]
    shapes = cfg.attention_shapes
    result = {"device": f"{platform.machine()} CPU (emulation)", "torch": torch.__version__,
              "attention": [attention_errors(*shape) for shape in shapes], "images": image_errors()}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(run_script(main))
