"""Per-grade lesion statistics (counts, sizes, distances from the disc) and the built-in default.

Sizes and distances are fractions of the field-of-view radius, so one set of statistics serves
every resolution; counts are per eye and do not depend on the resolution. The default stands in
for a dataset's own (drgan.data.lesion_fit) where none is given.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from drgan.config import NUM_GRADES
from drgan.errors import DrganError
from drgan.io import atomic_write_json, check_regular_file

LESION_TYPES = ("ma", "he", "ex", "se", "laser", "membrane")
DIST_BINS = 16            # histogram bins of (distance from the disc centre) / FOV radius
DIST_MAX = 2.0            # upper edge of the distance histogram, in FOV radii
# Most lesions of one type in one image (count_hist has at most MAX_LESIONS + 1 entries). Panretinal
# photocoagulation, the most numerous lesions an eye shows, places 1200-1600 burns over the whole
# retina, fewer of them inside one photograph; 200,000 microaneurysms cost 860 MB per image.
MAX_LESIONS = 2000
# log(lesion area / FOV area): below -20 a lesion is under 0.01 px even at 1280 px; above 1 it is
# larger than the field of view. A log-std above 5 spreads areas over more than e^10.
LOG_AREA_RANGE = (-20.0, 1.0)
LOG_AREA_STD_MAX = 5.0


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
        """Statistics from their JSON form; a field out of its range is a DrganError naming it."""
        if not isinstance(data, dict) or not isinstance(data.get("grades"), dict):
            raise DrganError("invalid lesion statistics: expected an object with a 'grades' object")
        if sorted(data["grades"]) != [str(g) for g in range(NUM_GRADES)]:
            raise DrganError(f"invalid lesion statistics: grades must be 0..{NUM_GRADES - 1}, "
                             f"got {', '.join(map(str, data['grades'])) or 'none'}")
        grades = {}
        for g, types in data["grades"].items():
            if not isinstance(types, dict) or sorted(types) != sorted(LESION_TYPES):
                raise DrganError(f"invalid lesion statistics: grades.{g} must hold exactly {', '.join(LESION_TYPES)}")
            grades[int(g)] = {t: _type_stats(types[t], f"grades.{g}.{t}") for t in LESION_TYPES}
        return cls(grades)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> "LesionStats":
        path = Path(path)
        if not path.exists():
            raise DrganError(f"{path}: lesion statistics file not found")
        check_regular_file(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except OSError as exc:
            raise DrganError(f"{path}: unreadable ({exc})") from None
        except UnicodeDecodeError:  # an image or archive given for the statistics
            raise DrganError(f"{path}: not a text file (lesion statistics are the JSON `drgan data fit-lesions` "
                             "writes)") from None
        except json.JSONDecodeError as exc:
            raise DrganError(f"{path}: not valid JSON ({exc})") from None
        except DrganError as exc:
            raise DrganError(f"{path}: {exc}") from None


def _numbers(value: object, field: str) -> np.ndarray:
    """A JSON list of finite, non-negative numbers whose sum is positive and finite."""
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DrganError(f"invalid lesion statistics: {field} must be a list of numbers")
    arr = np.asarray(value, float)
    if not np.isfinite(arr).all() or (arr < 0).any() or not 0 < arr.sum() < np.inf:
        raise DrganError(f"invalid lesion statistics: {field} needs finite, non-negative values with a positive sum")
    return arr


def _type_stats(value: object, field: str) -> TypeStats:
    """One lesion type's statistics, each field checked against its range."""
    names = [f.name for f in fields(TypeStats)]
    if not isinstance(value, dict) or sorted(value) != sorted(names):
        raise DrganError(f"invalid lesion statistics: {field} must hold exactly {', '.join(names)}")
    counts = _numbers(value["count_hist"], f"{field}.count_hist")
    if len(counts) > MAX_LESIONS + 1:
        raise DrganError(f"invalid lesion statistics: {field}.count_hist allows {len(counts) - 1} lesions per image "
                         f"(at most {MAX_LESIONS})")
    dist = _numbers(value["dist_hist"], f"{field}.dist_hist")
    if len(dist) != DIST_BINS:
        raise DrganError(f"invalid lesion statistics: {field}.dist_hist has {len(dist)} bins, not {DIST_BINS}")
    for name, (low, high) in (("log_area_mean", LOG_AREA_RANGE), ("log_area_std", (0.0, LOG_AREA_STD_MAX))):
        v = value[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
            raise DrganError(f"invalid lesion statistics: {field}.{name} {v!r} is outside {low:g}..{high:g}")
    return TypeStats([float(v) for v in counts], float(value["log_area_mean"]), float(value["log_area_std"]),
                     [float(v) for v in dist])


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
