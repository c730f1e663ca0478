"""Grader pretraining (paper III.E.1) and the latent grading spaces (III.D).

`train_grader` fits the ResNet-50 grader on the training split, reports validation accuracy,
quadratic-weighted kappa and per-grade TPR each epoch, then fits the per-grade Gaussians of the
pooled features over the training split, read without augmentation. Run folder: RUN/grader.safetensors, RUN/run.json,
RUN/grading_space.safetensors, RUN/logs (TensorBoard), and a checkpoint (RUN/state.json + state.safetensors:
weights, Adam moments, the epochs' reports, the position inside an epoch; drgan.training.state) after every
epoch and every `checkpoint_every` steps, that `resume` continues exactly: the sampling order,
augmentations and batch transforms of an epoch depend on (seed, epoch) only.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from drgan import locks
from drgan.checkpoint import save_module
from drgan.runs import (GRADER_FILE, check_same_dataset, dataset_record, has_checkpoint, prepare_out, read_run,
                        require_checkpoint, require_kind, undone_on_failure, write_run_config)
from drgan.runtime import epoch_seed, resolve_device, seeded_generator
from drgan.config import preset
from drgan.errors import DrganError, ParameterError, UsageError
from drgan.grading_space import FILE_NAME as SPACE_FILE, GradingSpace
from drgan.nn import GradeNet, build_grader
from drgan.training.interrupts import ignored_signals, interrupted_line, whole_step
from drgan.training.logger import RunLogger
from drgan.training.options import GRADER_RESUMABLE, GraderOptions, kept_on_resume
from drgan.training.state import (STATE_JSON, kept_checkpoint, load_state, optimizer_from_state, optimizer_to_state, restoring,
                                  recover_checkpoint, rng_state, save_state, set_rng_state, write_checkpoint)

__all__ = ["GraderOptions", "train_grader", "check_resumable", "interrupted", "grader_features", "AGM_MIN_ACCURACY"]

AGM_MIN_ACCURACY = 0.8  # the paper finds the grading spaces help once the grader reaches ~80%

# Streams of seeded_generator(seed, stream, epoch): an epoch's randomness never depends on the ones before.
_ORDER_STREAM, _MIX_STREAM, _WORKER_STREAM = 0, 1, 2

BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _grades(dataset: Dataset) -> torch.Tensor:
    """Every sample's grade (FundusDataset lists them without decoding images)."""
    grades = getattr(dataset, "grades", None)
    if grades is None:
        grades = [int(dataset[i]["grade"]) for i in range(len(dataset))]
    return torch.tensor(grades, dtype=torch.long)


def batches_per_epoch(n: int, batch: int) -> int:
    """Optimizer steps in an epoch of n samples: an incomplete last batch is dropped unless it is the only one."""
    return n // batch if n > batch else 1


def _epoch_batches(train: Dataset, opts: GraderOptions, num_grades: int, epoch: int) -> list[list[int]]:
    """The sample indices of every batch of `epoch`: a permutation, or with --balanced an
    inverse-frequency draw (each grade equally often), from the epoch's own generator; an
    incomplete last batch is dropped unless it is the only one. Listed up front so that a resume
    starts at any batch without reading the ones before it."""
    order = seeded_generator(opts.seed, _ORDER_STREAM, epoch)
    n = len(train)
    if opts.balanced:
        grades = _grades(train)
        counts = torch.bincount(grades, minlength=num_grades).clamp(min=1).double()
        indices = torch.multinomial((1.0 / counts)[grades], n, replacement=True, generator=order)
    else:
        indices = torch.randperm(n, generator=order)
    batches = [chunk.tolist() for chunk in indices.split(opts.batch)]
    return batches[:batches_per_epoch(n, opts.batch)]


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
    resume: bool = False,
    data: str | Path | None = None,
    spaces_used: bool = True,
) -> dict[str, Any]:
    """Train the grader, write its run folder and grading spaces; returns per-epoch metrics.

    A non-empty `out` is refused unless `overwrite` replaces a previous run or `resume` continues
    the grader run in it from its last epoch (its options hold, but for GRADER_RESUMABLE). `data`:
    the dataset folder, recorded so that a resume can reopen it and check it is unchanged. A new run
    that fails before its first checkpoint leaves its folder as it was given: none, or empty.
    `spaces_used` False: a grader trained to be evaluated (`experiment augment`), whose grading
    spaces condition no GAN, so their warnings are not given."""
    if len(train) == 0:
        raise DrganError("grader: the training split is empty")
    if len(val) == 0:
        raise DrganError("grader: the validation split is empty (labels.csv needs rows with split 'val')")
    if overwrite and resume:
        raise UsageError("{overwrite} starts a run over; {resume} continues one: give one of them")
    device = resolve_device(opts.device)
    out = Path(out)
    try:
        with undone_on_failure(out, STATE_JSON, new=not resume):
            if resume:
                require_kind(out, "grader", "resume")
                locks.hold(out)  # first: a run still training before its first checkpoint is in use
                require_checkpoint(out)
            else:
                prepare_out(out, overwrite, "grader", inputs=[data])
            return _Training(train, val, out, opts, batch_transform, device, data, resume, spaces_used).fit()
    finally:
        locks.release(out)


