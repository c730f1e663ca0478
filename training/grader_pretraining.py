"""Grader pretraining (paper III.E.1) and the latent grading spaces (III.D).

`train_grader` fits the ResNet-50 grader on the training split, reports validation accuracy,
quadratic-weighted kappa and per-grade TPR each epoch, then fits the per-grade Gaussians of the
pooled features over the training split, read without augmentation. Run folder: RUN/grader.safetensors, RUN/run.json,
RUN/grading_space.safetensors, RUN/logs (TensorBoard).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from drgan import locks
from drgan.checkpoint import save_module
from drgan.runs import GRADER_FILE, prepare_out, remove_unfinished, write_run_config
from drgan.runtime import resolve_device
from drgan.config import preset
from drgan.errors import DrganError, ParameterError
from drgan.grading_space import FILE_NAME as SPACE_FILE, GradingSpace
from drgan.nn import GradeNet, build_grader
from drgan.training.logger import RunLogger
from drgan.training.options import GraderOptions

__all__ = ["GraderOptions", "train_grader", "grader_features", "GRADER_FILE", "AGM_MIN_ACCURACY"]

AGM_MIN_ACCURACY = 0.8  # the paper finds the grading spaces help once the grader reaches ~80%

BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _grades(dataset: Dataset) -> torch.Tensor:
    """Every sample's grade (FundusDataset lists them without decoding images)."""
    grades = getattr(dataset, "grades", None)
    if grades is None:
        grades = [int(dataset[i]["grade"]) for i in range(len(dataset))]
    return torch.tensor(grades, dtype=torch.long)


def _sampler(train: Dataset, opts: GraderOptions, num_grades: int) -> WeightedRandomSampler | None:
    """Inverse-frequency sampling so each grade is drawn equally often (--balanced)."""
    if not opts.balanced:
        return None
    grades = _grades(train)
    counts = torch.bincount(grades, minlength=num_grades).clamp(min=1).double()
    gen = torch.Generator().manual_seed(opts.seed)
    return WeightedRandomSampler((1.0 / counts)[grades], num_samples=len(grades), replacement=True, generator=gen)


def _unaugmented(dataset: Dataset) -> Dataset:
    """The training split as the grading spaces see it: flips and turns would widen each grade's Gaussian."""
    if getattr(dataset, "augment", False):  # FundusDataset
        dataset = copy.copy(dataset)
        dataset.augment = False
    return dataset


@torch.no_grad()
def grader_features(grader: GradeNet, dataset: Dataset, batch: int, device: torch.device, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predicted grades, pooled features, true grades) over a dataset, in eval mode."""
    grader.eval()
    preds, feats, grades = [], [], []
    for item in DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers):
        logits, feat = grader(item["image"].to(device))
        preds.append(logits.argmax(1).cpu())
        feats.append(feat.float().cpu())
        grades.append(item["grade"].long())
    return torch.cat(preds), torch.cat(feats), torch.cat(grades)


def train_grader(
    train: Dataset,
    val: Dataset,
    out: str | Path,
    opts: GraderOptions,
    batch_transform: BatchTransform | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the grader, write its run folder and grading spaces; returns per-epoch metrics.

    A non-empty `out` is refused unless `overwrite` replaces a previous run; a run that fails
    leaves no run folder behind."""
    if len(train) == 0:
        raise DrganError("grader: the training split is empty")
    if len(val) == 0:
        raise DrganError("grader: the validation split is empty (labels.csv needs rows with split 'val')")
    device = resolve_device(opts.device)
    out = Path(out)
    created = not out.exists() or (out.is_dir() and not any(out.iterdir()))
    prepare_out(out, overwrite, "grader")
    try:
        return _train_grader(train, val, out, opts, batch_transform, device)
    except BaseException:
        remove_unfinished(out, created, SPACE_FILE)
        raise
    finally:
        locks.release(out)


