"""The image-level gate of the fp8 P@V mode (`drgan synthesize --fp8-attention`) on a trained
generator: one set synthesized twice from the same plan, attention as its inputs and with P@V in
e4m3, then
  1. the two sets file by file: largest and mean difference in 8-bit levels, PSNR;
  2. condition fidelity of each (fraction of the real data's above chance, as `drgan demo` reports);
  3. SWD of each against the real data's test split, and of the two sets against each other
     (beside the SWD of a set against itself under a second seed: the metric's own noise).
The generator's learned gamma_s (how much each SCA block's spatial attention adds) is recorded too:
where they are small, the images cannot tell the two modes apart whatever the attention's error.
On the CPU the fp8 rounding is the PyTorch emulation (spatial_attention_fp8_pv_ref); on a CUDA card
of compute capability 8.9+ it is the Triton kernel.

    python bench/fp8_pv_images.py --run RUN --real DATA --out bench/results/fp8-pv-images-cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from drgan.checkpoint import load_generator
from drgan.cli.common import run_script
from drgan.metrics.fidelity import evaluate_fidelity
from drgan.metrics.images import load_rgb, open_image_set
from drgan.metrics.swd import compute_swd
from drgan.synthesis.runner import SynthesisOptions, synthesize


def _synthesize(run: str, out: Path, count: int, device: str, fp8: bool) -> Path:
    synthesize(SynthesisOptions(run=run, out=str(out), count=count, batch=10, device=device, save_masks=True,
                                threads=2, progress=False, fp8_attention=fp8))
    return out


def _pixel_differences(a: Path, b: Path) -> dict:
    names = sorted(p.name for p in (a / "images").iterdir())
    assert names == sorted(p.name for p in (b / "images").iterdir()), "the two sets hold different files"
    diffs = [np.abs(load_rgb(a / "images" / n).astype(np.int16) - load_rgb(b / "images" / n).astype(np.int16))
             for n in names]
    mse = float(np.mean([np.mean(d.astype(np.float64) ** 2) for d in diffs]))
    return {"images": len(names), "max_diff_8bit": int(max(d.max() for d in diffs)),
            "mean_diff_8bit": float(np.mean([d.mean() for d in diffs])),
            "images_differing": int(sum(bool(d.any()) for d in diffs)),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split(":")[0].split()))
    parser.add_argument("--run", required=True, help="run folder of a trained GAN (local stage)")
    parser.add_argument("--real", required=True, help="the real dataset it was trained on (test split used)")
    parser.add_argument("--count", type=int, default=100, help="images per set")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="JSON result file")
    args = parser.parse_args()
    gammas = {name: round(p.item(), 5) for name, p in load_generator(args.run).named_parameters() if name.endswith("gamma_s")}
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.machine()} CPU (emulation)",
              "torch": torch.__version__, "run": args.run, "count": args.count, "gamma_s": gammas}
    with tempfile.TemporaryDirectory() as tmp:
        sets = {mode: _synthesize(args.run, Path(tmp) / mode, args.count, args.device, mode == "fp8") for mode in ("input", "fp8")}
        result["pixels"] = _pixel_differences(sets["input"], sets["fp8"])
        real_test = open_image_set(args.real, "test")
        for mode, folder in sets.items():
            fidelity, _ = evaluate_fidelity(folder, reference=args.real, reference_split="test")
            swd = compute_swd(real_test, open_image_set(folder), progress=False)
            result[mode] = {"fidelity_fraction_of_real": fidelity["fraction_of_reference"],
                            "swd_x1e3_vs_real_test": swd["swd_x1e3_average"]}
        result["swd_x1e3_fp8_vs_input"] = compute_swd(open_image_set(sets["input"]), open_image_set(sets["fp8"]), progress=False)["swd_x1e3_average"]
        result["swd_x1e3_input_vs_itself_seed1"] = compute_swd(open_image_set(sets["input"]), open_image_set(sets["input"]), seed=1,
                                                               progress=False)["swd_x1e3_average"]
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
