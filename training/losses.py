"""The terms of the DR-GAN objective (paper eq. 1), each computed in fp32.

- adversarial: non-saturating BCE (softplus form) or least squares, summed over the discriminators;
- feature matching: L1 between the discriminators' activations on real and fake, every layer,
  averaged over layers and summed over discriminators; pix2pixHD's term (whose lambda = 10 the paper
  adopts) is 4/num_discriminators times this one (docs/paper.md);
- perceptual: L1 between feature-network activations of real and fake at the largest scale;
- focal: grade classification (Lin et al.), for the discriminators' grade heads on real and fake.
"""
from __future__ import annotations

from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn

from drgan.checkpoint import build_loaded
from drgan.errors import ParameterError
from drgan.nn import DiscOutput, GradeNet, build_grader
from drgan.runs import GRADER_FILE, grader_resolution, read_run
from drgan.training.vgg import TAP_WEIGHTS, find_vgg19_weights, load_vgg19, torchvision_weights_path


def d_adversarial(real: list[DiscOutput], fake: list[DiscOutput], kind: str) -> torch.Tensor:
    """Discriminator side: real -> 1, fake -> 0, summed over scales."""
    total = torch.zeros((), device=real[0].logit.device)
    for r, f in zip(real, fake):
        if kind == "bce":
            total = total + F.softplus(-r.logit).mean() + F.softplus(f.logit).mean()
        else:
            total = total + 0.5 * ((r.logit - 1).square().mean() + f.logit.square().mean())
    return total


def g_adversarial(fake: list[DiscOutput], kind: str) -> torch.Tensor:
    """Generator side: non-saturating -log D(G(c)), or (D(G(c)) - 1)^2 for LSGAN."""
    total = torch.zeros((), device=fake[0].logit.device)
    for f in fake:
        total = total + (F.softplus(-f.logit).mean() if kind == "bce" else 0.5 * (f.logit - 1).square().mean())
    return total


def feature_matching(real: list[DiscOutput], fake: list[DiscOutput], norm: str = "l1") -> torch.Tensor:
    """Mean L1 (or squared L2) over every discriminator layer, summed over scales; real activations are targets."""
    distance = F.l1_loss if norm == "l1" else F.mse_loss
    total = torch.zeros((), device=fake[0].logit.device)
    for r, f in zip(real, fake):
        per_layer = [distance(ff.float(), rf.detach().float()) for rf, ff in zip(r.features, f.features)]
        total = total + torch.stack(per_layer).mean()
    return total


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss, mean over the batch: -(1 - p_t)^gamma log p_t."""
    logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    return (-(1 - logp.exp()).pow(gamma) * logp).mean()


def grade_focal(outputs: list[DiscOutput], target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Focal loss of every discriminator's grade head, summed over scales."""
    return torch.stack([focal_loss(o.grade_logits, target, gamma) for o in outputs]).sum()


class Perceptual(nn.Module):
    """L1 between frozen feature-network activations of real and fake images (weighted per tap)."""

    def __init__(
        self,
        extract: nn.Module,                 # frozen network: image in [-1, 1] -> list of activations
        weights: tuple[float, ...] | None,  # per-activation weights (None: equal)
    ) -> None:
        super().__init__()
        self.extract = extract
        self.weights = weights

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = self.extract(real)
        feats = self.extract(fake)
        weights = self.weights or (1.0 / len(feats),) * len(feats)
        return sum(w * F.l1_loss(f.float(), t.float()) for w, f, t in zip(weights, feats, targets))


class GraderFeatures(nn.Module):
    """A GradeNet's stem and four stage outputs (its intermediate features), frozen, on images
    resized to the side the grader was trained at: at any other scale its features answer to
    textures it never saw, and matching them teaches the generator high-frequency noise."""

    def __init__(
        self,
        grader: GradeNet,   # trained grader
        resolution: int,    # the grader's input side
    ) -> None:
        super().__init__()
        self.grader = grader.requires_grad_(False).eval()
        self.resolution = resolution

    def train(self, mode: bool = True) -> "GraderFeatures":
        return super().train(False)  # batch-norm statistics stay those of the pretrained grader

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        g = self.grader
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.resolution)
        x = g.maxpool(g.relu(g.bn1(g.conv1(x))))
        out = [x]
        for stage in (g.layer1, g.layer2, g.layer3, g.layer4):
            x = stage(x)
            out.append(x)
        return out


def grader_weights_beside(grading_space: str | Path) -> Path:
    """`grader.safetensors` of the grader run that wrote a grading space."""
    return Path(grading_space).parent / GRADER_FILE


def resolve_perceptual(kind: str, vgg19_weights: str | None, grading_space: str | None) -> tuple[str, str | None]:
    """(network, VGG19 weights file) as a run records them. 'auto' is VGG-19 (the paper's) when its
    weights are given or torchvision has downloaded them, else the grader beside the grading space;
    'vgg19' also finds torchvision's download."""
    if kind not in ("auto", "vgg19"):
        return kind, vgg19_weights
    found = find_vgg19_weights(vgg19_weights)
    if found is not None:
        return "vgg19", str(found)
    if kind == "vgg19":
        return kind, None  # build_perceptual says what is missing
    if not grader_weights_beside(grading_space or ".").is_file():
        raise ParameterError(
            f"{{perceptual}} auto: no VGG-19 weights ({{vgg19_weights}} FILE, or {torchvision_weights_path()}) and no "
            f"grader weights beside {{grading_space}} {grading_space}; give one of them or choose {{perceptual}} none"
        )
    return "grader", None


def describe_perceptual(kind: str, vgg19_weights: str | None, grading_space: str | None, auto: bool) -> str:
    """One line naming the perceptual network of resolved options; `auto`: resolved from 'auto' now,
    so a grader says why it is not the paper's VGG-19."""
    if kind == "vgg19":
        return f"perceptual loss: VGG-19 with {vgg19_weights}"
    if kind == "grader":
        why = f" (no VGG-19 weights given or at {torchvision_weights_path()})" if auto else ""
        return f"perceptual loss: the grader of {Path(grading_space or '.').parent}{why}"
    return "perceptual loss: none"


def build_perceptual(kind: str, vgg19_weights: str | None, grading_space: str | None) -> Perceptual | None:
    """The perceptual loss of --perceptual vgg19|grader|none (None for 'none')."""
    if kind == "none":
        return None
    if kind == "vgg19":
        return Perceptual(load_vgg19(vgg19_weights), TAP_WEIGHTS)
    path = grader_weights_beside(grading_space or ".")
    if not path.is_file():
        raise ParameterError(f"{{perceptual}} grader needs the grader weights {path} beside the grading space (run `drgan train grader`)")
    grader_cfg = read_run(path.parent).cfg
    grader = build_loaded(lambda: build_grader(grader_cfg), path)
    return Perceptual(GraderFeatures(grader, grader_resolution(path.parent)), None)