def _train_grader(train: Dataset, val: Dataset, out: Path, opts: GraderOptions, batch_transform: BatchTransform | None,
                  device: torch.device) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cfg = preset(opts.preset)
    torch.manual_seed(opts.seed)
    grader = build_grader(cfg).to(device)
    optim = torch.optim.Adam(grader.parameters(), lr=opts.lr, betas=(opts.beta1, 0.999))
    sampler = _sampler(train, opts, cfg.num_grades)
    order = torch.Generator().manual_seed(opts.seed)
    loader = DataLoader(
        train, batch_size=opts.batch, shuffle=sampler is None, sampler=sampler, generator=order,
        num_workers=opts.workers, drop_last=len(train) > opts.batch,
    )
    mix = torch.Generator().manual_seed(opts.seed + 1)
    resolution = int(train[0]["image"].shape[-1])  # what evaluation must resize to (not always the preset's)
    write_run_config(out, cfg, stage="global", options={"trainer": "grader", **opts.to_dict()}, resolution=resolution)
    logger = RunLogger(out, enabled=True, purge_step=None)
    report: dict[str, Any] = {"epochs": []}
    step = 0
    for epoch in range(opts.epochs):
        grader.train()
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)  # FundusDataset: fresh augmentations each epoch
        losses, step = _train_epoch(grader, optim, loader, batch_transform, mix, device, out, epoch, opts.epochs, step)
        report["epochs"].append(_validate(grader, val, opts, device, cfg.num_grades, losses, epoch, logger))
    logger.close()
    save_module(grader, out / GRADER_FILE)
    return _fit_grading_space(grader, train, out, opts, device, cfg.num_grades, report)


def _train_epoch(grader: GradeNet, optim: torch.optim.Optimizer, loader: DataLoader, batch_transform: BatchTransform | None,
                 mix: torch.Generator, device: torch.device, out: Path, epoch: int, epochs: int, step: int
                 ) -> tuple[list[float], int]:
    """One pass over the training loader; returns the batch losses and the step count after it."""
    losses = []
    bar = tqdm(loader, desc=f"grader epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
    for item in bar:
        images, target = item["image"], item["grade"].long()
        if batch_transform is not None:
            images, target = batch_transform(images, target, mix)
        logits, _ = grader(images.to(device))
        loss = F.cross_entropy(logits, target.to(device))  # int grades or (B, 5) soft targets
        if not torch.isfinite(loss):
            save_module(grader, out / GRADER_FILE)
            raise DrganError(f"grader: non-finite loss at epoch {epoch + 1}, step {step}; weights saved to {out / GRADER_FILE}")
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        losses.append(loss.item())
        step += 1
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses, step


def _validate(grader: GradeNet, val: Dataset, opts: GraderOptions, device: torch.device, num_grades: int,
              losses: list[float], epoch: int, logger: RunLogger) -> dict[str, Any]:
    """Validation metrics after one epoch, logged and printed; returns the epoch's report entry."""
    from drgan.metrics.grading import grading_metrics

    pred, _, truth = grader_features(grader, val, opts.batch, device, opts.workers)
    metrics = grading_metrics(truth.numpy(), pred.numpy(), num_grades)
    train_loss = sum(losses) / max(1, len(losses))
    scalars = {"grader/train_loss": train_loss, "grader/val_accuracy": metrics["accuracy"], "grader/val_kappa": metrics["kappa"], "grader/lr": opts.lr}
    scalars.update({f"grader/val_tpr_{g}": t for g, t in enumerate(metrics["tpr"]) if t is not None})
    logger.scalars(scalars, epoch + 1)
    tqdm.write(f"grader epoch {epoch + 1}/{opts.epochs}: loss {train_loss:.4f}  val accuracy {metrics['accuracy']:.3f}  kappa {metrics['kappa']:.3f}", file=sys.stderr)
    return {"epoch": epoch + 1, "train_loss": train_loss, "val": metrics}


def _fit_grading_space(grader: GradeNet, train: Dataset, out: Path, opts: GraderOptions, device: torch.device,
                       num_grades: int, report: dict[str, Any]) -> dict[str, Any]:
    """Fit and save the grading spaces on the unaugmented training split; completes `report`."""
    accuracy = report["epochs"][-1]["val"]["accuracy"]
    _, features, grades = grader_features(grader, _unaugmented(train), opts.batch, device, opts.workers)
    if not bool(torch.isfinite(features).all()):  # a finite last loss can still give a non-finite update
        raise ParameterError("grader: its features are NaN or infinite after training (it diverged): try a lower {lr}")
    space = GradingSpace.fit(features, grades, num_grades, accuracy)
    space.save(out / SPACE_FILE)
    report.update(val_accuracy=accuracy, grader=str(out / GRADER_FILE), grading_space=str(out / SPACE_FILE))
    if accuracy < AGM_MIN_ACCURACY:
        report["warning"] = (
            f"grader validation accuracy {accuracy:.3f} is below {AGM_MIN_ACCURACY:.2f}: "
            "the grading spaces may not separate the grades (the paper finds AGM needs about 80%)"
        )
        print(f"warning: {report['warning']}", file=sys.stderr)
    return report
