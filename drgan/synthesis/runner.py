"""`drgan synthesize`: a balanced set, generated in fixed batches, resumable and sharded."""
from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from drgan.checkpoint import read_run_config
from drgan.config import NUM_GRADES
from drgan.data.lesions import LesionStats
from drgan.errors import DrganError
from drgan.grading_space import FILE_NAME as GRADING_SPACE_FILE, GradingSpace
from drgan.synthesis.backend import make_backend
from drgan.synthesis.conditions import Item, build_item, item_noise
from drgan.synthesis.plan import Plan, Shard
from drgan.synthesis.structures import StructurePool
from drgan.synthesis.writer import OutputFolder, gpu_jpeg_encoder, sha256_file

# Batches whose conditions are built ahead of the generator, item by item on CPU threads
# (lesion drawing is numpy/scipy work that releases the GIL for its array operations).
PREFETCH = 2


@dataclass
class SynthesisOptions:
    checkpoint: str                             # run folder of a trained GAN
    out: str                                    # output folder
    count: int                                  # images in the whole set
    grades: tuple[int, ...] = tuple(range(NUM_GRADES))  # cycled over the items: balanced
    structures: str | None = None               # dataset folder of structure masks; phantom when None
    lesion_stats: str | None = None             # JSON from fit_lesion_stats; the DR-scale default when None
    seed: int = 0
    batch: int = 8
    precision: str = "auto"                     # bf16 on CUDA, fp32 on CPU
    backend: str = "torch"
    format: str = "png"
    quality: int = 95
    save_masks: bool = False
    shard: str | None = None                    # "i/n"; torchrun's RANK/WORLD_SIZE when None
    loader: str = "torch"                       # how --structures is read: torch or dali
    device: str = "auto"
    threads: int = field(default_factory=lambda: max(2, (os.cpu_count() or 2)))
    progress: bool = True


@dataclass
class Summary:
    out: Path
    generated: int          # images written by this call
    skipped: int            # already present (resume)
    total: int              # images of the plan present in the folder
    per_grade: dict[int, int]
    seconds: float
    gpu_busy_seconds: float | None = None  # generator time measured with CUDA events

    @property
    def gpu_idle_share(self) -> float | None:
        if self.gpu_busy_seconds is None or self.seconds <= 0:
            return None
        return max(0.0, 1.0 - self.gpu_busy_seconds / self.seconds)

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DrganError(f"--device {name}: no CUDA device is available")
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    return torch.device(name)


def _shard(text: str | None) -> Shard:
    if text is not None:
        return Shard.parse(text)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Shard(int(os.environ.get("RANK", "0")), world)


def _grading_space(checkpoint: Path, z_dim: int) -> GradingSpace:
    path = checkpoint / GRADING_SPACE_FILE
    if not path.is_file():
        raise DrganError(f"{checkpoint}: no {GRADING_SPACE_FILE} (train the grader and pass its grading space to `drgan train gan`)")
    space = GradingSpace.load(path)
    if space.dim != z_dim or space.num_grades != NUM_GRADES:
        raise DrganError(f"{path}: grading vectors are {space.dim}-d for {space.num_grades} grades; the generator wants {z_dim}-d for {NUM_GRADES}")
    return space


def _manifest_row(item: Item) -> dict:
    return {"id": item.id, "grade": item.grade, "seed": item.seed, "structure_id": item.structure_id, **item.lesion_counts}


