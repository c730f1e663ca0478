"""Training options: one dataclass per trainer, saved with every run and read back on resume;
the GAN's options and model config resolved for a new, resumed or initialised run."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from drgan.config import MAX_BATCH, PRECISIONS, PRESETS, SEED_MAX, STAGES, ModelConfig, preset
from drgan.errors import DrganError, ParameterError, UsageError
from drgan.runs import read_run, require_kind

PERCEPTUAL_NETS = ("auto", "vgg19", "grader", "none")
GAN_LOSSES = ("bce", "lsgan")
FM_NORMS = ("l1", "l2")
LOSS_WEIGHTS = ("lambda_fm", "lambda_perceptual", "lambda_cls", "g_cls_weight", "lambda_l1")

T = TypeVar("T", bound="_Options")


class _Options:
    """JSON round trip and value checks shared by the option dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DrganError(f"{cls.__name__}: unknown option(s) {unknown}")
        return cls(**data)

    def _check(self, checks: list[tuple[bool, str]]) -> None:
        """Each check: (condition, message naming parameters as {name} fields); first, every float
        option must be finite (nan passes no comparison, but inf passes a lower bound)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ParameterError(f"{{{field.name}}} {value}: not a finite number")
        for ok, message in checks:
            if not ok:
                raise ParameterError(message)


@dataclass
class GraderOptions(_Options):
    preset: str = "paper-1280"  # model config; the grader's width sets the grading-vector size
    epochs: int = 30            # paper: 30
    batch: int = 64             # paper: 64
    lr: float = 1e-3            # Adam learning rate (paper: 1e-3)
    beta1: float = 0.5          # Adam beta1 (paper: "momentum 0.5")
    balanced: bool = False      # class-balanced sampling (inverse grade frequency)
    seed: int = 0               # weights, sampling order, augmentations and batch transforms
    device: str = "auto"        # torch device (auto: CUDA when visible)
    workers: int = 0            # DataLoader worker processes
    checkpoint_every: int = 500  # also checkpoint every K steps inside an epoch (and after each epoch)

    def __post_init__(self) -> None:
        self._check([
            (self.preset in PRESETS, f"{{preset}} {self.preset!r} is not one of {list(PRESETS)}"),
            (self.epochs >= 1, f"{{epochs}} {self.epochs} must be >= 1"),
            (2 <= self.batch <= MAX_BATCH, f"{{batch}} {self.batch} must lie in 2..{MAX_BATCH} (batch normalization: 2 at least)"),
            (self.lr > 0, f"{{lr}} {self.lr} must be > 0"),
            (0 <= self.beta1 < 1, f"{{beta1}} {self.beta1} must lie in [0, 1)"),
            (self.workers >= 0, f"{{workers}} {self.workers} must be >= 0"),
            (0 <= self.seed <= SEED_MAX, f"{{seed}} {self.seed} must lie in 0..{SEED_MAX}"),
            (self.checkpoint_every >= 1, f"{{checkpoint_every}} {self.checkpoint_every} must be >= 1"),
        ])


@dataclass
class GanOptions(_Options):
    out: str = "runs/gan"               # run folder
    data: str | None = None             # dataset folder (layout: drgan.data.format)
    grading_space: str | None = None    # grading_space.safetensors of `drgan train grader`
    stage: str = "global"               # 'global': Gm at half resolution; 'local': Gm + Gl at full
    init: str | None = None             # run folder of the global stage (required for 'local')
    resume: str | None = None           # run folder to continue exactly
    preset: str = "paper-1280"          # model config
    epochs: int = 10                    # paper: 10 per stage
    max_steps: int | None = None        # stop after this many optimizer steps in total
    batch: int = 16                     # per-process batch (paper: 16)
    lr: float = 1e-4                    # Adam learning rate, G and D (paper: 1e-4)
    beta1: float = 0.5                  # Adam betas (paper: 0.5, 0.999)
    beta2: float = 0.999
    ema: bool = False                   # also keep G_ema, an exponential moving average of G (the paper has none)
    ema_decay: float = 0.999            # G_ema decay (ramped up over the first steps)
    lambda_fm: float = 10.0             # lambda1: discriminator feature matching
    fm_norm: str = "l1"                 # feature-matching distance: 'l1' (as pix2pixHD, whose lambda1 = 10 the paper takes) or 'l2'
    lambda_perceptual: float = 10.0     # lambda2: perceptual L1
    lambda_cls: float = 1.0             # lambda3: focal grade classification of the discriminators (real and fake)
    g_cls_weight: float = 0.0           # the generator's own focal term on D's grade heads (ACGAN; not in the paper)
    lambda_l1: float = 0.0              # pixel L1 to the paired real image (pix2pix; not in the paper)
    sca: bool = True                    # ablation (paper Table II): False = synthesis blocks without SCA
    agm: bool = True                    # ablation: False = no grading vector (instance norm, learned affine)
    lesion_masks: bool = True           # ablation: False = lesion mask channels zeroed for G and D
    focal_gamma: float = 2.0            # focal-loss focusing parameter (Lin et al.)
    gan_loss: str = "bce"               # 'bce' (non-saturating) or 'lsgan'
    perceptual: str = "auto"            # perceptual feature network: 'vgg19', 'grader', 'none', or 'auto' (a run records the resolved one)
    vgg19_weights: str | None = None    # local torchvision VGG19 weights (.safetensors or .pth); else torchvision's cache
    precision: str = "fp32"             # 'fp32', 'bf16' autocast, or 'fp16' autocast + gradient scaler
    channels_last: bool = True          # NHWC activations end to end
    checkpoint_activations: bool = False  # recompute the attention blocks in backward
    compile: bool = False               # torch.compile the generator and discriminators
    kernel_impl: str = "auto"           # drgan.kernels implementation: 'auto', 'ref', 'triton' or 'sdpa' (drgan.kernels.dispatch.NETWORK_IMPLS)
    device: str = "auto"                # torch device ('cuda' picks the local rank's GPU; auto: CUDA when visible)
    seed: int = 0                       # weights, sampling order, augmentations, z and noise
    workers: int = 0                    # DataLoader worker processes
    log_every: int = 50                 # TensorBoard scalars every K steps
    sample_every: int = 500             # image grid per grade every K steps
    checkpoint_every: int = 1000        # checkpoint every K steps (and at the end)

    def __post_init__(self) -> None:
        from drgan.kernels.dispatch import NETWORK_IMPLS  # torch: this module stays importable without it

        self._check([
            (self.stage in STAGES, f"{{stage}} {self.stage!r} is not one of {STAGES}"),
            (self.kernel_impl in NETWORK_IMPLS, f"{{kernel_impl}} {self.kernel_impl!r} is not one of {NETWORK_IMPLS}"),
            (self.preset in PRESETS, f"{{preset}} {self.preset!r} is not one of {list(PRESETS)}"),
            (self.precision in PRECISIONS, f"{{precision}} {self.precision!r} is not one of {PRECISIONS}"),
            (self.perceptual in PERCEPTUAL_NETS, f"{{perceptual}} {self.perceptual!r} is not one of {PERCEPTUAL_NETS}"),
            (self.gan_loss in GAN_LOSSES, f"{{gan_loss}} {self.gan_loss!r} is not one of {GAN_LOSSES}"),
            (self.fm_norm in FM_NORMS, f"{{fm_norm}} {self.fm_norm!r} is not one of {FM_NORMS}"),
            *((getattr(self, k) >= 0, f"{{{k}}} {getattr(self, k)} must be >= 0") for k in LOSS_WEIGHTS),
            (self.epochs >= 1, f"{{epochs}} {self.epochs} must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, f"{{max_steps}} {self.max_steps} must be >= 1"),
            (1 <= self.batch <= MAX_BATCH, f"{{batch}} {self.batch} must lie in 1..{MAX_BATCH}"),
            (self.lr > 0, f"{{lr}} {self.lr} must be > 0"),
            (0 <= self.ema_decay < 1, f"{{ema_decay}} {self.ema_decay} must lie in [0, 1)"),
            *((0 <= getattr(self, k) < 1, f"{{{k}}} {getattr(self, k)} must lie in [0, 1)") for k in ("beta1", "beta2")),
            (self.focal_gamma >= 0, f"{{focal_gamma}} {self.focal_gamma} must be >= 0"),
            *((getattr(self, k) >= 1, f"{{{k}}} {getattr(self, k)} must be >= 1")
              for k in ("log_every", "sample_every", "checkpoint_every")),
            (self.workers >= 0, f"{{workers}} {self.workers} must be >= 0"),
            (0 <= self.seed <= SEED_MAX, f"{{seed}} {self.seed} must lie in 0..{SEED_MAX}"),
        ])
        if self.vgg19_weights is not None and self.perceptual not in ("auto", "vgg19"):  # else ignored without a word
            raise UsageError(f"{{vgg19_weights}} is used by {{perceptual}} vgg19 or auto only, not {self.perceptual}; drop one of them")


# Options a resumed run may change: how long and where it runs, not what it optimizes.
RESUMABLE_OVERRIDES = ("epochs", "max_steps", "device", "workers", "log_every", "sample_every", "checkpoint_every")
GRADER_RESUMABLE = ("epochs", "device", "workers", "checkpoint_every")


PATH_OPTIONS = ("data", "grading_space", "init", "vgg19_weights")


def _same(name: str, given: Any, saved: Any) -> bool:
    if name in (*PATH_OPTIONS, "out") and given is not None and saved is not None:
        return Path(given).resolve() == Path(saved).resolve()
    return given == saved


def kept_on_resume(run: str | Path, name: str, value: Any, own: Any, resumable: tuple[str, ...]) -> UsageError:
    """The error for an option given on resume other than the run's own value: a switch reads as
    its flag (--balanced, --no-balanced), the run's own as on or off."""
    given = (f"{{{name}}}" if value else f"{{no_{name}}}") if isinstance(value, bool) else f"{{{name}}} {value}"
    if isinstance(own, bool):
        own = "on" if own else "off"
    allowed = ", ".join(f"{{{k}}}" for k in resumable)
    return UsageError(f"{given}: {{resume}} {run} keeps the run's own value "
                          f"({'none: not given when it started' if own is None else own}); only {allowed} may change on resume")


