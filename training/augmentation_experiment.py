"""The paper's augmentation experiment (Section IV.D, Tables III and IV) at any scale: it trains one
grader per arm, so it lives with the trainers and drgan.metrics stays free of training code.

Arms, trained with identical options (preset, epochs, batch, optimizer, seed):
- `real`: the grader on the real training rows alone;
- `real+synthetic`: real training rows plus every synthesized image;
- `real+mixup`, `real+cutmix` (optional light-weight baselines): real training rows plus as many
  images as the synthetic set holds, with its grade distribution, each made by MixUp (linear
  interpolation) or CutMix (a pasted box) of two real training images *of the same grade*, as the
  paper generates its MixUp/CutMix sets. Mixing ratios are drawn from Beta(1, 1) (uniform).
Each arm is scored on the same test images with accuracy, quadratic-weighted kappa and per-grade TPR.
With repeats, every arm is trained once per seed, and each figure gets its mean and spread over them.

Data: `--real` trains on its `train` rows and monitors its `val` rows; `--test` is scored on its
`test` rows when labels.csv has any, otherwise on every row; `--synthetic` contributes every row.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from drgan.config import NUM_GRADES, SEED_MAX, preset as get_preset
from drgan.data.dataset import FundusDataset
from drgan.data.format import MANIFEST_FILE, open_dataset
from drgan.data.labels import LABELS_FILE, moved_by_patient
from drgan.errors import DrganError, ParameterError
from drgan.grading_space import FILE_NAME as SPACE_FILE, GradingSpace
from drgan.io import atomic_write_json, atomic_write_text, check_outside, sha256_file
from drgan.metrics.grade_prediction import load_grader, predict_grades
from drgan.metrics.grading import BOOTSTRAP_RESAMPLES, format_kappa, grading_metrics, paired_bootstrap
from drgan.metrics.images import open_image_set
from drgan.runs import claimed_folder
from drgan.runtime import seeded_generator
from drgan.training.grader_pretraining import GraderOptions, batches_per_epoch, interrupted, train_grader
from drgan.training.interrupts import resumed_by_rerun

BASELINES = ("mixup", "cutmix")
MIX_ALPHA = 1.0  # Beta(alpha, alpha) mixing ratio
PROTOCOL_FILE = "experiment.json"  # marks a folder as this experiment's, with the settings it runs
_SAMPLE_STREAM = 7  # seeded_generator stream of _EpochSample's draws (the grader's own are 0-2)


def mixup(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * a + (1 - lam) * b."""
    return lam * a + (1.0 - lam) * b


def cutmix(a: torch.Tensor, b: torch.Tensor, lam: float, rng: np.random.Generator) -> torch.Tensor:
    """a with a box of b pasted in; the box covers a (1 - lam) share of the image (Yun et al. 2019)."""
    h, w = a.shape[-2:]
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), w)
    out = a.clone()
    out[..., y0:y1, x0:x1] = b[..., y0:y1, x0:x1]
    return out


class MixedGradeDataset(Dataset):
    """Images made by mixing two source images of the same grade; item i depends only on (seed, i)."""

    def __init__(
        self,
        source: Dataset,        # items {"id", "image", "cond", "grade"}, with a `.grades` list
        grades: Sequence[int],  # the grade of each mixed image
        kind: str,              # "mixup" | "cutmix"
        seed: int,              # pairs, ratios and boxes
    ) -> None:
        if kind not in BASELINES:
            raise DrganError(f"baseline {kind!r} is not one of {', '.join(BASELINES)}")
        source_grades = np.asarray(source.grades)
        self.pools = {g: np.flatnonzero(source_grades == g) for g in range(NUM_GRADES)}
        missing = sorted({int(g) for g in grades if len(self.pools[int(g)]) == 0})
        if missing:
            raise DrganError(f"{kind}: no real training image of grade(s) {missing} to mix")
        self.source = source
        self.grades = [int(g) for g in grades]
        self.kind = kind
        self.seed = seed

    def __len__(self) -> int:
        return len(self.grades)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        g = self.grades[i]
        pool = self.pools[g]
        ia, ib = rng.choice(pool, 2, replace=len(pool) < 2)
        a, b = self.source[int(ia)], self.source[int(ib)]
        lam = float(rng.beta(MIX_ALPHA, MIX_ALPHA))
        image = mixup(a["image"], b["image"], lam) if self.kind == "mixup" else cutmix(a["image"], b["image"], lam, rng)
        return {"id": f"{self.kind}_{i:06d}", "image": image, "cond": a["cond"], "grade": torch.tensor(g, dtype=torch.int64)}


