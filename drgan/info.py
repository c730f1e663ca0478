"""Parameters and FLOPs per module of a preset, measured on meta tensors (nothing runs at full size)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from drgan.config import ModelConfig
from drgan.errors import DrganError
from drgan.metrics.grading import format_kappa
from drgan.nn import DRGANGenerator, build_discriminator, build_grader

# Matrix products inside an SCA module are its attention; everything else counted is convolution
# or linear layers.
_ATTENTION_OPS = ("aten.bmm", "aten.mm", "aten.baddbmm")


@dataclass
class ModuleCost:
    name: str
    params: int
    conv_flops: int       # convolutions and linear layers, per image
    attention_flops: int  # SCA spatial + channel attention products, per image


def _generator_rows(g: DRGANGenerator) -> list[tuple[str, torch.nn.Module]]:
    rows: list[tuple[str, torch.nn.Module]] = [] if g.mapping is None else [("mapping", g.mapping)]
    gm = g.global_gen
    rows += [("Gm.encoder.stem", gm.stem)]
    rows += [(f"Gm.encoder.down{i}", m) for i, m in enumerate(gm.down)]
    rows += [("Gm.res_blocks", gm.res), ("Gm.grade_head", gm.grade_head)]
    rows += [(f"Gm.synthesis{i}", m) for i, m in enumerate(gm.synth)]
    if gm.to_rgb is not None:
        rows += [("Gm.to_rgb", gm.to_rgb)]
    if g.local is not None:
        rows += [("Gl", g.local)]
    return rows


def generator_costs(cfg: ModelConfig, stage: str = "local") -> list[ModuleCost]:
    """Per-module parameters and per-image FLOPs of the generator (batch 1, meta tensors)."""
    with torch.device("meta"):
        g = DRGANGenerator(cfg, stage).eval()
        r = cfg.stage_resolution(stage)
        cond, z = torch.empty(1, cfg.cond_channels, r, r), torch.empty(1, cfg.z_dim)
        noise = [torch.empty(s) for s in g.noise_shapes(1)]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        g(cond, z, noise)
    counts = counter.get_flop_counts()
    owner = {id(m): n for n, m in g.named_modules()}
    costs = []
    for label, module in _generator_rows(g):
        key = "DRGANGenerator." + owner[id(module)]
        ops = counts.get(key, {})
        attention = sum(v for op, v in ops.items() if str(op) in _ATTENTION_OPS)
        costs.append(ModuleCost(label, sum(p.numel() for p in module.parameters()), sum(ops.values()) - attention, attention))
    return costs


def attention_exps(cfg: ModelConfig) -> int:
    """Exponentials of the spatial-attention softmax per image: sum of N^2 over SCA blocks (they
    run in Gm at the global resolution, so both stages have the same)."""
    return sum(n * n for n in cfg.attention_tokens)


def cost_report(cfg: ModelConfig, name: str, stage: str = "local") -> dict:
    """Parameters and FLOPs per module and in total (what `drgan info` prints, as data)."""
    costs = generator_costs(cfg, stage)
    return {
        "name": name, "stage": stage, "resolution": cfg.stage_resolution(stage),
        "modules": [{"name": c.name, "params": c.params, "conv_flops": c.conv_flops, "attention_flops": c.attention_flops}
                    for c in costs],
        "params": sum(c.params for c in costs),
        "conv_flops": sum(c.conv_flops for c in costs),
        "attention_flops": sum(c.attention_flops for c in costs),
        "softmax_exps": attention_exps(cfg),
        "discriminator_params": sum(p.numel() for p in build_discriminator(cfg).parameters()),
        "grader_params": sum(p.numel() for p in build_grader(cfg).parameters()),
        "grader_width": cfg.grader_width,
        "grading_vector": cfg.z_dim,
        "ablations": [name for name in ABLATIONS if not getattr(cfg, name)],
    }


def grader_report(run: str | Path) -> dict:
    """What a grader run holds: the network's parameters and FLOPs per image at its input size, the
    epochs trained (with their validation metrics) and whether its grading spaces are written."""
    from drgan.grading_space import FILE_NAME as SPACE_FILE
    from drgan.runs import STATE_JSON, grader_resolution, read_run

    info, resolution = read_run(run), grader_resolution(run)
    with torch.device("meta"):
        grader = build_grader(info.cfg).eval()
        image = torch.empty(1, info.cfg.img_channels, resolution, resolution)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        grader(image)
    state = Path(run) / STATE_JSON
    try:
        epochs = json.loads(state.read_text())["report"] if state.is_file() else []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DrganError(f"{state}: unreadable training state ({exc})") from None
    return {"name": str(run), "kind": "grader", "resolution": resolution, "grader_width": info.cfg.grader_width,
            "params": sum(p.numel() for p in grader.parameters()), "flops": counter.get_total_flops(),
            "grading_vector": info.cfg.z_dim, "epochs": epochs, "grading_space": (Path(run) / SPACE_FILE).is_file(),
            "options": info.options}


def format_grader(report: dict) -> str:
    """grader_report as text."""
    r, trained, wanted = report["resolution"], len(report["epochs"]), report["options"].get("epochs", "?")
    lines = [f"drgan {report['name']}: grader run, ResNet-50 (width {report['grader_width']}), input {r}x{r}",
             f"{report['params']:,} params, {report['flops'] / 1e9:.3g} GFLOP per image, grading vector {report['grading_vector']}-d",
             f"epochs trained: {trained} of {wanted}"]
    if trained:
        last = report["epochs"][-1]["val"]
        lines[-1] += f" (last: val accuracy {last['accuracy']:.3f}, kappa {format_kappa(last['kappa'])})"
    lines.append("grading spaces: " + ("written" if report["grading_space"] else "not yet (the run is unfinished)"))
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """cost_report as a table."""
    r, total_f, attn = report["resolution"], report["conv_flops"] + report["attention_flops"], report["attention_flops"]
    unit, scale = ("GFLOP", 1e9) if total_f >= 1e9 else ("MFLOP", 1e6)  # the small presets read 0.0 in GFLOP
    lines = [
        f"drgan {report['name']}: generator stage {report['stage']!r}, output {r}x{r}, FLOPs per image (1 multiply-add = 2 FLOPs)",
        "",
        f"{'module':<20} {'params':>12} {'conv ' + unit:>12} {'attn ' + unit:>12} {'share':>7}",
    ]
    for c in report["modules"]:
        share = 100.0 * (c["conv_flops"] + c["attention_flops"]) / total_f
        lines.append(f"{c['name']:<20} {c['params']:>12,} {c['conv_flops'] / scale:>12.1f} {c['attention_flops'] / scale:>12.1f} {share:>6.1f}%")
    lines += [
        f"{'total':<20} {report['params']:>12,} {(total_f - attn) / scale:>12.1f} {attn / scale:>12.1f} {100.0:>6.1f}%",
        "",
        f"total: {total_f / scale:,.1f} {unit} per image, attention {100.0 * attn / total_f:.1f}% "
        f"({report['softmax_exps']:.3g} softmax exponentials)",
        f"discriminators: {report['discriminator_params']:,} params; "
        f"grader (ResNet-50, width {report['grader_width']}): {report['grader_params']:,} params, "
        f"grading vector {report['grading_vector']}-d",
    ]
    off = report["ablations"]
    lines.append("ablations: " + (", ".join(f"no {name.replace('_', ' ')}" for name in off) if off else "none (the paper's network)"))
    return "\n".join(lines)


ABLATIONS = ("sca", "agm", "lesion_masks")  # ModelConfig switches of the paper's ablation studies


def format_run(options: dict) -> str:
    """The training options of a run that define its objective, one per line."""
    keys = ("trainer", "stage", "preset", "lr", "batch", "lambda_fm", "fm_norm", "lambda_perceptual", "perceptual",
            "lambda_cls", "g_cls_weight", "lambda_l1", "ema", "gan_loss", "precision", "max_steps", "epochs")
    return "\n".join(f"{k:<18} {options[k]}" for k in keys if k in options)