def step_limits(given: dict[str, Any], epochs: int, max_steps: int | None) -> dict[str, Any]:
    """The epochs and max_steps a GAN run trains to, from those `given` and the run's own (a new
    run's: the defaults): --max-steps alone trains up to that step past the epochs (an epoch has at
    least one step), --epochs alone that many epochs past the step cap of an earlier command."""
    steps, eps = given.get("max_steps"), given.get("epochs")
    if steps is not None and eps is None:
        return {"epochs": max(epochs, steps), "max_steps": steps}
    if eps is not None and steps is None:
        return {"epochs": eps, "max_steps": None}
    return {"epochs": epochs if eps is None else eps, "max_steps": max_steps if steps is None else steps}


def resume_options(run: str | Path, **given: Any) -> GanOptions:
    """The options of `run` for continuing it. Given RESUMABLE_OVERRIDES replace the run's; any
    other given option must equal the run's (paths compared resolved), or it is refused."""
    run = str(run)
    saved = {k: v for k, v in require_kind(run, "gan", "resume").options.items() if k != "trainer"}
    if saved.get("perceptual") in ("grader", "none"):  # runs started before GanOptions refused the pair
        saved.pop("vgg19_weights", None)
    merged = GanOptions.from_dict(saved).to_dict()
    merged["out"] = run
    for name, value in given.items():
        if name in (*RESUMABLE_OVERRIDES, "resume") or _same(name, value, merged.get(name)):
            continue
        raise kept_on_resume(run, name, value, merged.get(name), RESUMABLE_OVERRIDES)
    merged.update({k: v for k, v in given.items() if k in RESUMABLE_OVERRIDES})
    merged.update(step_limits(given, merged["epochs"], merged["max_steps"]))
    merged["resume"] = run
    return GanOptions.from_dict(merged)


