"""Metrics by name: a command, a benchmark or a script asks for "fid" or "swd" instead of wiring
each metric's sets, devices and options by hand.

A metric is a function of one MetricInputs that returns a flat dict: its keys start with the
metric's name, so the results of several metrics merge into one dict, and its values are JSON
numbers, strings or None; the key `warnings`, when present, lists where a value would mislead.
The CLI lists the names at startup, before torch is imported, so each metric imports its module
inside its body. A new metric is one decorated function here, calling its module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from drgan.errors import ParameterError, UsageError

if TYPE_CHECKING:
    from drgan.metrics.images import ImageSet

Result = dict[str, Any]
Metric = Callable[["MetricInputs"], Result]


@dataclass(frozen=True)
class MetricInputs:
    """What the metrics measure; each metric reads the fields it needs."""

    fake: Path                     # the set measured: a synthesized set, a dataset folder or a folder of images
    real: Path | None = None       # the reference set: fid and swd compare with it, fidelity and grading measure it beside
    real_split: str | None = None  # only this split of `real` (e.g. test)
    grader: Path | None = None     # grader run folder (grading)
    device: str = "cpu"            # a torch device name (the CLI resolves auto)
    max_images: int | None = None  # images per set for swd, prdc and fidelity; None: their own defaults
    seed: int = 0                  # swd's subsets, patch positions and directions; kid's and prdc's subsets
    per_grade: bool = False        # also the values per grade (dataset folders)

    def __post_init__(self) -> None:
        check_real_split(self.real, self.real_split)


def check_real_split(real: Path | None, real_split: str | None) -> None:
    """A split of no reference set would be ignored without a word: refuse it."""
    if real_split is not None and real is None:
        raise UsageError(f"{{real_split}} {real_split!r} is a split of {{real}}: give {{real}} too")


_METRICS: dict[str, Metric] = {}


def register_metric(function: Metric) -> Metric:
    """Register `function` under its own name."""
    _METRICS[function.__name__] = function
    return function


def metric_names() -> list[str]:
    return list(_METRICS)


def _unknown(param: str, name: str) -> ParameterError:
    return UsageError(f"{{{param}}} {name!r}: choose one of {', '.join(_METRICS)}")  # exit 2, as click's choices


def metric_list(metrics: str) -> list[str]:
    """The names of a comma-separated list, in order, once each; all are checked before any runs."""
    names = list(dict.fromkeys(name.strip() for name in metrics.split(",")))
    if "" in names:  # 'fid,' or 'fid,,swd': the list, not an unknown metric ''
        raise UsageError(f"{{metrics}} {metrics!r}: an empty name in the list; separate the names by single commas")
    for name in names:
        if name not in _METRICS:
            raise _unknown("metrics", name)
    return names


def check_inputs(names: list[str], inputs: MetricInputs) -> None:
    """What the metrics `names` need that a quick look tells, for all of them before any runs: the
    last of a list must not fail after minutes of the others."""
    for name in names:
        if name in ("fid", "kid", "prdc", "swd"):
            _real(inputs, name)
        elif name == "grading" and inputs.grader is None:
            raise _no_grader()
        elif name == "fidelity":
            from drgan.metrics.fidelity import check_has_masks

            check_has_masks(inputs.fake)
            if inputs.real is not None:  # measured beside it
                check_has_masks(inputs.real, inputs.real_split)


def calc_metric(metric: str, inputs: MetricInputs) -> Result:
    """The flat result of the metric named `metric` on `inputs`."""
    if metric not in _METRICS:
        raise _unknown("metric", metric)
    return _METRICS[metric](inputs)


def format_metrics(result: Result) -> str:
    """A flat result as a two-column table, each line ending in its value."""
    def cell(key: str, value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        if value is None:  # an undefined kappa reads as in every other table; a TPR of an absent grade
            return "n/a" if key.endswith("_kappa") else "-"
        return str(value)

    rows = {key: value for key, value in result.items() if key != "warnings"}
    width = max(map(len, rows), default=0)
    return "\n".join(f"{key:<{width}}  {cell(key, value)}" for key, value in rows.items())


def _no_grader() -> ParameterError:
    return UsageError("grading needs a grader: give its run folder {grader}")


def _real(inputs: MetricInputs, metric: str) -> Path:
    if inputs.real is None:
        raise UsageError(f"{metric} compares two sets: give the reference set {{real}}")
    return inputs.real


def _cap(inputs: MetricInputs) -> dict[str, int]:
    """`max_images` when given; otherwise the metric keeps its own default."""
    return {} if inputs.max_images is None else {"max_images": inputs.max_images}


def _sets(inputs: MetricInputs, metric: str) -> tuple[ImageSet, ImageSet]:
    """(real, fake) image sets of a metric that compares the two."""
    from drgan.metrics.images import open_image_set

    return open_image_set(_real(inputs, metric), inputs.real_split), open_image_set(inputs.fake)


@register_metric
def fid(inputs: MetricInputs) -> Result:
    """FID over every image of both sets (drgan.metrics.fid.compute_fid), the real set's statistics not cached."""
    from drgan.metrics.fid import compute_fid

    real, fake = _sets(inputs, "fid")
    result = compute_fid(real, fake, per_grade=inputs.per_grade, device=inputs.device)
    flat = {"fid": result["fid"], "fid_real_images": result["real"]["count"], "fid_fake_images": result["fake"]["count"]}
    if inputs.per_grade:
        flat.update({f"fid_grade_{grade}": value for grade, value in result["per_grade"].items()})
        flat["fid_grade_average"] = result["fid_grade_average"]
    return {**flat, "warnings": result["warnings"]}


