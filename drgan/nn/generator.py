"""The DR-GAN generator: global generator Gm (half resolution) and local enhancer Gl (full)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from drgan.config import COND_CHANNELS, STAGES, STRUCTURE_CHANNELS, ModelConfig
from drgan.errors import DrganError, name_list
from drgan.nn.agm import AdaIN
from drgan.nn.layers import assert_shape, conv_norm_relu, norm_layer
from drgan.nn.mapping import MappingNetwork
from drgan.nn.sca import SCA

Noise = None | int | Sequence[torch.Tensor]


def structure_only(cond: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """The condition map as the model sees it: without lesion masks (ablation) only vessel and disc."""
    if cfg.lesion_masks:
        return cond
    keep = torch.tensor([c in STRUCTURE_CHANNELS for c in COND_CHANNELS], dtype=cond.dtype, device=cond.device)
    return cond * keep.view(1, -1, 1, 1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_norm_relu(channels, channels, 3, norm=norm),
            nn.Conv2d(channels, channels, 3, padding=1),
            norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SynthesisBlock(nn.Module):
    """features ++ noise -> conv1x1 -> AdaIN(w) -> ++ skip ++ masks -> conv3x3 -> SCA -> up x2."""

    def __init__(
        self,
        channels: int,      # C: input features and encoder skip at this scale
        cond_channels: int, # mask channels concatenated at this scale
        qk_dim: int,        # SCA query/key dims
        w_dim: int,         # style-code size
        norm: str,          # normalization after the convolutions
        sca: bool = True,   # False: no attention (ablation)
        agm: bool = True,   # False: instance norm with a learned affine instead of AdaIN(w) (ablation)
    ) -> None:
        super().__init__()
        self.noise_channels = channels // 4
        self.fuse = nn.Conv2d(channels + self.noise_channels, channels, 1)
        self.adain = AdaIN(channels, w_dim) if agm else None
        self.norm = None if agm else nn.InstanceNorm2d(channels, affine=True)
        self.merge = conv_norm_relu(2 * channels + cond_channels, channels, 3, norm=norm)
        self.sca = SCA(channels, qk_dim) if sca else nn.Identity()
        self.up = conv_norm_relu(channels, channels // 2, 3, norm=norm, transposed=True)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, cond: torch.Tensor, w: torch.Tensor | None, noise: torch.Tensor
    ) -> torch.Tensor:
        x = self.fuse(torch.cat([x, noise.to(x.dtype)], dim=1))
        x = self.norm(x) if self.adain is None else self.adain(x, w)
        masks = F.adaptive_avg_pool2d(cond, x.shape[-2:]).to(x.dtype)
        x = self.merge(torch.cat([x, skip.to(x.dtype), masks], dim=1))
        return self.up(self.sca(x))


class GlobalGenerator(nn.Module):
    """Gm: encoder, residual blocks, AGM + SCA synthesis blocks, RGB head at half resolution."""

    def __init__(
        self,
        cfg: ModelConfig,       # model shape
        rgb_head: bool = True,  # False inside the local stage, where Gl makes the image
    ) -> None:
        super().__init__()
        ch = cfg.enc_channels
        self.stem = conv_norm_relu(cfg.cond_channels, ch[0], 7, norm=cfg.norm)
        self.down = nn.ModuleList(conv_norm_relu(ch[i], ch[i + 1], 3, stride=2, norm=cfg.norm) for i in range(len(ch) - 1))
        self.res = nn.Sequential(*(ResBlock(ch[-1], cfg.norm) for _ in range(cfg.n_res_blocks)))
        self.grade_head = nn.Conv2d(ch[-1], cfg.num_grades, 3, padding=1)
        self.synth = nn.ModuleList(
            SynthesisBlock(c, cfg.cond_channels, d, cfg.w_dim, cfg.norm, sca=cfg.sca, agm=cfg.agm)
            for c, d in zip(reversed(ch[1:]), cfg.sca_qk_dims)
        )
        self.to_rgb = nn.Conv2d(ch[0], cfg.img_channels, 7, padding=3) if rgb_head else None

    def encode(self, cond: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(cond)]
        for down in self.down:
            feats.append(down(feats[-1]))
        return feats

    def grade_logits(self, bottom: torch.Tensor) -> torch.Tensor:
        return self.grade_head(bottom).mean(dim=(2, 3)).float()

    def forward(
        self, cond: torch.Tensor, w: torch.Tensor | None, noise: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Returns (image or None without RGB head, last synthesis features, grade logits)."""
        feats = self.encode(cond)
        x = self.res(feats[-1])
        for block, skip, n in zip(self.synth, reversed(feats[1:]), noise):
            x = block(x, skip, cond, w, n)
        image = None if self.to_rgb is None else torch.tanh(self.to_rgb(x))
        return image, x, self.grade_logits(feats[-1])