class _Union(ConcatDataset):
    """ConcatDataset that keeps the `.grades` list and `set_epoch` the grader trainer uses."""

    def __init__(self, parts: Iterable[Dataset]) -> None:
        super().__init__(list(parts))
        self.grades = [g for part in self.datasets for g in part.grades]

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)


class _EpochSample(Dataset):
    """`size` items of `dataset`, drawn afresh each epoch without replacement (seeded by the epoch):
    an arm trained on it takes the optimizer steps of an arm of `size` images, whatever the data it
    draws from (`--equal-steps`: more images otherwise means more steps)."""

    def __init__(self, dataset: Dataset, size: int, seed: int) -> None:
        self.dataset, self.size, self.seed = dataset, min(size, len(dataset)), seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        order = seeded_generator(self.seed, _SAMPLE_STREAM, epoch)
        self.indices = torch.randperm(len(self.dataset), generator=order)[: self.size].tolist()
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    @property
    def grades(self) -> list[int]:  # this epoch's, for the grader's balanced sampling
        every = self.dataset.grades
        return [every[i] for i in self.indices]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.indices[i]]


def label_distribution(grades: Sequence[int]) -> dict[str, Any]:
    counts = np.bincount(np.asarray(grades, dtype=np.int64), minlength=NUM_GRADES)
    return {"count": counts.tolist(), "share": (counts / max(1, counts.sum())).round(4).tolist()}


def data_sha256(folder: str | Path) -> str:
    """The sha256 that names a dataset's content: of a synthesized set's manifest.csv, whose rows hold
    each image's sha256, else of labels.csv and every image's bytes (two sets of the same ids and
    grades share their labels.csv: phantoms of another seed, an import at another size)."""
    if (Path(folder) / MANIFEST_FILE).is_file():
        return _listing_sha256(folder)
    images = open_image_set(folder).content_hash()
    return hashlib.sha256(f"{_listing_sha256(folder)}\n{images}".encode()).hexdigest()


def _listing_sha256(folder: str | Path) -> str:
    """The sha256 of a set's manifest.csv, else of its labels.csv."""
    manifest = Path(folder) / MANIFEST_FILE
    return sha256_file(manifest if manifest.is_file() else Path(folder) / LABELS_FILE)