def interrupted(run: Path) -> bool:
    """Whether `run` holds a grader run stopped after a checkpoint and before its grading spaces:
    one to resume rather than to start over."""
    return has_checkpoint(run) and not (run / SPACE_FILE).is_file()


def check_resumable(run: str | Path, opts: GraderOptions) -> None:
    """`opts` may continue the grader run: its own options, but for GRADER_RESUMABLE."""
    saved = {k: v for k, v in read_run(run).options.items() if k != "trainer"}
    for name, value in opts.to_dict().items():
        if name not in GRADER_RESUMABLE and saved.get(name) != value:
            raise kept_on_resume(run, name, value, saved.get(name), GRADER_RESUMABLE)


class _Training:
    """One grader run: the epochs after the last checkpoint, then the grading spaces."""

    def __init__(self, train: Dataset, val: Dataset, out: Path, opts: GraderOptions, batch_transform: BatchTransform | None,
                 device: torch.device, data: str | Path | None, resume: bool, spaces_used: bool) -> None:
        self.train, self.val, self.out, self.opts, self.batch_transform, self.device = train, val, out, opts, batch_transform, device
        self.spaces_used = spaces_used
        self.cfg = preset(opts.preset)
        torch.manual_seed(opts.seed)
        self.grader = build_grader(self.cfg).to(device)
        self.optim = torch.optim.Adam(self.grader.parameters(), lr=opts.lr, betas=(opts.beta1, 0.999))
        self.epochs: list[dict[str, Any]] = []  # the report of every finished epoch
        self.step = 0
        self.position: dict[str, Any] | None = None  # a checkpoint inside an epoch: batches done, their losses, the mix RNG
        self.live: tuple[dict[str, Any], torch.Generator] | None = None  # the running epoch's position and mix RNG
        self.saved_step = -1  # the step the last checkpoint holds
        if resume:
            self._load(data)
        else:
            out.mkdir(parents=True, exist_ok=True)
            resolution = int(train[0]["image"].shape[-1])  # what evaluation must resize to (not always the preset's)
            extra: dict[str, Any] = {"resolution": resolution, **dataset_record(data)}
            if data is not None:
                extra["data"] = str(Path(data).resolve())
            write_run_config(out, self.cfg, stage="global", options={"trainer": "grader", **opts.to_dict()}, **extra)

    def _load(self, data: str | Path | None) -> None:
        check_resumable(self.out, self.opts)
        if data is not None:
            check_same_dataset(self.out, data)
        recover_checkpoint(self.out)
        meta, tensors = load_state(self.out, {"step": int, "epoch": int, "optimizer": dict, "rng": dict, "report": list})
        done = meta["epoch"] + ("position" in meta)  # epochs finished, or begun
        if meta["epoch"] >= self.opts.epochs and (self.out / SPACE_FILE).is_file():  # else only the spaces are left to fit
            raise ParameterError(f"{{resume}} {self.out}: already trained {meta['epoch']} of {self.opts.epochs} epochs; "
                                 "give a larger {epochs} to continue")
        if self.opts.epochs < done:
            raise ParameterError(f"{{epochs}} {self.opts.epochs}: {{resume}} {self.out} has already begun epoch {done}; "
                                 f"give {{epochs}} >= {done}")
        weights = {k.removeprefix("grader."): v for k, v in tensors.items() if k.startswith("grader.")}
        with restoring(self.out):
            self.grader.load_state_dict(weights)
            optimizer_from_state(self.optim, "optimizer", meta["optimizer"], tensors)
            set_rng_state(meta["rng"], {k.removeprefix("rng."): v for k, v in tensors.items() if k.startswith("rng.")}, self.device)
            if "position" in meta:
                self.position = {**meta["position"], "mix": tensors["position.mix"]}
        self.epochs, self.step = meta["report"], meta["step"]
        self.saved_step = self.step
        extra = read_run(self.out).extra  # run.json: the epochs, device and workers it now runs with
        write_run_config(self.out, self.cfg, stage="global", options={"trainer": "grader", **self.opts.to_dict()}, **extra)

    def fit(self) -> dict[str, Any]:
        opts, out = self.opts, self.out
        start = len(self.epochs)
        logger = RunLogger(out, enabled=True, purge_step=start + 1 if start else None)  # scalars are logged per epoch
        try:
            for epoch in range(start, opts.epochs):
                self.grader.train()
                if hasattr(self.train, "set_epoch"):
                    self.train.set_epoch(epoch_seed(opts.seed, epoch))  # FundusDataset: fresh augmentations each epoch and seed
                losses = self._train_epoch(epoch)
                report = _validate(self.grader, self.val, opts, self.device, self.cfg.num_grades, losses, epoch, logger)
                self.epochs.append(report)
                self.live = None
                self._checkpoint()
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM through the command's handler
            self._checkpoint_interrupted()
            raise
        finally:
            logger.close()
        try:
            save_module(self.grader, out / GRADER_FILE)
            return _fit_grading_space(self.grader, self.train, out, opts, self.device, self.cfg.num_grades,
                                      {"epochs": self.epochs}, self.spaces_used)
        except (KeyboardInterrupt, SystemExit):  # the last epoch is checkpointed: a resume fits the spaces
            tqdm.write(interrupted_line(self.step, out, complete=False), file=sys.stderr)
            raise

    def _train_epoch(self, epoch: int) -> list[float]:
        """One pass over the training split, from the checkpoint's batch when one was taken inside
        it; returns the epoch's batch losses."""
        opts, grader = self.opts, self.grader
        batches = _epoch_batches(self.train, opts, self.cfg.num_grades, epoch)
        mix = seeded_generator(opts.seed, _MIX_STREAM, epoch)
        done, losses = 0, []
        if self.position is not None:
            done, losses = self.position["batches"], list(self.position["losses"])
            mix.set_state(self.position["mix"])
            self.position = None
        # The loader's own generator seeds its workers: the global RNGs stay untouched.
        loader = DataLoader(self.train, batch_sampler=batches[done:], num_workers=opts.workers,
                            generator=seeded_generator(opts.seed, _WORKER_STREAM, epoch))
        bar = tqdm(loader, desc=f"grader epoch {epoch + 1}/{opts.epochs}", initial=done, total=len(batches), leave=False,
                   dynamic_ncols=True)
        self.live = ({"batches": done, "losses": losses}, mix)
        for done, item in enumerate(bar, start=done + 1):
            with whole_step():  # Ctrl-C or SIGTERM waits for the step's end, then checkpoints it (fit)
                images, target = item["image"], item["grade"].long()
                if self.batch_transform is not None:
                    images, target = self.batch_transform(images, target, mix)
                logits, _ = grader(images.to(self.device))
                loss = F.cross_entropy(logits, target.to(self.device))  # int grades or (B, 5) soft targets
                if not torch.isfinite(loss):
                    raise ParameterError(f"grader: non-finite loss at epoch {epoch + 1}, step {self.step}; {kept_checkpoint(self.out)} "
                                         "(try a lower {lr})")
                self.optim.zero_grad(set_to_none=True)
                loss.backward()
                self.optim.step()
                losses.append(loss.item())
                self.step += 1
                self.live = ({"batches": done, "losses": losses}, mix)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if self.step % opts.checkpoint_every == 0 and done < len(batches):
                self._checkpoint(*self.live)
        return losses

    def _checkpoint_interrupted(self) -> None:
        """After an interrupt between steps: checkpoint the last whole step (inside its epoch, or at
        its end), unless the last checkpoint holds it or the weights diverged; then say how to go on."""
        if self.step == 0:
            return
        if self.step != self.saved_step:
            try:
                with ignored_signals():
                    self._checkpoint(*(self.live or (None, None)))
            except ParameterError:
                return
        tqdm.write(interrupted_line(self.step, self.out, complete=False), file=sys.stderr)

    def _checkpoint(self, position: dict[str, Any] | None = None, mix: torch.Generator | None = None) -> None:
        """The run after its latest epoch, or inside an epoch at `position` (batches done and their
        losses; `mix`: the batch transforms' generator there). Weights a step turned NaN or infinite
        (a finite loss can still give a non-finite update) are refused instead, so the previous
        checkpoint stays."""
        tensors = {f"grader.{k}": v for k, v in self.grader.state_dict().items()}
        if not all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()):
            raise ParameterError(f"grader: its weights are NaN or infinite by step {self.step} (it diverged); "
                                 f"{kept_checkpoint(self.out)} (try a lower {{lr}})")
        meta = {"step": self.step, "epoch": len(self.epochs), "report": self.epochs,
                "optimizer": optimizer_to_state(self.optim, "optimizer", tensors)}
        if position is not None:
            meta["position"] = position
            tensors["position.mix"] = mix.get_state()
        plain, rng = rng_state(self.device)  # the global RNGs: nothing draws from them after the weights' init today
        meta["rng"] = plain
        tensors.update({f"rng.{k}": v for k, v in rng.items()})
        write_checkpoint(self.out, lambda folder: save_state(folder, meta, tensors))
        self.saved_step = self.step


