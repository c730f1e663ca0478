"""A trained grader as a measuring instrument: load it from a run folder, predict grades of a dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from drgan.checkpoint import build_loaded
from drgan.data.dataset import FundusDataset
from drgan.runs import GRADER_FILE, grader_resolution, require_kind
from drgan.errors import DrganError
from drgan.metrics.grading import grading_metrics


def load_grader(run: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, int]:
    """(GradeNet in eval mode, input resolution) of a `drgan train grader` run folder."""
    from drgan.nn import build_grader

    info = require_kind(run, "grader", "grader")  # every command takes it as --grader
    path = Path(run) / GRADER_FILE
    if not path.is_file():
        raise DrganError(f"{run}: no {GRADER_FILE} (not a grader run folder?)")
    model = build_loaded(lambda: build_grader(info.cfg), path)
    resolution = grader_resolution(run)
    return model.to(device).eval(), resolution


@torch.inference_mode()
def predict_grades(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    batch: int = 32,
    workers: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(true grades, predicted grades) over a dataset of FundusDataset items."""
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers)
    truth, pred = [], []
    for item in tqdm(loader, desc="grading", unit="batch", disable=not progress, leave=False):
        logits, _ = model(item["image"].to(device))
        truth.append(torch.as_tensor(item["grade"]).reshape(-1).cpu().numpy())
        pred.append(logits.argmax(dim=1).cpu().numpy())
    return np.concatenate(truth), np.concatenate(pred)


def evaluate_grader(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    batch: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """grading_metrics of the model's predictions on a dataset."""
    if len(dataset) == 0:
        raise DrganError("grading: the dataset has no images")
    truth, pred = predict_grades(model, dataset, batch, progress=progress)
    return grading_metrics(truth, pred)


def grade_dataset(
    run: str | Path,
    data: str | Path,
    split: str | None = None,
    device: str | torch.device = "cpu",
    batch: int = 32,
) -> dict[str, Any]:
    """evaluate_grader of a grader run folder on a dataset folder (only `split`'s rows when given),
    at the grader's resolution, with the run and the dataset named."""
    model, resolution = load_grader(run, device)
    metrics = evaluate_grader(model, FundusDataset(data, resolution, split=split), batch=batch)
    return {"model": str(run), "data": str(data), **metrics}
