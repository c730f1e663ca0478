"""The DR-GAN trainer (paper III.C-E): it owns the networks, optimizers, schedule and checkpoints.

One step: z ~ N(mu_y, var_y) of each real image's grade, fake = G(c, z, noise);
D step on (c, real) and (c, fake.detach()) in one forward: adversarial + lambda3 * focal(real, fake);
G step through a frozen D: adversarial + lambda1 * feature matching + lambda2 * perceptual
+ g_cls_weight * focal(fake) (0 by default: docs/paper.md) + encoder grade-head cross entropy
+ lambda_l1 * L1 to the real image. Both losses are checked for finiteness
(averaged over ranks) before any weight changes, so a failing step leaves a clean checkpoint.

Every random draw of a step (z, noise) comes from a generator seeded by (seed, rank, step), the
loader workers' seeds by (seed, rank, epoch) (drgan.runtime.seeded_generator: numpy's SeedSequence,
one stream per purpose) and the data order from (seed, epoch, rank): with num_workers=0 a resumed
run replays the same steps.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from drgan import locks
from drgan.checkpoint import load_module, load_tensors, save_tensors
from drgan.config import COND_CHANNELS
from drgan.errors import DrganError, ParameterError, UsageError
from drgan.io import atomic_write_bytes, atomic_write_json
from drgan.runs import (WEIGHT_FILES, check_same_dataset, dataset_record, prepare_out, require_checkpoint,
                        undone_on_failure, write_run_config)
from drgan.grading_space import FILE_NAME as SPACE_FILE, GradingSpace
from drgan.metrics.fidelity import tensor_fidelity
from drgan.nn import DiscOutput, DRGANGenerator, build_discriminator, set_kernel_impl, structure_only
from drgan.runtime import autocast_dtype, epoch_seed, seeded_generator
from drgan.training import distributed as dist_util
from drgan.training import losses
from drgan.training.interrupts import ignored_signals, interrupted_line, told_by_the_main_rank, whole_step
from drgan.training.logger import RunLogger
from drgan.training.options import GanOptions, model_config, resolve_options
from drgan.training.state import (
    STATE_JSON, check_step, kept_checkpoint, load_state, optimizer_from_state, optimizer_to_state, recover_checkpoint, restoring, rng_state,
    save_state, set_rng_state, write_checkpoint,
)

ENV_FILE = "environment.json"
_STEP_STREAM, _FIXED_STREAM, _WORKERS_STREAM = 0, 1, 2  # seeded_generator keys: one stream per purpose
GRID_COLUMNS = 4  # fixed conditions per sample grid (columns); rows are the grades
FIXED_ITEMS = 16  # fixed conditions whose images measure L1 and condition fidelity at every sample
G_TERMS = ("G_adv", "G_fm", "G_perceptual", "G_cls", "G_l1", "G_encoder", "G_total")
D_TERMS = ("D_adv", "D_cls_real", "D_cls_fake", "D_total")


class NonFiniteLoss(Exception):
    def __init__(self, terms: dict[str, float]) -> None:
        super().__init__(", ".join(f"{k}={v}" for k, v in terms.items()))
        self.terms = terms


def _checkpointed(forward, *args):
    """Recompute a block in backward instead of keeping its activations."""
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False)
    return forward(*args)


def checkpoint_attention_blocks(g: DRGANGenerator) -> None:
    """Activation checkpointing of every synthesis block's SCA and AdaIN.

    These hold the largest activations and no batch normalization, whose running statistics a
    recomputation would update twice; state-dict names stay unchanged.
    """
    for block in g.global_gen.synth:
        for sub in (block.sca, block.adain):
            sub.forward = functools.partial(_checkpointed, sub.forward)


class GanTrainer:
    def __init__(self, opts: GanOptions, dataset: Dataset | None = None, overwrite: bool = False) -> None:
        """`overwrite`: replace a previous run in `opts.out` (otherwise a non-empty folder is refused)."""
        opts = resolve_options(opts)
        self.opts = opts
        self.info = dist_util.setup(opts.device)
        try:
            self._set_up(dataset, overwrite)
        except BaseException:
            dist_util.teardown(self.info)  # a refusal under torchrun leaves no process group behind
            raise

    def _set_up(self, dataset: Dataset | None, overwrite: bool) -> None:
        opts = self.opts
        self.device = self.info.device
        self.run = Path(opts.out)
        if self.info.is_main:  # one process writes a run folder (a second is refused: drgan.locks)
            if opts.resume:
                locks.hold(self.run)  # first: a run still training before its first checkpoint is in use
                require_checkpoint(self.run)  # before anything is built
            else:
                prepare_out(self.run, overwrite, "gan", inputs=[opts.data, opts.grading_space, opts.init, opts.vgg19_weights])
        self.cfg = model_config(opts)
        self.stage = opts.stage
        self.resolution = self.cfg.stage_resolution(opts.stage)
        self.dataset = dataset if dataset is not None else self._open_dataset()
        self.space = self._grading_space()

        self._build_networks()
        self._build_optimizers()
        self.sampler = dist_util.ResumableSampler(self.dataset, self.info, opts.batch, opts.seed)
        self.step, self.epoch, self.next_batch = 0, 0, 0
        if opts.resume:
            self._load_checkpoint()
            self._check_resume_limit()  # before any line: a run already trained is one error
        else:
            self._write_run()
        self._wrap_for_training()
        self.fixed = self._fixed_batch()
        if self.info.is_main:
            print(self.perceptual_line, file=sys.stderr)

    # ----------------------------------------------------------------------------- setup

    def _build_networks(self) -> None:
        """G (from --init's Gm when given), G_ema with --ema, D and the perceptual network, on the
        device in the training layout."""
        opts = self.opts
        torch.manual_seed(opts.seed)  # same initial weights on every rank
        self.G = set_kernel_impl(DRGANGenerator(self.cfg, opts.stage), opts.kernel_impl)
        # G_ema is opt-in (the paper has none). It shares G's BatchNorm statistics, which fit its
        # weights only once G moves slowly: short runs sample better from G itself.
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if opts.ema else None
        if opts.init and not opts.resume:
            self._load_init(Path(opts.init))
        elif opts.stage == "local" and not opts.resume and self.info.is_main:
            print("warning: local stage without an init run: Gm and Gl both start from scratch "
                  "(the paper fine-tunes a trained global stage)", file=sys.stderr)
        self.D = build_discriminator(self.cfg)
        self._build_perceptual()
        fmt = torch.channels_last if opts.channels_last else torch.contiguous_format
        for m in (self.G, self.G_ema, self.D, self.perceptual):
            if m is not None:
                m.to(self.device, memory_format=fmt)
        if opts.checkpoint_activations:
            checkpoint_attention_blocks(self.G)

    def _build_perceptual(self) -> None:
        # The run records the network 'auto' resolves to (a resumed run's is resolved already).
        opts = self.opts
        auto = opts.perceptual == "auto"
        perceptual, vgg19_weights = losses.resolve_perceptual(opts.perceptual, opts.vgg19_weights, opts.grading_space)
        opts = self.opts = dataclasses.replace(opts, perceptual=perceptual, vgg19_weights=vgg19_weights)
        self.perceptual = losses.build_perceptual(opts.perceptual, opts.vgg19_weights, opts.grading_space)
        self.perceptual_line = losses.describe_perceptual(opts.perceptual, opts.vgg19_weights, opts.grading_space, auto)

    def _build_optimizers(self) -> None:
        """Adam for G and D, the fp16 gradient scaler, and the autocast dtype of --precision."""
        opts = self.opts
        betas = (opts.beta1, opts.beta2)
        self.opt_G = torch.optim.Adam([p for p in self.G.parameters() if p.requires_grad], lr=opts.lr, betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=opts.lr, betas=betas)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=opts.precision == "fp16")
        self.autocast_dtype = autocast_dtype(opts.precision)

    def _wrap_for_training(self) -> None:
        """The modules a step runs: DDP replicas across ranks, compiled with --compile; D_frozen is
        D without DDP (the G step needs no gradient sync of D)."""
        self.G_train: nn.Module = self.G
        self.D_train: nn.Module = self.D
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.G_train = DDP(self.G, device_ids=ids)
            self.D_train = DDP(self.D, device_ids=ids)
        self.D_frozen: nn.Module = self.D
        if self.opts.compile:
            self.G_train, self.D_train, self.D_frozen = map(torch.compile, (self.G_train, self.D_train, self.D_frozen))

    def _open_dataset(self) -> Dataset:
        if self.opts.data is None:
            raise UsageError("{data} DIR is required (a dataset folder with images/, masks/ and labels.csv)")
        from drgan.data.dataset import FundusDataset

        if self.opts.resume:
            check_same_dataset(self.run, self.opts.data)
        dataset = FundusDataset(self.opts.data, self.cfg.resolution, split="train")
        if not any("vessel" in s.masks for s in dataset.samples):  # a missing mask reads as zeros
            raise DrganError(f"{self.opts.data}: no training image has a vessel mask (masks/<id>/vessel.png): the "
                             "generator draws each image from its vessel, disc and lesion masks; "
                             "`drgan data import` and `drgan masks extract` make vessel and disc masks from photographs")
        if self.info.is_main and (absent := sorted(set(range(self.cfg.num_grades)) - set(dataset.grades))):
            print(f"warning: {self.opts.data}: no training image of grade(s) {', '.join(map(str, absent))}: the generator "
                  "learns nothing of them (train on every grade you will synthesize)", file=sys.stderr)
        # A grades-only release (EyePACS, APTOS) has no lesion masks: the generator then draws
        # lesions from the grading vector alone, and a set's lesion masks would not show.
        diseased = [s for s in dataset.samples if s.grade > 0]
        drawn = sum(any(c in s.masks for c in COND_CHANNELS[2:]) for s in diseased)
        if self.info.is_main and diseased and drawn < len(diseased) / 2:
            print(f"warning: {self.opts.data}: {drawn} of the {len(diseased)} training images of grade 1 or more have a "
                  "lesion mask: the generator learns lesions from the grading vector rather than from masks, and "
                  "synthesized images may not show the lesions their masks place (train on a release with lesion "
                  "masks: FGADR, IDRiD, DDR)", file=sys.stderr)
        return dataset

    def _load_init(self, init: Path) -> None:
        """Gm (and its EMA) of the global-stage run; Gl starts fresh."""
        for name, module in self._generators().items():
            path = init / WEIGHT_FILES[name]
            if name == "G_ema" and not path.is_file():
                path = init / WEIGHT_FILES["G"]  # the global stage kept no EMA: start it from G
            try:
                module.load_global(load_tensors(path))
            except DrganError as exc:
                raise ParameterError(f"{{init}} {path}: {exc}") from None

    def _grading_space(self) -> GradingSpace:
        path = self.run / SPACE_FILE if self.opts.resume else self.opts.grading_space
        if path is None:
            raise UsageError("{grading_space} FILE is required (grading_space.safetensors of `drgan train grader`)")
        space = GradingSpace.load(path)
        if space.dim != self.cfg.z_dim or space.num_grades != self.cfg.num_grades:
            raise ParameterError(
                f"{path}: grading space of {space.num_grades} grades x {space.dim} dims, but {{preset}} "
                f"{self.opts.preset} needs {self.cfg.num_grades} x {self.cfg.z_dim} (grader trained with another preset?)"
            )
        return space

    def _write_run(self) -> None:
        if not self.info.is_main:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        write_run_config(self.run, self.cfg, self.stage, options={"trainer": "gan", **self.opts.to_dict()},
                         **dataset_record(self.opts.data))
        src = Path(self.opts.grading_space)
        if src.resolve() != (self.run / SPACE_FILE).resolve():
            atomic_write_bytes(self.run / SPACE_FILE, src.read_bytes())
        env = {
            "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": str(self.device), "world_size": self.info.world,
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
        }
        atomic_write_json(self.run / ENV_FILE, env)

    def _fixed_batch(self) -> dict[str, torch.Tensor]:
        """Conditions and images of the first items, and per-grade z and noise, for samples and L1."""
        n = min(FIXED_ITEMS, len(self.dataset))
        items = [self.dataset[i] for i in range(n)]
        real, cond = self._prepare(torch.stack([it["image"] for it in items]), torch.stack([it["cond"] for it in items]))
        grade = torch.tensor([int(it["grade"]) for it in items])
        gen = seeded_generator(self.opts.seed, _FIXED_STREAM)
        z_own = self.space.sample(grade, gen)
        z_rows = [self.space.sample(torch.full((n,), g), gen) for g in range(self.cfg.num_grades)]
        noise = [torch.randn(s, generator=gen) for s in self.G.noise_shapes(n)]
        return {"real": real, "cond": cond, "grade": grade, "z_own": z_own, "z_rows": z_rows, "noise": noise,
                "fidelity_real": tensor_fidelity(real, cond, grade)["overall"]}

    def _prepare(self, image: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """To the device and layout; the global stage sees half-resolution images and masks."""
        if image.shape[-1] != self.cfg.resolution or cond.shape[-1] != self.cfg.resolution:
            raise DrganError(
                f"dataset items are {image.shape[-1]} px but the model config needs {self.cfg.resolution} px "
                "(open the dataset at the preset's resolution)"
            )
        fmt = torch.channels_last if self.opts.channels_last else torch.contiguous_format
        image = image.to(self.device, non_blocking=True).float()
        cond = cond.to(self.device, non_blocking=True).float()
        if self.stage == "global":
            image, cond = F.avg_pool2d(image, 2), F.avg_pool2d(cond, 2)
        cond = structure_only(cond, self.cfg)  # D sees the conditions G sees
        return image.contiguous(memory_format=fmt), cond.contiguous(memory_format=fmt)

    # ----------------------------------------------------------------------------- one step

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """One D and one G update; the loss terms averaged over ranks (raises NonFiniteLoss before
        any weight changes)."""
        real, cond = self._prepare(batch["image"], batch["cond"])
        grade_cpu = batch["grade"].long()
        grade = grade_cpu.to(self.device)
        gen = seeded_generator(self.opts.seed, _STEP_STREAM, self.info.rank, step)
        z = self.space.sample(grade_cpu, gen).to(self.device)
        noise = [torch.randn(s, generator=gen).to(self.device) for s in self.G.noise_shapes(real.shape[0])]
        with self._autocast():
            fake, enc_logits = self.G_train(cond, z, noise)
        d_real, t = self._discriminator_terms(cond, real, fake, grade)
        t.update(self._generator_terms(cond, real, fake, enc_logits, grade, d_real))
        names = G_TERMS + D_TERMS
        values = dist_util.all_reduce_mean(torch.stack([t[k].detach().float() for k in names]), self.info).tolist()
        logged = dict(zip(names, values))
        if not all(v == v and abs(v) != float("inf") for v in values):
            raise NonFiniteLoss(logged)
        self._update_weights(t["G_total"], t["D_total"], step)
        return logged

    def _discriminator_terms(self, cond: torch.Tensor, real: torch.Tensor, fake: torch.Tensor,
                             grade: torch.Tensor) -> tuple[list[DiscOutput], dict[str, torch.Tensor]]:
        """D on (c, real) and (c, fake.detach()) in one forward: D's real outputs (the feature-matching
        targets) and its loss terms."""
        o, b = self.opts, real.shape[0]
        with self._autocast():
            both = self.D_train(torch.cat([cond, cond]), torch.cat([real, fake.detach()]))
        d_real = [out._replace(logit=out.logit[:b], grade_logits=out.grade_logits[:b], features=[f[:b] for f in out.features]) for out in both]
        d_fake = [out._replace(logit=out.logit[b:], grade_logits=out.grade_logits[b:], features=[]) for out in both]
        t: dict[str, torch.Tensor] = {}
        t["D_adv"] = losses.d_adversarial(d_real, d_fake, o.gan_loss)
        t["D_cls_real"] = losses.grade_focal(d_real, grade, o.focal_gamma)
        t["D_cls_fake"] = losses.grade_focal(d_fake, grade, o.focal_gamma)
        t["D_total"] = t["D_adv"] + o.lambda_cls * (t["D_cls_real"] + t["D_cls_fake"])
        return d_real, t

    def _generator_terms(self, cond: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, enc_logits: torch.Tensor,
                         grade: torch.Tensor, d_real: list[DiscOutput]) -> dict[str, torch.Tensor]:
        """G's loss terms through a frozen D."""
        o = self.opts
        self.D.requires_grad_(False)  # the G step's gradients flow through D into G only
        with self._autocast():
            g_fake = self.D_frozen(cond, fake)
            perceptual = self.perceptual(fake, real) if self.perceptual is not None else torch.zeros((), device=self.device)
        self.D.requires_grad_(True)
        t: dict[str, torch.Tensor] = {}
        t["G_adv"] = losses.g_adversarial(g_fake, o.gan_loss)
        t["G_fm"] = losses.feature_matching(d_real, g_fake, o.fm_norm)  # D's real activations are the targets
        t["G_perceptual"] = perceptual.float()
        t["G_cls"] = losses.grade_focal(g_fake, grade, o.focal_gamma)
        t["G_encoder"] = F.cross_entropy(enc_logits.float(), grade)
        t["G_l1"] = F.l1_loss(fake.float(), real)
        t["G_total"] = (t["G_adv"] + o.lambda_fm * t["G_fm"] + o.lambda_perceptual * t["G_perceptual"]
                        + o.g_cls_weight * t["G_cls"] + o.lambda_l1 * t["G_l1"] + t["G_encoder"])
        return t

    def _update_weights(self, g_total: torch.Tensor, d_total: torch.Tensor, step: int) -> None:
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler.scale(g_total).backward()
        self.scaler.step(self.opt_G)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler.scale(d_total).backward()
        self.scaler.step(self.opt_D)
        self.scaler.update()
        self._update_ema(step)

    def _generators(self) -> dict[str, nn.Module]:
        """The generator weights this run keeps: G, and G_ema when --ema is on."""
        return {"G": self.G} if self.G_ema is None else {"G": self.G, "G_ema": self.G_ema}

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        if self.G_ema is None:
            return
        beta = min(self.opts.ema_decay, (1 + step) / (10 + step))  # short memory while G moves fast
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p, 1 - beta)
        for b_ema, b_ in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b_)

    # ----------------------------------------------------------------------------- checkpoints

    def _refuse_diverged_weights(self, cause: str | None = None) -> None:
        """Weights a step turned NaN or infinite (a finite loss can still give a non-finite update:
        a huge learning rate) are not checkpointed: every image they made would be blank. `cause`:
        what stopped the run first (a non-finite loss), named before the weights."""
        finite = torch.stack([torch.isfinite(p).all() for m in (self.G, self.D) for p in m.parameters()]).all()
        if not bool(finite):
            kept = kept_checkpoint(self.run)
            what = (f"the weights became NaN or infinite by step {self.step} (training diverged)" if cause is None
                    else f"{cause}; the weights are NaN or infinite")
            raise ParameterError(f"{what}; {kept} (try a lower {{lr}} or {{precision}} fp32)")

    def _checkpoint_interrupted(self, saved_at: int, limit: int) -> None:
        """After an interrupt between steps: checkpoint the last whole step, unless the last
        checkpoint holds it, no step ran, the weights diverged, or other ranks run (a checkpoint
        is a collective call that they may not reach: then the main rank names the last one);
        then say how the run goes on."""
        if self.info.enabled:
            if not self.info.is_main:
                told_by_the_main_rank()
            elif saved_at > 0:
                tqdm.write(interrupted_line(saved_at, self.run, complete=saved_at >= limit, at=self.step),
                           file=sys.stderr)
            return
        if self.step == 0:
            return
        if self.step != saved_at:
            try:
                self._refuse_diverged_weights()
            except ParameterError:
                return
            with ignored_signals():
                self.save_checkpoint()
        tqdm.write(interrupted_line(self.step, self.run, complete=self.step >= limit), file=sys.stderr)

    def save_checkpoint(self) -> None:
        """Weights, optimizers, scaler, position and every rank's RNG states (collective call)."""
        for module in self._generators().values():
            dist_util.broadcast_buffers(module, self.info)  # every replica equals the checkpoint
        plain, rng_tensors = rng_state(self.device)
        all_rng = dist_util.gather_objects((plain, {k: v.cpu() for k, v in rng_tensors.items()}), self.info)
        if self.info.is_main:
            write_checkpoint(self.run, lambda folder: self._write_checkpoint(folder, all_rng))
        dist_util.barrier(self.info)

    def _write_checkpoint(self, folder: Path, all_rng: list[tuple[dict[str, Any], dict[str, torch.Tensor]]]) -> None:
        meta_step = {"step": str(self.step)}
        for key, module in {**self._generators(), "D": self.D}.items():
            save_tensors(module.state_dict(), folder / WEIGHT_FILES[key], metadata=meta_step)
        tensors: dict[str, torch.Tensor] = {}
        meta = {
            "step": self.step,
            "epoch": self.epoch,
            "next_batch": self.next_batch,
            "world_size": self.info.world,
            "optimizer_G": optimizer_to_state(self.opt_G, "opt_G", tensors),
            "optimizer_D": optimizer_to_state(self.opt_D, "opt_D", tensors),
            "scaler": self.scaler.state_dict(),
            "rng": [p for p, _ in all_rng],
        }
        for rank, (_, ts) in enumerate(all_rng):
            tensors.update({f"rng.{rank}.{k}": v for k, v in ts.items()})
        save_state(folder, meta, tensors)

    def _load_checkpoint(self) -> None:
        if self.info.is_main:
            recover_checkpoint(self.run)
        dist_util.barrier(self.info)
        meta, tensors = load_state(self.run, {"step": int, "epoch": int, "next_batch": int, "world_size": int,
                                              "optimizer_G": dict, "optimizer_D": dict, "scaler": dict, "rng": list})
        if meta["world_size"] != self.info.world:  # before next_batch, whose epoch is per process
            raise ParameterError(f"{{resume}} {self.run}: saved with {meta['world_size']} process(es), resumed with {self.info.world}")
        if meta["next_batch"] >= self.sampler.batches_per_epoch:
            raise DrganError(f"{self.run / STATE_JSON}: damaged training state (next_batch {meta['next_batch']} of "
                             f"an epoch of {self.sampler.batches_per_epoch} batches)")
        for key, module in {**self._generators(), "D": self.D}.items():
            check_step(self.run / WEIGHT_FILES[key], meta["step"])
            load_module(module, self.run / WEIGHT_FILES[key])
        rank = self.info.rank
        rng = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"rng.{rank}.")}
        with restoring(self.run):
            optimizer_from_state(self.opt_G, "opt_G", meta["optimizer_G"], tensors)
            optimizer_from_state(self.opt_D, "opt_D", meta["optimizer_D"], tensors)
            if meta["scaler"]:
                self.scaler.load_state_dict(meta["scaler"])
            set_rng_state(meta["rng"][rank], rng, self.device)
        self.step, self.epoch, self.next_batch = meta["step"], meta["epoch"], meta["next_batch"]

    # ----------------------------------------------------------------------------- samples

    @torch.no_grad()
    def samples(self, logger: RunLogger) -> dict[str, Any]:
        """The sampled generator (G_ema with --ema, else G, in eval mode) on the fixed conditions with
        their own grades: L1 to the real images and condition fidelity beside the real images' own;
        and a grid of the first GRID_COLUMNS conditions, one row per grade."""
        f = self.fixed
        G = self.G_ema if self.G_ema is not None else self.G
        training = G.training
        G.eval()
        noise = [n.to(self.device) for n in f["noise"]]
        b, k = self.opts.batch, GRID_COLUMNS
        with self._autocast():
            own = torch.cat([
                G(f["cond"][i:i + b], f["z_own"][i:i + b].to(self.device), [n[i:i + b] for n in noise])[0]
                for i in range(0, len(f["grade"]), b)
            ])
            rows = [G(f["cond"][:k], z[:k].to(self.device), [n[:k] for n in noise])[0] for z in f["z_rows"]]
        G.train(training)
        l1 = F.l1_loss(own.float(), f["real"]).item()
        fidelity = tensor_fidelity(own, f["cond"], f["grade"])["overall"]
        grid = logger.grid("grades", [f["real"][:k], *rows], ["real"] + [f"grade {g}" for g in range(len(rows))], self.step)
        scalars = {"samples/l1_real": l1}
        for name, auc in fidelity.items():
            scalars[f"fidelity/{name}"] = auc
            scalars[f"fidelity_real/{name}"] = f["fidelity_real"][name]
        logger.scalars(scalars, self.step)
        return {"step": self.step, "l1_real": l1, "fidelity": fidelity, "fidelity_real": f["fidelity_real"],
                "grid": str(grid) if grid else None}

    # ----------------------------------------------------------------------------- loop

    def step_limit(self) -> int:
        """The step this run trains to: --epochs' steps, or --max-steps where it is fewer."""
        o, per_epoch = self.opts, self.sampler.batches_per_epoch
        return o.epochs * per_epoch if o.max_steps is None else min(o.max_steps, o.epochs * per_epoch)

    def _check_resume_limit(self) -> None:
        o, per_epoch, limit = self.opts, self.sampler.batches_per_epoch, self.step_limit()
        if self.step >= limit:
            cap = (f"{{max_steps}} {o.max_steps}" if o.max_steps is not None and o.max_steps < o.epochs * per_epoch
                   else f"{{epochs}} {o.epochs} of {per_epoch} steps each")
            where = "its limit" if self.step == limit else f"past its limit of {limit}"
            raise ParameterError(
                f"{{resume}} {self.run}: already at step {self.step}, {where} ({cap}); "
                "give a larger {max_steps} or {epochs} to continue"
            )

    def fit(self) -> dict[str, Any]:
        o, per_epoch = self.opts, self.sampler.batches_per_epoch
        limit = self.step_limit()
        logger = RunLogger(self.run, enabled=self.info.is_main, purge_step=self.step + 1 if o.resume else None)  # the checkpoint holds its step
        report: dict[str, Any] = {"run": str(self.run), "stage": self.stage, "log": [], "samples": []}
        bar = tqdm(total=limit, initial=self.step, desc=f"gan {self.stage}", unit="step", dynamic_ncols=True, disable=not self.info.is_main)
        saved_at = self.step if o.resume else -1
        try:  # the logger's writer thread is stopped however this ends, before its folder may go
            if self.info.is_main and self.step == 0:
                report["samples"].append(self.samples(logger))
            while self.step < limit:
                self.sampler.set_epoch(self.epoch, self.next_batch)
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(epoch_seed(o.seed, self.epoch))  # FundusDataset: augmentations per (seed, epoch, index)
                # The loader's own generator keeps the global RNG (augmentations) out of its seeding.
                workers_seed = seeded_generator(o.seed, _WORKERS_STREAM, self.info.rank, self.epoch)
                loader = DataLoader(self.dataset, batch_size=o.batch, sampler=self.sampler, num_workers=o.workers,
                                    drop_last=True, pin_memory=self.device.type == "cuda", generator=workers_seed)
                for batch in loader:
                    # Ctrl-C or SIGTERM waits for the step's end (its logs, samples and checkpoint
                    # included, so a resume never lacks them), then checkpoints it (below).
                    with whole_step():
                        try:
                            values = self.train_step(batch, self.step)
                        except NonFiniteLoss as exc:
                            cause = f"non-finite loss at step {self.step} ({exc})"
                            self._refuse_diverged_weights(cause)
                            self.save_checkpoint()
                            raise ParameterError(f"{cause}; checkpoint of the last good step saved in {self.run} "
                                                 "(try {precision} fp32 or a lower {lr})") from None
                        self.step += 1
                        self.next_batch += 1
                        if self.next_batch == per_epoch:
                            self.epoch, self.next_batch = self.epoch + 1, 0
                        bar.update(1)
                        bar.set_postfix(G=f"{values['G_total']:.3f}", D=f"{values['D_total']:.3f}", epoch=self.epoch)
                        if self.step % o.log_every == 0 or self.step == limit:
                            scalars = {f"loss/{k}": v for k, v in values.items()}
                            scalars.update({"lr/G": self.opt_G.param_groups[0]["lr"], "lr/D": self.opt_D.param_groups[0]["lr"]})
                            if self.scaler.is_enabled():
                                scalars["amp/scale"] = self.scaler.get_scale()
                            logger.scalars(scalars, self.step)
                            report["log"].append({"step": self.step, **scalars})
                        if self.info.is_main and (self.step % o.sample_every == 0 or self.step == limit):
                            report["samples"].append(self.samples(logger))
                        if self.step % o.checkpoint_every == 0 or self.step == limit:
                            self._refuse_diverged_weights()
                            self.save_checkpoint()
                            saved_at = self.step
                    if self.step >= limit:
                        break
            if saved_at != self.step:
                self._refuse_diverged_weights()
                self.save_checkpoint()
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM through the command's handler
            self._checkpoint_interrupted(saved_at, limit)
            raise
        finally:
            bar.close()
            logger.close()
        report.update(steps=self.step, epoch=self.epoch)
        return report


def train_gan(opts: GanOptions, dataset: Dataset | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume) one stage; `dataset` replaces `opts.data` (items as FundusDataset's).

    A new run that fails before its first checkpoint leaves its folder as it was given: none, or empty."""
    try:
        with undone_on_failure(Path(opts.out), STATE_JSON, new=opts.resume is None):
            trainer = GanTrainer(opts, dataset, overwrite)  # one that fails tears its process group down
            try:
                return trainer.fit()
            finally:
                dist_util.teardown(trainer.info)
    finally:
        locks.release(opts.resume or opts.out)  # a resume writes the resumed run
