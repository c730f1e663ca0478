"""Typed configuration: the model shape and its presets (a run folder stores it: drgan.runs).

A preset is only numbers: `paper-1280`, `small-256`, `tiny-128` and `tiny-64` share every line of code.
Each preset states its channels and attention QK dims explicitly (docs/design.md, limits).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from drgan.errors import DrganError

COND_CHANNELS = ("vessel", "disc", "ma", "he", "ex", "se", "laser", "membrane")
STRUCTURE_CHANNELS = ("vessel", "disc")  # the rest are lesion masks
NUM_GRADES = 5
# The largest image side a command makes or measures: fundus cameras give up to ~5000 px, the
# paper works at 1280, and above this one image's float buffers alone take gigabytes.
MAX_IMAGE_SIDE = 4096
MIN_SIDE = 64            # smaller images cannot hold a usable fundus
NORMS = ("batch", "instance", "none")
STAGES = ("global", "local")
# The largest batch a command takes: 4096 images of 8 masks at 1280 px are 54 GB of uint8 conditions
# alone, so a larger one is a typo (a batch that does not fit is an out-of-memory line, not a limit).
MAX_BATCH = 4096
MAX_SET = 10_000_000  # images in one synthesized set: item ids (syn_<seed>_<i:07d>) keep their width and order
# Every seed lies in 0..SEED_MAX: torch.manual_seed takes no larger one, nor SWD's 8-byte order key.
SEED_MAX = 2**64 - 1
# Precision names every command accepts (synthesis also takes "auto"); drgan.runtime maps them to dtypes.
PRECISIONS = ("fp32", "bf16", "fp16")


# Upper bounds of the config fields, about 8x the paper's sizes (widths 512, w_dim 512, 4 mapping
# layers, 7 residual blocks, 3 discriminators, 1280 px): a larger value is a typo or a hostile
# run.json, and would allocate tens of GB before a weights file could be compared with it.
_LIMITS = {
    "resolution": 8192, "enc_channels": 4096, "sca_qk_dims": 4096, "local_channels": 4096, "disc_channels": 4096,
    "w_dim": 4096, "mapping_layers": 32, "n_res_blocks": 64, "disc_scales": 8, "grader_width": 512,
    "img_channels": 4, "num_grades": 16,
}
_MAX_LAYERS = 8          # entries of a width list (the paper's have 2 to 4)


@dataclass(frozen=True)
class ModelConfig:
    resolution: int = 1280                                  # output side of the full (local) generator
    cond_channels: int = len(COND_CHANNELS)                 # mask channels, order COND_CHANNELS
    img_channels: int = 3                                   # RGB
    num_grades: int = NUM_GRADES                            # DR grades 0..4
    enc_channels: tuple[int, ...] = (64, 128, 256, 512)     # Gm encoder widths: stem, then three stride-2 convs
    n_res_blocks: int = 7                                   # residual blocks at the bottleneck
    sca_qk_dims: tuple[int, ...] = (64, 16, 4)              # SCA query/key dims, synthesis blocks coarse to fine
    local_channels: tuple[int, int] = (32, 64)              # Gl widths at full and half resolution
    norm: str = "batch"                                     # generator normalization (paper: batch)
    w_dim: int = 512                                        # AGM mapping-network width
    mapping_layers: int = 4                                 # AGM mapping-network depth
    disc_channels: tuple[int, ...] = (64, 128, 256, 512)    # discriminator widths (conv4x4 s2 each)
    disc_scales: int = 3                                    # number of discriminators (full, /2, /4)
    grader_width: int = 64                                  # ResNet-50 base width (64 = torchvision)
    sca: bool = True                                        # ablation switch: False = synthesis blocks without attention
    agm: bool = True                                        # ablation switch: False = no grading vector (instance norm, learned affine)
    lesion_masks: bool = True                               # ablation switch: False = lesion channels zeroed (structure only)

    def __post_init__(self) -> None:
        for name in ("enc_channels", "sca_qk_dims", "local_channels", "disc_channels"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise DrganError(f"invalid model config: {name} {values!r} is not a list of integers")
            object.__setattr__(self, name, tuple(values))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise DrganError(f"invalid model config: {f.name} {value!r} is not an integer")
            if f.type == "bool" and not isinstance(value, bool):
                raise DrganError(f"invalid model config: {f.name} {value!r} is not true or false")
        for name, limit in _LIMITS.items():
            values = getattr(self, name)
            if max(values if isinstance(values, tuple) else (values,), default=0) > limit or (
                    isinstance(values, tuple) and len(values) > _MAX_LAYERS):
                raise DrganError(f"invalid model config: {name} {values} is out of range (at most {limit}"
                                 + (f", {_MAX_LAYERS} entries)" if isinstance(values, tuple) else ")"))
        n_up = len(self.enc_channels) - 1
        checks = [
            (self.resolution > 0 and self.resolution % (2 ** (n_up + 1)) == 0,
             f"resolution {self.resolution} must be a positive multiple of {2 ** (n_up + 1)}"),
            (len(self.enc_channels) >= 2, "enc_channels needs at least two widths"),
            (len(self.sca_qk_dims) == n_up,
             f"sca_qk_dims needs {n_up} entries (one per synthesis block), got {len(self.sca_qk_dims)}"),
            (all(d >= 4 for d in self.sca_qk_dims), f"sca_qk_dims {self.sca_qk_dims}: QK dims never go below 4"),
            (all(c % 4 == 0 and c > 0 for c in self.enc_channels),
             f"enc_channels {self.enc_channels} must be positive multiples of 4 (noise has C/4 channels)"),
            (len(self.local_channels) == 2, "local_channels needs two widths"),
            (self.local_channels[1] == self.enc_channels[0],
             f"local_channels[1] ({self.local_channels[1]}) must equal enc_channels[0] ({self.enc_channels[0]}): "
             "Gl adds its half-resolution features to Gm's last synthesis output"),
            (self.norm in NORMS, f"norm {self.norm!r} is not one of {NORMS}"),
            (self.n_res_blocks >= 0, "n_res_blocks must be >= 0"),
            (self.mapping_layers >= 1, "mapping_layers must be >= 1"),
            (self.disc_scales >= 1 and len(self.disc_channels) >= 1, "need at least one discriminator layer"),
            (self.grader_width >= 1, "grader_width must be >= 1"),
            (self.w_dim >= 1, "w_dim must be >= 1"),
            (self.img_channels >= 1, "img_channels must be >= 1"),
            (self.num_grades >= 2, "num_grades must be >= 2"),
            (all(c > 0 for c in self.local_channels + self.disc_channels),
             f"local_channels {self.local_channels} and disc_channels {self.disc_channels} must be positive"),
            (self.cond_channels == len(COND_CHANNELS), f"cond_channels must be {len(COND_CHANNELS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DrganError(f"invalid model config: {message}")

    @property
    def global_resolution(self) -> int:
        """Side of Gm's output (the global stage)."""
        return self.resolution // 2

    @property
    def z_dim(self) -> int:
        """Grading-vector size: the grader's pooled ResNet-50 feature (2048 at width 64)."""
        return self.grader_width * 32

    @property
    def attention_tokens(self) -> tuple[int, ...]:
        """N (= H x W) of each SCA block's spatial attention, coarse to fine; empty without SCA."""
        side = self.global_resolution // 2 ** (len(self.enc_channels) - 1)
        return tuple((side * 2**i) ** 2 for i in range(len(self.sca_qk_dims))) if self.sca else ()

    @property
    def attention_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """(N, Dqk, Dv) of each SCA block's spatial attention, coarse to fine; empty without SCA."""
        return tuple(zip(self.attention_tokens, self.sca_qk_dims, self.enc_channels[::-1]))

    def stage_resolution(self, stage: str) -> int:
        if stage not in STAGES:
            raise DrganError(f"unknown stage {stage!r}; choose one of {STAGES}")
        return self.global_resolution if stage == "global" else self.resolution

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DrganError(f"invalid model config: unknown field(s) {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise DrganError(f"invalid model config: {exc}") from None


_TINY = ModelConfig(
    resolution=64,
    enc_channels=(8, 16, 32, 64),
    n_res_blocks=2,
    sca_qk_dims=(8, 4, 4),
    local_channels=(4, 8),
    w_dim=64,
    mapping_layers=4,
    disc_channels=(8, 16, 32),     # three layers: the 1/4 scale of the 32 px global stage is 8 px
    grader_width=8,
)

PRESETS: dict[str, ModelConfig] = {
    # The paper's sizes: 1280 output, Gm at 640, SCA at 80/160/320 with d = 8/16/32.
    "paper-1280": ModelConfig(),
    # Same topology, sizes / 5 and channels / 4; QK dims C/d clamped at 4.
    "small-256": ModelConfig(
        resolution=256,
        enc_channels=(16, 32, 64, 128),
        sca_qk_dims=(16, 4, 4),
        local_channels=(8, 16),
        w_dim=128,
        disc_channels=(16, 32, 64, 128),
        grader_width=16,
    ),
    # Seconds per training step on a CPU: for tests.
    "tiny-64": _TINY,
    # tiny-64's widths at 128 px: the CPU demo, where lesions are large enough for a grader to see.
    "tiny-128": dataclasses.replace(_TINY, resolution=128),
}


def preset(name: str) -> ModelConfig:
    """The model configuration of a named preset."""
    try:
        return PRESETS[name]
    except KeyError:
        raise DrganError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