def _validate(grader: GradeNet, val: Dataset, opts: GraderOptions, device: torch.device, num_grades: int,
              losses: list[float], epoch: int, logger: RunLogger) -> dict[str, Any]:
    """Validation metrics after one epoch, logged and printed; returns the epoch's report entry."""
    from drgan.metrics.grading import format_kappa, grading_metrics

    pred, _, truth = grader_features(grader, val, opts.batch, device, opts.workers)
    metrics = grading_metrics(truth.numpy(), pred.numpy(), num_grades)
    train_loss = sum(losses) / max(1, len(losses))
    scalars = {"grader/train_loss": train_loss, "grader/val_accuracy": metrics["accuracy"], "grader/lr": opts.lr}
    if metrics["kappa"] is not None:  # undefined on a val split of one grade
        scalars["grader/val_kappa"] = metrics["kappa"]
    scalars.update({f"grader/val_tpr_{g}": t for g, t in enumerate(metrics["tpr"]) if t is not None})
    logger.scalars(scalars, epoch + 1)
    tpr = " ".join("-" if t is None else f"{t:.2f}" for t in metrics["tpr"])  # -: no image of that grade
    tqdm.write(f"grader epoch {epoch + 1}/{opts.epochs}: loss {train_loss:.4f}  val accuracy {metrics['accuracy']:.3f}  "
               f"kappa {format_kappa(metrics['kappa'])}  TPR by grade {tpr}", file=sys.stderr)
    return {"epoch": epoch + 1, "train_loss": train_loss, "val": metrics}