def _older_records(settings: dict[str, Any], typed: dict[str, str], labels_sha256: dict[str, str]
                   ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """An experiment.json of an earlier version counts as `settings` when it ran with them, so its
    finished arms are kept. Earlier versions recorded no test set (no arm trains on it) and named
    a dataset by its labels.csv alone (`labels_sha256`: real_sha256 and synthetic_sha256 so named),
    or the training data by the paths typed."""
    untested = {k: v for k, v in settings.items() if k not in ("test_sha256", "test_split")}
    by_labels = untested | labels_sha256
    by_path = {k: v for k, v in untested.items() if not k.endswith("_sha256")} | typed
    return lambda earlier: settings if earlier in (by_labels, by_path) else earlier


def _test_split(folder: Path) -> str | None:
    return "test" if any(s.split == "test" for s in open_dataset(folder).samples) else None


def _fmt_tpr(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_interval(interval: list[float] | None, signed: bool = False) -> str:
    """A 95% interval as text; n/a where kappa was undefined in some resample."""
    if interval is None:
        return "n/a"
    form = "+.4f" if signed else ".4f"
    return f"{interval[0]:{form}} to {interval[1]:{form}}"


def format_markdown(result: dict[str, Any]) -> str:
    """Tables III/IV side by side for the arms, then the label distributions (Fig. 7); with repeats,
    each figure's mean and spread over the seeds first, then each seed's."""
    p = result["protocol"]
    repeats = result.get("repeats")
    seeds = "" if repeats is None else f", {len(repeats)} seeds ({repeats[0]['seed']} to {repeats[-1]['seed']})"
    lines = [
        f"## Grading on {result['test']['folder']} ({result['test']['count']} images)",
        "",
        f"preset {p['preset']}, {p['epochs']} epochs, batch {p['batch']}, lr {p['lr']}, seed {p['seed']}{seeds}, "
        f"{p['resolution']} px" + (", equal steps (each epoch of a larger arm draws the real arm's number of images)"
                                   if p.get("equal_steps") else ""),
        "",
    ]
    if repeats is None:
        lines += _scores_table(result["arms"]) + ["", *_INTERVALS_INTRO, "", *_intervals_table(result["arms"])]
    else:
        lines += [
            "Mean +- standard deviation over the training seeds: the spread that another seed gives. A difference",
            "from the real arm is taken within each seed, then averaged. n/a: kappa is undefined in some seed.",
            "",
            "| Training | images | steps | Acc. | Kappa | Acc. - real | Kappa - real |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, arm in result["arms"].items():
            t = arm["test"]
            cells = [_fmt_spread(t, "accuracy"), _fmt_spread(t, "kappa")]
            cells += ["-", "-"] if name == "real" else [_fmt_spread(t, "accuracy_diff", True), _fmt_spread(t, "kappa_diff", True)]
            lines.append(f"| {name} | {arm['train_images']} | {arm['steps']} | " + " | ".join(cells) + " |")
        for run in repeats:
            lines += ["", f"### Seed {run['seed']}", "", *_scores_table(run["arms"]), "",
                      "95% intervals over the test images (see below):", "", *_intervals_table(run["arms"])]
        lines += ["", *_INTERVALS_INTRO]
    lines += [
        "",
        "## Grade distribution of the training data",
        "",
        "| Training | " + " | ".join(f"grade {g}" for g in range(NUM_GRADES)) + " |",
        "|---|" + "---:|" * NUM_GRADES,
    ]
    for name, arm in result["arms"].items():
        d = arm["label_distribution"]
        cells = " | ".join(f"{n} ({100 * s:.1f}%)" for n, s in zip(d["count"], d["share"]))
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


_INTERVALS_INTRO = [
    "## 95% intervals over the test images",
    "",
    f"Paired bootstrap, {BOOTSTRAP_RESAMPLES} resamples of the test images (the same resample for every arm): how much",
    "the test set's sampling moves a figure, and each arm's difference from the real arm. Not the",
    "spread of another training seed. n/a: kappa is undefined in some resample (one grade only).",
]


def _scores_table(arms: dict[str, Any]) -> list[str]:
    lines = ["| Training | images | steps | Acc. | Kappa | " + " | ".join(f"TPR {g}" for g in range(NUM_GRADES)) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * NUM_GRADES]
    for name, arm in arms.items():
        m = arm["test"]
        tpr = " | ".join(_fmt_tpr(t) for t in m["tpr"])
        lines.append(f"| {name} | {arm['train_images']} | {arm['steps']} | {m['accuracy']:.4f} | {format_kappa(m['kappa'], 4)} | {tpr} |")
    return lines


def _intervals_table(arms: dict[str, Any]) -> list[str]:
    lines = ["| Training | Acc. | Kappa | Acc. - real | Kappa - real |", "|---|---:|---:|---:|---:|"]
    for name, arm in arms.items():
        m = arm["test"]
        lines.append(f"| {name} | {_fmt_interval(m['accuracy_ci95'])} | {_fmt_interval(m['kappa_ci95'])} | "
                     f"{_fmt_interval(m.get('accuracy_diff_ci95'), True) if name != 'real' else '-'} | "
                     f"{_fmt_interval(m.get('kappa_diff_ci95'), True) if name != 'real' else '-'} |")
    return lines


def _fmt_spread(test: dict[str, Any], key: str, signed: bool = False) -> str:
    """'mean +- std' of a summarize_repeats figure; n/a where kappa was undefined in some seed."""
    mean, std = test[f"{key}_mean"], test[f"{key}_std"]
    return "n/a" if mean is None else f"{mean:{'+.4f' if signed else '.4f'}} +- {std:.4f}"


def _check_structures_not_tested(synthetic: Path, test: Path, test_ids: list[str]) -> None:
    """Refuse a synthesized set drawn on test images' vessel trees and discs (its manifest's
    structure ids): the real+synthetic arm would train on the eyes it is tested on."""
    manifest = Path(synthetic) / MANIFEST_FILE
    if not manifest.is_file():
        return
    with open(manifest, newline="") as f:
        shared = sorted({row.get("structure_id") for row in csv.DictReader(f)} & set(test_ids))
    if shared:
        raise ParameterError(
            f"{{synthetic}} {synthetic}: {len(shared)} of its structures are test images of {{test}} {test} "
            f"({', '.join(shared[:3])}{', ...' if len(shared) > 3 else ''}): the real+synthetic arm would train on "
            "the eyes it is tested on; synthesize it with --structures-split train")


def run_augment_experiment(
    real: Path,
    synthetic: Path,
    test: Path,
    out: Path,
    baselines: Sequence[str] = (),
    preset: str = "paper-1280",
    epochs: int = 30,
    batch: int = 64,
    seed: int = 0,
    device: str = "cpu",
    equal_steps: bool = False,
    repeats: int = 1,
) -> tuple[dict[str, Any], str]:
    """Train one grader per arm under `out/<arm>`; write out/results.json and out/results.md. A rerun
    with the same settings into the same `out` keeps the arms an interrupted run finished.
    `equal_steps`: every arm takes the real arm's optimizer steps (_EpochSample). `repeats` > 1:
    every arm is trained with the seeds seed .. seed + repeats - 1 (`out/<arm>_seed<s>`), and the
    results give each figure's mean and standard deviation over them (summarize_repeats)."""
    check_outside(out, [real, synthetic, test])  # its grader runs would lie inside a dataset
    if not 1 <= repeats <= SEED_MAX - seed + 1:
        raise ParameterError(f"{{repeats}} {repeats}: must be >= 1, with the last seed, {{seed}} + {{repeats}} - 1, "
                             f"at most {SEED_MAX}")
    opts = GraderOptions(preset=preset, epochs=epochs, batch=batch, seed=seed, device=device)
    cfg = get_preset(preset)
    resolution = cfg.resolution
    real_train = FundusDataset(real, resolution, split="train", augment=True)
    real_val = FundusDataset(real, resolution, split="val")
    fake = FundusDataset(synthetic, resolution, augment=True)
    split = _test_split(test)
    test_set = FundusDataset(test, resolution, split=split)
    _check_structures_not_tested(synthetic, test, test_set.ids)

    def arms_of(s: int) -> tuple[dict[str, Dataset], dict[str, Dataset]]:
        """Each arm's data and what it trains on, for seed `s`."""
        data: dict[str, Dataset] = {"real": real_train, "real+synthetic": _Union([real_train, fake])}
        for kind in dict.fromkeys(baselines):
            data[f"real+{kind}"] = _Union([real_train, MixedGradeDataset(real_train, fake.grades, kind, s)])
        return data, {name: _EpochSample(d, len(real_train), s) if equal_steps and name != "real" else d for name, d in data.items()}

    out = Path(out)
    # The data is named by its content, not by the path typed: a rerun from another directory, on
    # another synthesized set or after the set grew must not keep arms trained on other data, nor
    # replace the results of another test set.
    settings = {**opts.to_dict(), "resolution": resolution, "arms": list(arms_of(seed)[1]),
                "real_sha256": data_sha256(real), "synthetic_sha256": data_sha256(synthetic),
                "test_sha256": data_sha256(test), "test_split": split,
                **({"equal_steps": True} if equal_steps else {}),  # only when on: earlier records still match
                **({"repeats": repeats} if repeats > 1 else {}),
                # Where it moves rows (earlier versions split rows without a split by image id),
                # an experiment begun before must not resume with other train and val parts.
                **({"split_by": "patient"} if moved_by_patient(Path(real)) else {})}
    if split is None and settings["test_sha256"] == settings["real_sha256"]:
        raise ParameterError(f"{{test}} {test}: the {{real}} dataset, which has no test split: every arm would be "
                             "tested on its own training images; give a dataset with a test split, or another one")
    result: dict[str, Any] = {
        "protocol": {**settings, "real": str(Path(real).resolve()), "synthetic": str(Path(synthetic).resolve())},
        "test": {"folder": str(test), "split": split, "count": len(test_set)},
    }
    upgrade = _older_records(settings, {"real": str(real), "synthetic": str(synthetic)},
                             {"real_sha256": _listing_sha256(real), "synthetic_sha256": _listing_sha256(synthetic)})
    with claimed_folder(out, PROTOCOL_FILE, settings, "an augmentation experiment", upgrade=upgrade), resumed_by_rerun():
        runs = []
        for s in range(seed, seed + repeats):
            data, arms = arms_of(s)
            runs.append({"seed": s, "arms": _train_and_test(data, arms, real_val, test_set, out, "" if repeats == 1 else f"_seed{s}",
                                                            dataclasses.replace(opts, seed=s))})
        if repeats == 1:
            result["arms"] = runs[0]["arms"]
        else:
            result["arms"] = summarize_repeats(runs)
            result["repeats"] = runs
        markdown = format_markdown(result)
        atomic_write_json(out / "results.json", result)
        atomic_write_text(out / "results.md", markdown)
    return result, markdown


def _train_and_test(data: dict[str, Dataset], arms: dict[str, Dataset], real_val: Dataset, test_set: FundusDataset,
                    out: Path, suffix: str, opts: GraderOptions) -> dict[str, Any]:
    """Each arm's grader, trained under out/<arm><suffix> (or found there finished), and its scores
    on the test set, with the paired bootstrap's intervals."""
    arms_result: dict[str, Any] = {}
    predicted: dict[str, Any] = {}
    for name, train in arms.items():
        run = out / (name.replace("+", "_") + suffix)
        if (run / SPACE_FILE).is_file():  # finished by an earlier, interrupted call of the same experiment
            val_accuracy = GradingSpace.load(run / SPACE_FILE).grader_accuracy
            print(f"{name}: its grader was trained by an earlier call, in {run}", file=sys.stderr)
        else:
            val_accuracy = train_grader(train, real_val, run, opts, resume=interrupted(run), spaces_used=False)["val_accuracy"]
        grader, _ = load_grader(run, opts.device)
        arms_result[name] = {
            "run": str(run),
            "train_images": len(data[name]),
            "steps": opts.epochs * batches_per_epoch(len(train), opts.batch),
            "label_distribution": label_distribution(data[name].grades),
            "val_accuracy": val_accuracy,
        }
        truth, predicted[name] = predict_grades(grader, test_set, batch=opts.batch)
        arms_result[name]["test"] = grading_metrics(truth, predicted[name])
    # How far the test set's sampling moves each figure, and each arm's gain over the real one.
    for name, intervals in paired_bootstrap(truth, predicted, baseline="real").items():
        arms_result[name]["test"] |= intervals
    return arms_result


def summarize_repeats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm, over the seeds of `runs` (each {"seed", "arms"}): the mean and the standard deviation
    (ddof 1) of test accuracy and kappa, and of each arm's difference from the real arm of the same
    seed; the spread that another training seed gives, which the bootstrap of one run does not show.
    Kappa's figures are None where some seed left it undefined (one grade only)."""
    def spread(values: list[float | None]) -> tuple[float | None, float | None]:
        if any(v is None for v in values):
            return None, None
        return float(np.mean(values)), float(np.std(values, ddof=1))

    summary = {}
    for name, first in runs[0]["arms"].items():
        test: dict[str, Any] = {}
        for key in ("accuracy", "kappa"):
            test[f"{key}_mean"], test[f"{key}_std"] = spread([r["arms"][name]["test"][key] for r in runs])
            if name != "real":
                diffs = [None if None in (r["arms"][name]["test"][key], r["arms"]["real"]["test"][key])
                         else r["arms"][name]["test"][key] - r["arms"]["real"]["test"][key] for r in runs]
                test[f"{key}_diff_mean"], test[f"{key}_diff_std"] = spread(diffs)
        summary[name] = {"train_images": first["train_images"], "steps": first["steps"],
                         "label_distribution": first["label_distribution"], "seeds": [r["seed"] for r in runs], "test": test}
    return summary
