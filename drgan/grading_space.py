"""Latent grading spaces: per-grade Gaussians N(mu_g, diag(var_g)) over the grader's pooled feature."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from drgan.checkpoint import load_metadata, load_tensors, save_tensors
from drgan.errors import DrganError, name_list

FILE_NAME = "grading_space.safetensors"


@dataclass
class GradingSpace:
    mean: torch.Tensor      # (num_grades, D)
    var: torch.Tensor       # (num_grades, D), diagonal variance
    grader_accuracy: float  # validation accuracy of the grader that produced the features

    def __post_init__(self) -> None:
        if self.mean.ndim != 2 or self.var.shape != self.mean.shape:
            raise DrganError(f"grading space: mean {tuple(self.mean.shape)} and var {tuple(self.var.shape)} must be (grades, D)")

    @property
    def dim(self) -> int:
        return self.mean.shape[1]

    @property
    def num_grades(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def fit(cls, features: torch.Tensor, grades: torch.Tensor, num_grades: int, grader_accuracy: float) -> "GradingSpace":
        """Per-grade mean and (biased) variance; a grade with no sample gets the global statistics."""
        features = features.double()
        g_mean, g_var = features.mean(0), features.var(0, correction=0)
        means, vars_ = [], []
        for g in range(num_grades):
            sel = features[grades == g]
            means.append(sel.mean(0) if len(sel) else g_mean)
            vars_.append(sel.var(0, correction=0) if len(sel) > 1 else g_var)
        return cls(torch.stack(means).float(), torch.stack(vars_).float(), grader_accuracy)

    def sample(self, grades: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(mu_g, diag(var_g)) for each grade in `grades` (B,) -> (B, D)."""
        if grades.numel() and (int(grades.min()) < 0 or int(grades.max()) >= self.num_grades):
            raise DrganError(f"grades must lie in 0..{self.num_grades - 1}")
        return self.shift(grades, torch.randn(len(grades), self.dim, generator=generator))

    def shift(self, grades: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Standard-normal draws eps (B, D) moved into the spaces of `grades` (B,): mu_g + eps * sigma_g."""
        return self.mean[grades] + eps * self.var[grades].sqrt()

    def to(self, device: torch.device) -> "GradingSpace":
        return GradingSpace(self.mean.to(device), self.var.to(device), self.grader_accuracy)

    def save(self, path: str | Path) -> None:
        save_tensors({"mean": self.mean, "var": self.var}, path, metadata={"grader_accuracy": f"{self.grader_accuracy:.6f}"})

    @classmethod
    def load(cls, path: str | Path) -> "GradingSpace":
        tensors = load_tensors(path)
        if set(tensors) != {"mean", "var"}:
            raise DrganError(f"{path}: not a grading space (expected tensors 'mean' and 'var', found {name_list(sorted(tensors))})")
        problem = _problem(tensors["mean"], tensors["var"])
        if problem:  # NaN here turns every synthesized image black and every training step NaN
            raise DrganError(f"{path}: not a usable grading space ({problem})")
        acc = float(load_metadata(path).get("grader_accuracy", "nan"))
        return cls(tensors["mean"], tensors["var"], acc)


def _problem(mean: torch.Tensor, var: torch.Tensor) -> str | None:
    """What makes a loaded mean and variance unusable as Gaussians, or None."""
    if not (mean.is_floating_point() and var.is_floating_point()):
        return f"mean {mean.dtype} and var {var.dtype} must be floating point"
    if mean.ndim != 2 or var.shape != mean.shape:
        return f"mean {tuple(mean.shape)} and var {tuple(var.shape)} must both be (grades, D)"
    for name, t in (("mean", mean), ("var", var)):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            return f"{name} holds {bad} NaN or infinite values"
    negative = int((var < 0).sum())
    return f"var holds {negative} negative values" if negative else None