def synthesize(opts: SynthesisOptions) -> Summary:
    start = time.perf_counter()
    checkpoint = Path(opts.checkpoint)
    cfg, stage, _ = read_run_config(checkpoint)
    space = _grading_space(checkpoint, cfg.z_dim)
    size = cfg.stage_resolution(stage)
    plan = Plan(opts.count, tuple(opts.grades), opts.seed, opts.batch)
    shard = _shard(opts.shard)
    device = _device(opts.device)
    stats = LesionStats.load(opts.lesion_stats) if opts.lesion_stats else None
    out = OutputFolder(
        Path(opts.out), opts.format, opts.quality, opts.save_masks,
        journal_name=f".journal-{shard.index}-of-{shard.count}.csv", threads=opts.threads,
    )
    pool = StructurePool.from_dataset(opts.structures, size, opts.loader) if opts.structures else StructurePool.phantom(size, opts.seed)
    backend, noise_shapes = make_backend(opts.backend, checkpoint, device, opts.precision, opts.batch)
    shapes = noise_shapes(1)

    done = out.done_ids()
    batches = [k for k in plan.shard_batches(shard) if any(plan.item_id(i) not in done for i in plan.batch_items(k))]
    todo = sum(1 for k in batches for i in plan.batch_items(k) if plan.item_id(i) not in done)
    shard_total = sum(len(plan.batch_items(k)) for k in plan.shard_batches(shard))
    skipped = shard_total - todo

    def build(k: int) -> list:
        return [builders.submit(build_item, plan, i, pool, space, stats) for i in plan.batch_items(k)]

    gpu_encode = gpu_jpeg_encoder(opts.quality) if opts.format == "jpeg" and device.type == "cuda" else None
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    generated = 0
    bar = tqdm(total=todo, unit="img", desc=f"synthesize {shard.index}/{shard.count}", disable=not opts.progress, smoothing=0.1)
    builders = ThreadPoolExecutor(max_workers=opts.threads, thread_name_prefix="drgan-cond")
    try:
        ahead = [build(k) for k in batches[:PREFETCH]]
        for n, k in enumerate(batches):
            items = [f.result() for f in ahead.pop(0)]
            if n + PREFETCH < len(batches):
                ahead.append(build(batches[n + PREFETCH]))
            # The batch always has plan.batch rows (the last one padded by repetition): the same
            # shapes every time, so a resumed or sharded run computes bit-identical images.
            rows = items + [items[-1]] * (plan.batch - len(items))
            cond = torch.from_numpy(np.stack([it.masks for it in rows])).float().div_(255.0)
            z = torch.stack([it.z for it in rows])
            per_item = [item_noise(shapes, it.noise_seed, device) for it in rows]
            noise = [torch.cat(level) for level in zip(*per_item)]
            if device.type == "cuda":
                events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
                events[-1][0].record()
            image = backend(cond, z, noise)
            pixels = ((image[: len(items)].float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
            if events:
                events[-1][1].record()
            if gpu_encode is not None:
                encoded = gpu_encode(pixels)
            else:
                encoded = list(pixels.permute(0, 2, 3, 1).cpu().numpy())
            for it, px in zip(items, encoded):
                if it.id in done:
                    continue
                out.submit(_manifest_row(it), px, it.masks if opts.save_masks else None)
                generated += 1
                bar.update(1)
        out.flush()
    finally:
        builders.shutdown(wait=True, cancel_futures=True)
        bar.close()
        out.close()
    rows = _complete_rows(out, plan, pool, space, stats)
    out.write_manifest(list(rows.values()))
    per_grade = Counter(int(r["grade"]) for r in rows.values())
    busy = None
    if events:
        torch.cuda.synchronize()
        busy = sum(a.elapsed_time(b) for a, b in events) / 1e3
    return Summary(Path(opts.out), generated, skipped, len(rows), dict(sorted(per_grade.items())), time.perf_counter() - start, busy)


def _complete_rows(out: OutputFolder, plan: Plan, pool: StructurePool, space: GradingSpace, stats) -> dict[str, dict]:
    """Journal rows of every finished item of the plan; rows lost to a kill are rebuilt."""
    rows = out.journal_rows()
    index = {plan.item_id(i): i for i in range(plan.count)}
    rows = {k: v for k, v in rows.items() if k in index}
    for item_id in sorted(out.done_ids() - set(rows)):
        if item_id not in index:
            continue
        item = build_item(plan, index[item_id], pool, space, stats)
        path = out.image_path(item_id)
        rows[item_id] = {**_manifest_row(item), "file": f"images/{path.name}", "sha256": sha256_file(path)}
    return rows


def format_summary(s: Summary) -> str:
    grades = ", ".join(f"grade {g}: {n}" for g, n in s.per_grade.items())
    idle = "" if s.gpu_idle_share is None else f", GPU idle {100 * s.gpu_idle_share:.0f}% of the time"
    return (
        f"wrote {s.generated} images in {s.seconds:.1f} s ({s.images_per_second:.2f} images/s{idle}), "
        f"{s.skipped} already present; {s.out} holds {s.total} ({grades})"
    )
