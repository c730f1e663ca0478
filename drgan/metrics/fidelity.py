"""Condition fidelity: how visible each condition is in an image, where its mask says it is.

A conditional generator that ignores its masks can still reach a low loss by painting the mean
fundus; FID and SWD barely notice. This metric asks the image directly. For each condition group
(vessels and red lesions darker than their surroundings, bright lesions brighter) it
scores every pixel by its local contrast in the green channel (the channel where fundus structures
stand out) against a background estimated from the neighbourhood with the group's mask left out,
and reports the ROC AUC that separates pixels under the mask from the ring of pixels around it:
0.5 = the image does not show the mask (chance), 1.0 = every masked pixel stands out.

The reference is the same number on real data (the training set): `fidelity_above_chance`
compares a synthesized set to it on the scale above chance.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from drgan.config import COND_CHANNELS
from drgan.errors import DrganError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ConditionGroup:
    name: str
    channels: tuple[str, ...]   # mask channels of the group (their union is the group's mask)
    darker: bool                # True: the structure is darker than its background


GROUPS = (
    ConditionGroup("vessel", ("vessel",), darker=True),
    ConditionGroup("red_lesion", ("ma", "he"), darker=True),
    ConditionGroup("bright_lesion", ("ex", "se"), darker=False),
)
# The optic disc is left out: a structure a tenth of the image wide, crossed by dark vessels, has
# no local background a ring could estimate (real phantoms score about 0.6 on it).
MIN_PIXELS = 4  # fewer masked (or ring) pixels than this in an image: the group is absent there


def contrast_scores(image: np.ndarray, masks: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per group, (scores of masked pixels, scores of the ring around them) of one image.

    image: uint8 (H, W, 3); masks: uint8 (8, H, W) in COND_CHANNELS order (> 127 = on).
    A score is the signed local contrast (positive = stands out the way the group should).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise DrganError(f"image has shape {image.shape}, expected (H, W, 3)")
    if masks.shape != (len(COND_CHANNELS), *image.shape[:2]):
        raise DrganError(f"masks have shape {masks.shape}, expected ({len(COND_CHANNELS)}, {image.shape[0]}, {image.shape[1]})")
    size = min(image.shape[:2])
    green = image[..., 1].astype(np.float32) / 255.0
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    c0, c1 = (image.shape[0] - 1) / 2, (image.shape[1] - 1) / 2
    fov = (yy - c0) ** 2 + (xx - c1) ** 2 <= (0.47 * size) ** 2  # images are square crops of the field of view
    width = max(3.0, size / 32)  # background ring: holds background beside a vessel, stays local (1280 px: 40)
    out = {}
    for group in GROUPS:
        on = np.zeros(image.shape[:2], bool)
        for name in group.channels:
            on |= masks[COND_CHANNELS.index(name)] > 127
        if on.sum() < MIN_PIXELS:
            continue
        dist = ndimage.distance_transform_edt(~on)
        ring = (dist > 1.5) & (dist <= 1.5 + width) & fov
        positive = on & fov
        if positive.sum() < MIN_PIXELS or ring.sum() < MIN_PIXELS:
            continue
        # Background: normalized Gaussian average of the pixels outside the (slightly grown) mask.
        keep = (dist > 1.5).astype(np.float32)
        sigma = width / 2
        background = ndimage.gaussian_filter(green * keep, sigma) / np.maximum(ndimage.gaussian_filter(keep, sigma), 1e-6)
        contrast = green - background
        if group.darker:
            contrast = -contrast
        out[group.name] = (contrast[positive], contrast[ring])
    return out


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    ranks = rankdata(np.concatenate([positive, negative]))
    n1, n2 = len(positive), len(negative)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n2))


def condition_fidelity(samples: Iterable[tuple[np.ndarray, np.ndarray, int]]) -> dict:
    """AUC per condition group, overall and per grade, of (image, masks, grade) samples.

    Returns {"overall": {group: auc}, "per_grade": {grade: {group: auc}}, "images": n}. Pixels
    are pooled over the images of a grade (the contrast is local, so images of different
    brightness pool fairly); a group no image holds is left out.
    """
    pooled: dict[int, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    n = 0
    for image, masks, grade in samples:
        n += 1
        for name, pair in contrast_scores(image, masks).items():
            pooled.setdefault(int(grade), {}).setdefault(name, []).append(pair)
    if n == 0:
        raise DrganError("condition fidelity: no images")

    def auc(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
        return roc_auc(np.concatenate([p for p, _ in pairs]), np.concatenate([q for _, q in pairs]))

    per_grade = {g: {name: auc(pairs) for name, pairs in groups.items()} for g, groups in sorted(pooled.items())}
    overall = {}
    for group in GROUPS:
        pairs = [pair for groups in pooled.values() for pair in groups.get(group.name, [])]
        if pairs:
            overall[group.name] = auc(pairs)
    return {"overall": overall, "per_grade": per_grade, "images": n}


MIN_REFERENCE_MARGIN = 0.05  # AUC above chance the reference must show for a ratio to it to mean anything


def fidelity_above_chance(fake: dict[str, float], real: dict[str, float]) -> dict[str, float]:
    """Per group, (AUC_fake - 0.5) / (AUC_real - 0.5): 1 = as visible as in real data, 0 = ignored;
    left out where the reference itself is within MIN_REFERENCE_MARGIN of chance (a ratio to
    noise: a reference AUC of 0.501 gave 373)."""
    return {k: (fake[k] - 0.5) / (real[k] - 0.5) for k in fake if k in real and real[k] >= 0.5 + MIN_REFERENCE_MARGIN}


def format_fidelity(result: dict, reference: dict | None = None) -> str:
    """A markdown table: AUC per group (and per grade), beside the reference when given."""
    names = [g.name for g in GROUPS if g.name in result["overall"]]
    header = "| | " + " | ".join(names) + " |"
    lines = [header, "|---" * (len(names) + 1) + "|"]

    def row(label: str, values: dict[str, float]) -> str:
        return f"| {label} | " + " | ".join(f"{values[k]:.3f}" if k in values else "-" for k in names) + " |"

    lines.append(row(f"all ({result['images']} images)", result["overall"]))
    for grade, values in result["per_grade"].items():
        lines.append(row(f"grade {grade}", values))
    if reference is not None:
        lines.append(row(f"reference ({reference['images']} images)", reference["overall"]))
        lines.append(row("fraction of reference above chance", fidelity_above_chance(result["overall"], reference["overall"])))
    return "\n".join(lines)


def _first_side(root, split: str | None = None) -> int:
    from drgan.data.format import open_dataset

    index = open_dataset(root, split=split)
    if not index.samples:
        raise DrganError(f"{root}: no samples" + (f" in split {split!r}" if split else ""))
    return min(index.read_image(index.samples[0]).shape[:2])


def dataset_fidelity(root: str | Path, resolution: int | None = None, split: str | None = None, max_images: int | None = None) -> dict:
    """condition_fidelity of a dataset folder (images/, masks/, labels.csv) at `resolution`
    (default: the side of its first image), over at most `max_images` evenly spaced samples."""
    from drgan.data.dataset import FundusDataset

    data = FundusDataset(root, resolution or _first_side(root, split), split=split)
    _refuse_without_masks(root, data.samples)
    picks = np.arange(len(data))
    if max_images is not None and len(picks) > max_images:
        picks = np.linspace(0, len(data) - 1, max_images).round().astype(int)

    def samples():
        for i in picks:
            image, masks = data.load(int(i))
            yield image, np.moveaxis(masks, -1, 0), data.grades[i]

    result = condition_fidelity(samples())
    if not result["overall"]:  # mask files there, but none with both a mask and a ring around it
        raise DrganError(f"{root}: no condition mask with both covered and uncovered pixels in the {result['images']} "
                         "image(s) measured (each is empty or covers the whole image): fidelity compares the two")
    return result


def check_has_masks(root: str | Path, split: str | None = None) -> None:
    """Refuse a dataset without one mask file of a condition group before any image is read (a set
    synthesized without --save-masks): fidelity would find out only after reading them all."""
    from drgan.data.format import open_dataset

    _refuse_without_masks(root, open_dataset(root, split=split).samples)


def _refuse_without_masks(root: str | Path, samples: list) -> None:
    """A missing mask file reads as zeros: a set without one measures nothing."""
    names = {name for group in GROUPS for name in group.channels}
    if not any(names & sample.masks.keys() for sample in samples):
        raise DrganError(f"{root}: no condition mask in its images: condition fidelity needs masks/<id>/<name>.png "
                         "(a synthesized set: drgan synthesize --save-masks)")


def tensor_fidelity(images: torch.Tensor, cond: torch.Tensor, grades: torch.Tensor) -> dict:
    """condition_fidelity of a batch: images (B, 3, H, W) in [-1, 1], cond (B, 8, H, W) in [0, 1]."""
    from drgan.synthesis.pixels import to_uint8  # imports torch, which scoring folders does not need

    masks = (cond.detach().float() * 255).round().byte().cpu().numpy()
    return condition_fidelity(zip(to_uint8(images), masks, [int(g) for g in grades]))


def evaluate_fidelity(
    data: str | Path,              # dataset with masks (a synthesized set with --save-masks)
    reference: str | Path | None = None,  # real dataset measured the same way
    reference_split: str | None = None,  # only this split of `reference` (e.g. test: images no model trained on)
    grader_run: str | Path | None = None,  # grader run folder: also grade `data` by its labels
    resolution: int | None = None, # measuring side (default: the first image of `data`)
    max_images: int = 500,         # images per set
    device: str = "cpu",           # grading device
) -> tuple[dict, str]:
    """Fidelity of `data` (and of `reference`), and the grader's accuracy and kappa on both;
    returns (result, markdown). Both sets are measured at one resolution."""
    if resolution is None:
        resolution = _first_side(data)
    result = {"data": str(data), "fidelity": dataset_fidelity(data, resolution, max_images=max_images)}
    text = ""
    if reference is not None:
        result["reference"] = str(reference)
        result["fidelity_reference"] = dataset_fidelity(reference, resolution, reference_split, max_images)
        result["fraction_of_reference"] = fidelity_above_chance(
            result["fidelity"]["overall"], result["fidelity_reference"]["overall"])
    text += "Condition fidelity (ROC AUC of local contrast under the mask vs around it; 0.5 = ignored)\n\n"
    text += format_fidelity(result["fidelity"], result.get("fidelity_reference")) + "\n"
    if grader_run is not None:
        from drgan.data.dataset import FundusDataset
        from drgan.metrics.grade_prediction import evaluate_grader, load_grader
        from drgan.metrics.grading import format_kappa

        model, side = load_grader(grader_run, device)
        text += f"\nGrader {grader_run} at {side} px, by each set's labels (chance: accuracy 0.2, kappa 0)\n\n"
        text += "| set | images | accuracy | quadratic-weighted kappa |\n|---|---:|---:|---:|\n"
        for key, folder, split in (("grading", data, None), ("grading_reference", reference, reference_split)):
            if folder is None:
                continue
            grading = evaluate_grader(model, FundusDataset(folder, side, split=split), progress=False)
            result[key] = {"grader": str(grader_run), "resolution": side, **grading}
            text += f"| {folder} | {grading['count']} | {grading['accuracy']:.3f} | {format_kappa(grading['kappa'])} |\n"
    return result, text
