"""`drgan evaluate fid|kid|prdc|swd|grading|fidelity|metrics` and `drgan experiment augment`.

The evaluate commands share one vocabulary, that of drgan.metrics.registry.MetricInputs: --fake is
the set measured, --real the reference set (--real-split its split), --grader a grader run folder.
Former spellings stay accepted as aliases (--data, --reference, --reference-split, --run, --model)."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from drgan.cli.common import BATCH, DEVICE_HELP, SEED, IntRange, resumes_on_rerun
from drgan.config import MAX_BATCH, MAX_IMAGE_SIDE, PRESETS
from drgan.data.labels import SPLITS
from drgan.errors import ParameterError, UsageError
from drgan.io import check_outside
from drgan.metrics.registry import check_real_split, metric_names

_folder = click.Path(exists=True, file_okay=False, path_type=Path)
_split = click.Choice(SPLITS)  # named with its option when wrong (the reader's own error names none)


def _device(name: str) -> str:
    from drgan.runtime import resolve_device

    return str(resolve_device(name))


def _check_cache_option(cache: Path, sets: tuple[Path, Path]) -> None:
    """Refuse a --cache with a file on its path, or inside a set measured (its statistics, about 34 MB
    each, would become part of that dataset), before any work. A folder that cannot be written only
    goes unwritten (a warning beside the FID)."""
    existing = next((p for p in (cache, *cache.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ParameterError(f"{{cache}} {cache}: {existing} is a file, not a folder")
    check_outside(cache, sets)


def _emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    click.echo(json.dumps(result, indent=2) if as_json else text)


@click.group()
def evaluate() -> None:
    """Fidelity (FID, KID, precision and recall, SWD) and grading metrics."""


@evaluate.command()
@click.option("--real", type=_folder, required=True, help="Real images: a folder of images or a dataset folder.")
@click.option("--fake", type=_folder, required=True, help="Synthesized images: a folder of images or a dataset folder.")
@click.option("--per-grade", is_flag=True, help="Also FID per grade and their average (needs dataset folders).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the real set's cached statistics [default: ~/.cache/drgan/fid].")
@click.option("--no-cache", is_flag=True, help="Neither read nor write cached statistics.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--batch", type=BATCH, default=32, show_default=True, help="Images per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fid(real: Path, fake: Path, per_grade: bool, cache: Path | None, no_cache: bool, device: str, batch: int, as_json: bool) -> None:
    """Frechet Inception Distance between two image sets."""
    from drgan.metrics.fid import compute_fid, default_cache_dir, format_fid
    from drgan.metrics.images import open_image_set

    if cache is not None and no_cache:  # --no-cache would ignore --cache without a word
        raise UsageError("{cache} and {no_cache} contradict each other: give one")
    if cache is not None:
        _check_cache_option(cache, (real, fake))  # before minutes of feature extraction, not after
    cache_dir = None if no_cache else (cache or default_cache_dir())
    result = compute_fid(open_image_set(real), open_image_set(fake), per_grade=per_grade, device=_device(device),
                         batch=batch, cache_dir=cache_dir)
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    _emit(result, as_json, format_fid(result))


@evaluate.command()
@click.option("--real", type=_folder, required=True, help="Real images: a folder of images or a dataset folder.")
@click.option("--fake", type=_folder, required=True, help="Synthesized images: a folder of images or a dataset folder.")
@click.option("--per-grade", is_flag=True, help="Also KID per grade and their average (needs dataset folders).")
@click.option("--subsets", type=IntRange(1, 10_000), default=100, show_default=True,
              help="Random subsets the estimate is averaged over.")
@click.option("--subset-size", type=IntRange(2, 10_000), default=1000, show_default=True,
              help="Images per set in each subset (fewer where a set or grade holds fewer); memory grows with its square.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="The subsets.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--batch", type=BATCH, default=32, show_default=True, help="Images per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def kid(real: Path, fake: Path, per_grade: bool, subsets: int, subset_size: int, seed: int, device: str, batch: int,
        as_json: bool) -> None:
    """Kernel Inception Distance (x1e3) between two image sets: unbiased, for small sets too."""
    from drgan.metrics.images import open_image_set
    from drgan.metrics.kid import compute_kid, format_kid

    result = compute_kid(open_image_set(real), open_image_set(fake), per_grade=per_grade, device=_device(device),
                         batch=batch, subsets=subsets, subset_size=subset_size, seed=seed)
    _emit(result, as_json, format_kid(result))


@evaluate.command()
@click.option("--real", type=_folder, required=True, help="Real images: a folder of images or a dataset folder.")
@click.option("--fake", type=_folder, required=True, help="Synthesized images: a folder of images or a dataset folder.")
@click.option("--per-grade", is_flag=True, help="Also each figure per grade and their averages (needs dataset folders).")
@click.option("--neighbours", type=IntRange(1, 100), default=5, show_default=True,
              help="k: each image's ball reaches its k-th nearest neighbour in its own set.")
@click.option("--max-images", type=IntRange(min=2), default=10000, show_default=True,
              help="Images per set (a seeded random subset); time grows with its square.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="The subsets.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--batch", type=BATCH, default=32, show_default=True, help="Images per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prdc(real: Path, fake: Path, per_grade: bool, neighbours: int, max_images: int, seed: int, device: str, batch: int,
         as_json: bool) -> None:
    """Precision, recall, density and coverage: fidelity and diversity apart."""
    from drgan.metrics.images import open_image_set
    from drgan.metrics.prdc import compute_prdc, format_prdc

    result = compute_prdc(open_image_set(real), open_image_set(fake), per_grade=per_grade, k=neighbours, max_images=max_images,
                          seed=seed, device=_device(device), batch=batch)
    _emit(result, as_json, format_prdc(result))


@evaluate.command()
@click.option("--real", type=_folder, required=True, help="Real images: a folder of images or a dataset folder.")
@click.option("--fake", type=_folder, required=True, help="Synthesized images: a folder of images or a dataset folder.")
@click.option("--resolution", type=IntRange(16, MAX_IMAGE_SIDE), default=None,
              help="Side every image is resized to [default: width of the first fake image].")
@click.option("--max-images", type=IntRange(min=2), default=8192, show_default=True,
              help="Images per set (a seeded random subset); memory grows with it.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Patch positions, subsets and directions.")
@click.option("--per-grade", is_flag=True, help="Also SWD per grade and their average (needs dataset folders).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def swd(real: Path, fake: Path, resolution: int | None, max_images: int, seed: int, per_grade: bool, device: str,
        as_json: bool) -> None:
    """Sliced Wasserstein distance (x1e3) on Laplacian-pyramid patches."""
    from drgan.metrics.images import open_image_set
    from drgan.metrics.swd import compute_swd, format_swd

    result = compute_swd(open_image_set(real), open_image_set(fake), resolution=resolution, max_images=max_images,
                         seed=seed, device=_device(device), per_grade=per_grade)
    _emit(result, as_json, format_swd(result))


@evaluate.command()
@click.option("--grader", "--run", "--checkpoint", "--model", "grader", type=_folder, required=True,
              help="Grader run folder (grader.safetensors + run.json).")
@click.option("--fake", "--data", "fake", type=_folder, required=True,
              help="Set graded by its labels: a dataset folder (images/ + labels.csv), synthesized or real.")
@click.option("--split", type=_split, default=None, help="Only rows of labels.csv with this split (e.g. test) [default: all].")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--batch", type=BATCH, default=32, show_default=True, help="Images per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def grading(grader: Path, fake: Path, split: str | None, device: str, batch: int, as_json: bool) -> None:
    """Accuracy, quadratic-weighted kappa, per-grade TPR and confusion matrix of a grader."""
    from drgan.metrics.grade_prediction import grade_dataset
    from drgan.metrics.grading import format_grading_table

    metrics = grade_dataset(grader, fake, split, _device(device), batch)
    _emit(metrics, as_json, format_grading_table(metrics))


@evaluate.command()
@click.option("--fake", "--data", "fake", type=_folder, required=True,
              help="Set measured, with masks: a synthesized set made with --save-masks, or any dataset folder.")
@click.option("--real", "--reference", "real", type=_folder, default=None,
              help="Reference set (e.g. the real training set) measured the same way, shown beside.")
@click.option("--real-split", "--reference-split", "real_split", type=_split, default=None,
              help="Only this split of --real (e.g. test) [default: all].")
@click.option("--grader", "--run", "--checkpoint", "--model", "grader", type=_folder, default=None,
              help="Grader run folder: also grade both sets by their labels (accuracy, kappa) at the grader's resolution.")
@click.option("--resolution", type=IntRange(16, MAX_IMAGE_SIDE), default=None,
              help="Side both sets are measured at [default: side of the first image of --fake].")
@click.option("--max-images", type=IntRange(min=1), default=500, show_default=True,
              help="Images per set (evenly spaced).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP + " Used by grading only.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fidelity(fake: Path, real: Path | None, real_split: str | None, grader: Path | None,
             resolution: int | None, max_images: int, device: str, as_json: bool) -> None:
    """Condition fidelity: do vessels and lesions show where the masks put them (ROC AUC, 0.5 = ignored)."""
    from drgan.metrics.fidelity import evaluate_fidelity

    check_real_split(real, real_split)
    if grader is None and device != "auto":  # auto: the same --device may go to every evaluate command
        raise UsageError("{device} is the grading device: add {grader} (fidelity itself runs on the CPU)")
    result, text = evaluate_fidelity(fake, real, real_split, grader, resolution, max_images, _device(device))
    _emit(result, as_json, text)


@evaluate.command()
@click.option("--fake", type=_folder, required=True,
              help="Set measured: a synthesized set, a dataset folder or a folder of images (fidelity needs masks).")
@click.option("--real", type=_folder, default=None,
              help="Reference set: fid and swd compare with it, fidelity and grading measure it beside [default: none].")
@click.option("--real-split", type=_split, default=None, help="Only this split of --real (e.g. test) [default: all].")
@click.option("--metrics", default="fid,swd,fidelity", show_default=True,
              help=f"Comma-separated metrics, of: {', '.join(metric_names())}.")
@click.option("--grader", type=_folder, default=None, help="Grader run folder (grading) [default: none].")
@click.option("--per-grade", is_flag=True, help="Also each metric per grade (needs dataset folders).")
@click.option("--max-images", type=IntRange(min=2), default=None,
              help="Images per set for swd, prdc and fidelity (SWD needs 2) [default: theirs, 8192, 10000 and 500]; fid, kid "
                   "and grading take all.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="SWD's subsets, patch positions and directions; KID's and PRDC's subsets.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def metrics(fake: Path, real: Path | None, real_split: str | None, metrics: str, grader: Path | None, per_grade: bool,
            max_images: int | None, seed: int, device: str, as_json: bool) -> None:
    """Metrics by name on one set (and a reference set): one table, or one JSON object."""
    from drgan.metrics.fid import shared_features
    from drgan.metrics.registry import MetricInputs, calc_metric, check_inputs, format_metrics, metric_list

    names = metric_list(metrics)
    if grader is not None and "grading" not in names:  # no other metric reads it
        raise UsageError(f"{{grader}} is read by the grading metric only: add grading to {{metrics}} ({metrics})")
    if max_images is not None and not {"prdc", "swd", "fidelity"} & set(names):
        raise UsageError(f"{{max_images}} caps prdc, swd and fidelity only: add one of them to {{metrics}} ({metrics})")
    if seed != 0 and not {"kid", "prdc", "swd"} & set(names):
        raise UsageError(f"{{seed}} draws the subsets of kid, prdc and swd only: add one of them to {{metrics}} ({metrics})")
    if device != "auto" and not {"fid", "kid", "prdc", "swd", "grading"} & set(names):  # fidelity runs on the CPU
        raise UsageError(f"{{device}} runs fid, kid, prdc, swd and grading only: add one of them to {{metrics}} ({metrics})")
    inputs = MetricInputs(fake=fake, real=real, real_split=real_split, grader=grader, device=_device(device),
                          max_images=max_images, seed=seed, per_grade=per_grade)
    check_inputs(names, inputs)
    results: dict[str, Any] = {}
    with shared_features():  # fid, kid and prdc: one network and one pass over each set
        for name in names:
            result = calc_metric(name, inputs)
            for warning in result.pop("warnings", []):
                click.echo(f"warning: {warning}", err=True)
            results.update(result)
    _emit(results, as_json, format_metrics(results))


@click.group()
def experiment() -> None:
    """Experiments of the paper."""


@experiment.command()
@click.option("--real", type=_folder, required=True, help="Real training dataset folder.")
@click.option("--synthetic", type=_folder, required=True, help="Synthesized dataset folder (images/ + labels.csv).")
@click.option("--test", type=_folder, required=True, help="Test dataset: the rows of its test split, or every row when it has none (not --real then).")
@click.option("--baseline", "baselines", type=click.Choice(["mixup", "cutmix"]), multiple=True,
              help="Also train with MixUp / CutMix within a grade (repeatable).")
@click.option("--preset", default="paper-1280", show_default=True, type=click.Choice(list(PRESETS)),
              help="Grader model and image size (paper-1280: ResNet-50 at 1280 px, as the paper).")
@click.option("--epochs", type=IntRange(min=1), default=30, show_default=True, help="Epochs per arm (paper: 30).")
@click.option("--batch", type=IntRange(2, MAX_BATCH), default=64, show_default=True, help="Batch size (paper: 64).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Same seed for every arm.")
@click.option("--repeats", type=IntRange(1, 1000), default=1, show_default=True,
              help="Train every arm with the seeds SEED .. SEED + REPEATS - 1: each figure's mean and spread over them.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/augment"), show_default=True,
              help="Folder for one grader run per arm, results.json and results.md.")
@click.option("--equal-steps", is_flag=True,
              help="Every arm takes the real arm's optimizer steps: each epoch of a larger arm draws as many images as the "
                   "real training split holds, afresh each epoch (without it, more images means more steps).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the markdown table.")
def augment(real: Path, synthetic: Path, test: Path, baselines: tuple[str, ...], preset: str, epochs: int, batch: int,
            seed: int, repeats: int, device: str, out: Path, equal_steps: bool, as_json: bool) -> None:
    """Grader trained on real vs real + synthetic data (paper Tables III/IV)."""
    from drgan.io import check_writable_dir
    from drgan.training.augmentation_experiment import PROTOCOL_FILE, run_augment_experiment

    check_writable_dir(out)  # before hours of training
    resumes_on_rerun(Path(out) / PROTOCOL_FILE, "finished arms are kept")
    with contextlib.redirect_stdout(sys.stderr):  # training logs go to stderr, the result alone to stdout
        result, markdown = run_augment_experiment(real, synthetic, test, out, baselines=baselines, preset=preset,
                                                  epochs=epochs, batch=batch, seed=seed, device=_device(device),
                                                  equal_steps=equal_steps, repeats=repeats)
    _emit(result, as_json, markdown)