def resolve_options(opts: GanOptions) -> GanOptions:
    """Options as a run records them: paths absolute, so a resume works from any folder. On
    resume the run's own options hold, except the RESUMABLE_OVERRIDES `opts` sets to other than
    their defaults (`resume_options` takes the overrides explicitly)."""
    if opts.resume is None:
        return dataclasses.replace(opts, **{k: str(Path(getattr(opts, k)).resolve()) for k in PATH_OPTIONS if getattr(opts, k)})
    if opts.out == opts.resume:
        return opts
    defaults = GanOptions()
    return resume_options(opts.resume, **{k: getattr(opts, k) for k in RESUMABLE_OVERRIDES if getattr(opts, k) != getattr(defaults, k)})


def model_config(opts: GanOptions) -> ModelConfig:
    """The preset's config with the ablation switches; with --init or --resume the config that run
    was trained with."""
    cfg = dataclasses.replace(preset(opts.preset), sca=opts.sca, agm=opts.agm, lesion_masks=opts.lesion_masks)
    source = opts.resume or opts.init
    if source is None:
        return cfg
    if opts.init and not opts.resume and opts.stage != "local":
        raise ParameterError(f"{{init}} {opts.init}: only the local stage starts from a global-stage run; "
                             f"drop {{init}} or give {{stage}} local")
    init = read_run(source) if opts.resume else require_kind(source, "gan", "init")
    run_cfg, run_stage = init.cfg, init.stage
    if opts.init and not opts.resume and run_stage != "global":
        raise ParameterError(f"{{init}} {opts.init}: a {run_stage}-stage run; the local stage starts from a global-stage run")
    if run_cfg != cfg:
        there, now = run_cfg.to_dict(), cfg.to_dict()
        differ = ", ".join(f"{k} {there[k]} there, {now[k]} now" for k in now if there[k] != now[k])
        raise ParameterError(f"{source}: trained with another model config ({differ}; "
                             f"{{preset}} {opts.preset} and the ablation switches make it)")
    return run_cfg