class LocalEnhancer(nn.Module):
    """Gl: full-resolution front end whose half-resolution features are added to Gm's."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c_full, c_half = cfg.local_channels
        self.stem = conv_norm_relu(cfg.cond_channels, c_full, 7, norm=cfg.norm)
        self.down = conv_norm_relu(c_full, c_half, 3, stride=2, norm=cfg.norm)
        self.up = conv_norm_relu(c_half, c_full, 3, norm=cfg.norm, transposed=True)
        self.to_rgb = nn.Conv2d(c_full, cfg.img_channels, 7, padding=3)

    def forward(self, cond: torch.Tensor, global_features: torch.Tensor) -> torch.Tensor:
        x = self.down(self.stem(cond)) + global_features
        return torch.tanh(self.to_rgb(self.up(x)))


class DRGANGenerator(nn.Module):
    """Masks + grading vector -> fundus photograph in [-1, 1] at the stage's resolution."""

    def __init__(
        self,
        cfg: ModelConfig,       # model shape (a preset or a loaded config)
        stage: str = "local",   # 'global': Gm alone at half resolution; 'local': Gm + Gl at full
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise DrganError(f"unknown stage {stage!r}; choose one of {STAGES}")
        self.cfg = cfg
        self.stage = stage
        # Without AGM no parameter may depend on z (DDP refuses parameters without gradients).
        self.mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, cfg.mapping_layers) if cfg.agm else None
        self.global_gen = GlobalGenerator(cfg, rgb_head=stage == "global")
        self.local = LocalEnhancer(cfg) if stage == "local" else None

    @property
    def resolution(self) -> int:
        return self.cfg.stage_resolution(self.stage)

    def noise_shapes(self, batch: int) -> list[tuple[int, int, int, int]]:
        """Shapes of the per-synthesis-block noise volumes (C/4 channels each)."""
        side = self.cfg.global_resolution // 2 ** (len(self.cfg.enc_channels) - 1)
        shapes = []
        for i, block in enumerate(self.global_gen.synth):
            s = side * 2**i
            shapes.append((batch, block.noise_channels, s, s))
        return shapes

    def make_noise(self, batch: int, seed: int | None = None, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        return [torch.randn(s, generator=gen, device=device) for s in self.noise_shapes(batch)]

    def forward(
        self, cond: torch.Tensor, z: torch.Tensor, noise: Noise = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cond (B, 8, R, R) in [0, 1], z (B, z_dim); noise None (random), a seed, or tensors.

        Returns the image (B, 3, R, R) in [-1, 1] and the encoder's grade logits (B, 5) in fp32.
        """
        r, b = self.resolution, cond.shape[0]
        assert_shape(cond, (None, self.cfg.cond_channels, r, r), "cond")
        assert_shape(z, (b, self.cfg.z_dim), "z")
        if noise is None or isinstance(noise, int):
            noise = self.make_noise(b, noise, cond.device)
        noise, shapes = list(noise), self.noise_shapes(b)
        if len(noise) != len(shapes):
            raise AssertionError(f"noise holds {len(noise)} tensors, expected {len(shapes)}")
        for n, shape in zip(noise, shapes):
            assert_shape(n, shape, "noise")
        if cond.is_contiguous(memory_format=torch.channels_last) and not cond.is_contiguous():
            noise = [n.contiguous(memory_format=torch.channels_last) for n in noise]
        w = None if self.mapping is None else self.mapping(z)
        cond = structure_only(cond, self.cfg)
        if self.local is None:
            image, _, logits = self.global_gen(cond, w, noise)
            return image, logits
        half = F.avg_pool2d(cond, 2)
        _, features, logits = self.global_gen(half, w, noise)
        return self.local(cond, features), logits

    def load_global(self, state: dict[str, torch.Tensor]) -> None:
        """Start the local stage from a trained global stage (pix2pixHD: Gm's RGB head is dropped)."""
        own = self.state_dict()
        wanted = {k: v for k, v in state.items() if not k.startswith("global_gen.to_rgb.")}
        missing = sorted(k for k in own if not k.startswith("local.") and k not in wanted)
        unexpected = sorted(k for k in wanted if k not in own)
        if missing or unexpected:
            raise DrganError(f"not the global stage of this model: missing {name_list(missing) or 'none'}, "
                             f"unexpected {name_list(unexpected) or 'none'}")
        self.load_state_dict(wanted, strict=False)

    @torch.no_grad()
    def predict_grade(self, cond: torch.Tensor) -> torch.Tensor:
        """Grade predicted from the masks alone (chooses the grading space when none is given), as
        the forward pass's grade head sees them."""
        cond = structure_only(cond, self.cfg)
        if self.local is not None:
            cond = F.avg_pool2d(cond, 2)
        return self.global_gen.grade_logits(self.global_gen.encode(cond)[-1]).argmax(dim=1)