def _fit_grading_space(grader: GradeNet, train: Dataset, out: Path, opts: GraderOptions, device: torch.device,
                       num_grades: int, report: dict[str, Any], spaces_used: bool) -> dict[str, Any]:
    """Fit and save the grading spaces on the unaugmented training split; completes `report` (its
    warnings on the spaces only where they are `spaces_used`)."""
    accuracy = report["epochs"][-1]["val"]["accuracy"]
    _, features, grades = grader_features(grader, _unaugmented(train), opts.batch, device, opts.workers)
    if not bool(torch.isfinite(features).all()):  # a finite last loss can still give a non-finite update
        raise ParameterError("grader: its features are NaN or infinite after training (it diverged): try a lower {lr}")
    space = GradingSpace.fit(features, grades, num_grades, accuracy)
    space.save(out / SPACE_FILE)
    report.update(val_accuracy=accuracy, grader=str(out / GRADER_FILE), grading_space=str(out / SPACE_FILE), warnings=[])
    if not spaces_used:
        return report
    counts = torch.bincount(grades, minlength=num_grades).tolist()
    if sparse := [g for g, c in enumerate(counts) if c < 2]:
        report["warnings"].append(
            f"grade(s) {', '.join(map(str, sparse))} had fewer than 2 training images ({', '.join(str(counts[g]) for g in sparse)}): "
            "their grading spaces fall back to the statistics of all grades, so a GAN cannot be conditioned on them")
    if accuracy < AGM_MIN_ACCURACY:
        report["warnings"].append(
            f"grader validation accuracy {accuracy:.3f} is below {AGM_MIN_ACCURACY:.2f}: "
            "the grading spaces may not separate the grades (the paper finds AGM needs about 80%)"
        )
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return report
