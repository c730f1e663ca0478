"""Per-grade lesion statistics (counts, sizes, distances from the disc) and the built-in default.

Sizes and distances are fractions of the field-of-view radius, so one set of statistics serves
every resolution; counts are per eye and do not depend on the resolution. The default stands in
for a dataset's own (drgan.data.lesion_fit) where none is given.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from drgan.errors import DrganError

LESION_TYPES = ("ma", "he", "ex", "se", "laser", "membrane")
DIST_BINS = 16            # histogram bins of (distance from the disc centre) / FOV radius
DIST_MAX = 2.0            # upper edge of the distance histogram, in FOV radii


@dataclass
class TypeStats:
    count_hist: list[float]   # P(count = k) for k = 0 .. len-1, per image
    log_area_mean: float      # mean of log(lesion area / FOV area)
    log_area_std: float       # std of the same
    dist_hist: list[float]    # P(distance bin), DIST_BINS bins over [0, DIST_MAX) FOV radii

    def mean_count(self) -> float:
        return float(np.dot(np.arange(len(self.count_hist)), self.count_hist))


@dataclass
class LesionStats:
    grades: dict[int, dict[str, TypeStats]]   # grade -> lesion type -> statistics

    def to_dict(self) -> dict:
        return {"grades": {str(g): {t: asdict(s) for t, s in types.items()} for g, types in self.grades.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "LesionStats":
        try:
            grades = {int(g): {t: TypeStats(**s) for t, s in types.items()} for g, types in data["grades"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise DrganError(f"invalid lesion statistics: {exc}") from None
        for g in range(5):
            missing = [t for t in LESION_TYPES if t not in grades.get(g, {})]
            if missing:
                raise DrganError(f"invalid lesion statistics: grade {g} lacks {', '.join(missing)}")
        return cls(grades)

    def save(self, path: str | Path) -> None:
        from drgan.io import atomic_write_bytes
        atomic_write_bytes(Path(path), (json.dumps(self.to_dict(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> "LesionStats":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise DrganError(f"{path}: lesion statistics file not found") from None
        except json.JSONDecodeError as exc:
            raise DrganError(f"{path}: not valid JSON ({exc})") from None


def _poisson_hist(mean: float, offset: int = 0, p_zero: float = 0.0) -> list[float]:
    """Histogram of offset + Poisson(mean), mixed with P(0) = p_zero; truncated where negligible."""
    kmax = int(offset + mean + 6 * math.sqrt(mean + 1) + 2)
    k = np.arange(kmax + 1)
    pmf = np.zeros(kmax + 1)
    j = k[offset:] - offset
    logp = j * math.log(mean) - mean - np.array([math.lgamma(v + 1) for v in j]) if mean > 0 else np.where(j == 0, 0.0, -np.inf)
    pmf[offset:] = np.exp(logp)
    pmf /= pmf.sum()
    pmf = (1 - p_zero) * pmf
    pmf[0] += p_zero
    return [float(v) for v in pmf]


def _dist_hist(*modes: tuple[float, float, float]) -> list[float]:
    """Mixture of Gaussians (weight, centre, std) over the distance bins, in FOV radii."""
    centres = (np.arange(DIST_BINS) + 0.5) * DIST_MAX / DIST_BINS
    h = sum(w * np.exp(-0.5 * ((centres - c) / s) ** 2) for w, c, s in modes)
    return [float(v) for v in h / h.sum()]


# Equivalent radius (fraction of the FOV radius) and log-std of the area, per type.
_DEFAULT_SIZE = {"ma": (0.009, 0.25), "he": (0.032, 0.45), "ex": (0.014, 0.45),
                 "se": (0.045, 0.3), "laser": (0.032, 0.12), "membrane": (0.11, 0.3)}
_DEFAULT_DIST = {
    "ma": _dist_hist((1.0, 0.75, 0.35)),
    "he": _dist_hist((1.0, 0.8, 0.4)),
    "ex": _dist_hist((1.0, 0.7, 0.3)),
    "se": _dist_hist((1.0, 0.55, 0.25)),
    "laser": _dist_hist((1.0, 1.25, 0.35)),
    # On the disc (about 0.12 FOV radii across), beside it, and along the arcades.
    "membrane": _dist_hist((0.3, 0.0, 0.1), (0.4, 0.3, 0.12), (0.3, 0.8, 0.2)),
}
# Per grade: type -> (Poisson mean, offset, P(zero) mixed in). Types not listed never appear.
_DEFAULT_COUNTS = {
    0: {},
    1: {"ma": (2.5, 1, 0.0)},
    2: {"ma": (8, 1, 0.0), "he": (5, 0, 0.0), "ex": (6, 0, 0.0), "se": (0.5, 0, 0.0)},
    3: {"ma": (12, 1, 0.0), "he": (10, 20, 0.0), "ex": (10, 0, 0.0), "se": (3, 1, 0.0)},
    4: {"ma": (12, 0, 0.0), "he": (12, 0, 0.0), "ex": (8, 0, 0.0), "se": (2, 0, 0.0),
        "laser": (40, 30, 0.5), "membrane": (1.0, 1, 0.3)},
}


def default_lesion_stats() -> LesionStats:
    grades = {}
    for g in range(5):
        types = {}
        for t in LESION_TYPES:
            mean, offset, p_zero = _DEFAULT_COUNTS[g].get(t, (0.0, 0, 1.0))
            radius, log_std = _DEFAULT_SIZE[t]
            types[t] = TypeStats(
                count_hist=_poisson_hist(mean, offset, p_zero) if t in _DEFAULT_COUNTS[g] else [1.0],
                log_area_mean=float(math.log(radius ** 2)),   # pi r^2 / (pi R^2) with R = 1
                log_area_std=log_std,
                dist_hist=_DEFAULT_DIST[t],
            )
        grades[g] = types
    return LesionStats(grades)


DEFAULT_STATS = default_lesion_stats()