@register_metric
def kid(inputs: MetricInputs) -> Result:
    """KID x1e3 over every image of both sets, and its spread over subsets (drgan.metrics.kid.compute_kid)."""
    from drgan.metrics.kid import compute_kid

    real, fake = _sets(inputs, "kid")
    result = compute_kid(real, fake, per_grade=inputs.per_grade, device=inputs.device, seed=inputs.seed)
    flat = {"kid_x1e3": result["kid_x1e3"], "kid_x1e3_std": result["kid_x1e3_std"], "kid_subset_size": result["subset_size"],
            "kid_real_images": result["real"]["count"], "kid_fake_images": result["fake"]["count"]}
    if inputs.per_grade:
        flat.update({f"kid_x1e3_grade_{grade}": value["kid_x1e3"] for grade, value in result["per_grade"].items()})
        flat["kid_x1e3_grade_average"] = result["kid_x1e3_grade_average"]
    return flat


@register_metric
def prdc(inputs: MetricInputs) -> Result:
    """Precision, recall, density and coverage of the fake set against the real one (drgan.metrics.prdc.compute_prdc)."""
    from drgan.metrics.prdc import FIGURES, compute_prdc

    real, fake = _sets(inputs, "prdc")
    result = compute_prdc(real, fake, per_grade=inputs.per_grade, seed=inputs.seed, device=inputs.device, **_cap(inputs))
    flat: Result = {f"prdc_{name}": result[name] for name in FIGURES}
    flat.update({"prdc_real_images": result["real"]["count"], "prdc_fake_images": result["fake"]["count"]})
    if inputs.per_grade:
        for grade, value in result["per_grade"].items():
            flat.update({f"prdc_{name}_grade_{grade}": value[name] for name in FIGURES})
        flat.update({f"prdc_{name}_grade_average": result["grade_average"][name] for name in FIGURES})
    return flat


@register_metric
def swd(inputs: MetricInputs) -> Result:
    """SWD x1e3 per pyramid level and averaged (drgan.metrics.swd.compute_swd)."""
    from drgan.metrics.swd import compute_swd

    real, fake = _sets(inputs, "swd")
    result = compute_swd(real, fake, seed=inputs.seed, device=inputs.device, per_grade=inputs.per_grade, **_cap(inputs))
    flat = {"swd_x1e3_average": result["swd_x1e3_average"], "swd_images": result["count"],
            "swd_resolution": result["resolution"]}
    flat.update({f"swd_x1e3_{level}px": value for level, value in result["swd_x1e3"].items()})
    if inputs.per_grade:
        flat.update({f"swd_x1e3_grade_{grade}": value["swd_x1e3_average"] for grade, value in result["per_grade"].items()})
        flat["swd_x1e3_grade_average"] = result["swd_x1e3_grade_average"]
    return flat


@register_metric
def fidelity(inputs: MetricInputs) -> Result:
    """Condition fidelity (ROC AUC per condition group) of the fake set, and of the real set beside
    it when given (drgan.metrics.fidelity.evaluate_fidelity); the fake set needs its masks."""
    from drgan.metrics.fidelity import evaluate_fidelity

    result, _ = evaluate_fidelity(inputs.fake, inputs.real, inputs.real_split, **_cap(inputs))
    flat: Result = {"fidelity_images": result["fidelity"]["images"]}
    flat.update({f"fidelity_{group}": auc for group, auc in result["fidelity"]["overall"].items()})
    if inputs.per_grade:
        for grade, groups in result["fidelity"]["per_grade"].items():
            flat.update({f"fidelity_grade_{grade}_{group}": auc for group, auc in groups.items()})
    if inputs.real is not None:
        reference = result["fidelity_reference"]
        flat["fidelity_real_images"] = reference["images"]
        flat.update({f"fidelity_real_{group}": auc for group, auc in reference["overall"].items()})
        flat.update({f"fidelity_fraction_of_real_{group}": v for group, v in result["fraction_of_reference"].items()})
    return flat


@register_metric
def grading(inputs: MetricInputs) -> Result:
    """A grader's accuracy and quadratic-weighted kappa on the fake set by its labels, and on the
    real set when given (drgan.metrics.grade_prediction.grade_dataset)."""
    if inputs.grader is None:
        raise _no_grader()
    from drgan.metrics.grade_prediction import grade_dataset

    flat: Result = {}
    for prefix, folder, split in (("grading", inputs.fake, None), ("grading_real", inputs.real, inputs.real_split)):
        if folder is None:
            continue
        result = grade_dataset(inputs.grader, folder, split, inputs.device)
        flat.update({f"{prefix}_accuracy": result["accuracy"], f"{prefix}_kappa": result["kappa"],
                     f"{prefix}_images": result["count"]})
        if inputs.per_grade:
            flat.update({f"{prefix}_tpr_grade_{grade}": tpr for grade, tpr in enumerate(result["tpr"])})
    return flat
