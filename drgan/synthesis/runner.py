"""`drgan synthesize`: a balanced set, generated in fixed batches, resumable and sharded.

The hot path is a pipeline of bounded, overlapped stages: placement (host threads, small records)
-> rasterization of the conditions and generation (the device; its own CUDA stream) -> copy of
the pixels into a ring of pinned host buffers -> encoding and atomic writes (host threads; the
encoders release the GIL). The main thread only queues work; it waits for the device only when a
ring buffer is still being encoded.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from drgan import locks
from drgan.config import COND_CHANNELS, NUM_GRADES, preset as preset_config
from drgan.data.decode import MIN_SIDE
from drgan.data.labels import SPLITS
from drgan.data.lesion_stats import LESION_TYPES, LesionStats
from drgan.errors import DrganError, ParameterError, UsageError, first_names
from drgan.grading_space import FILE_NAME as GRADING_SPACE_FILE, GradingSpace
from drgan.io import check_outside, sha256_file
from drgan.runs import RUN_FILE, RunInfo, read_run, require_kind
from drgan.runtime import current_gpu, intra_op_threads, rank_gpu, resolve_device, torchrun_ranks
from drgan.synthesis import fingerprint
from drgan.synthesis.registry import make_backend
from drgan.synthesis.conditions import Item, item_noise, place_item
from drgan.synthesis.encode import JPEG_QUALITIES, PNG_LEVELS, gpu_jpeg_encoder
from drgan.synthesis.pixels import CHUNK, to_pixels
from drgan.synthesis.plan import Plan, Shard
from drgan.synthesis.raster import condition_masks
from drgan.synthesis.stages import StageTimes
from drgan.synthesis.structures import DeviceStructures, StructurePool
from drgan.synthesis.writer import OutputFolder

LABELS = ("planned", "predicted")
STRUCTURES_SPLITS = (*SPLITS, "all")

# Batches placed ahead of the device, and batches of pixels in flight between the device and the
# encoders (one pinned host buffer each): the bounds of the pipeline.
PREFETCH = 2
IN_FLIGHT = 3


@dataclass
class SynthesisOptions:
    run: str | None                             # run folder of a trained GAN (None: preset, null backend)
    out: str                                    # output folder
    count: int                                  # images in the whole set
    grades: tuple[int, ...] = tuple(range(NUM_GRADES))  # cycled over the items: balanced
    structures: str | None = None               # dataset folder of structure masks; phantom when None
    structures_split: str = "train"             # its rows whose masks are used: train, val, test or all
    lesion_stats: str | None = None             # JSON from fit_lesion_stats; the DR-scale default when None
    seed: int = 0
    batch: int = 8
    precision: str = "auto"                     # bf16 on CUDA, fp32 on CPU
    backend: str = "torch"
    format: str = "png"
    quality: int = 95
    png_level: int = 1                          # 0 stored, 1 fast (default), 2-9 zlib levels
    save_masks: bool = False
    shard: str | None = None                    # "i/n"; torchrun's RANK/WORLD_SIZE when None
    loader: str = "torch"                       # how --structures is read: torch or dali
    device: str = "auto"
    threads: int = field(default_factory=lambda: max(2, (os.cpu_count() or 2)))
    progress: bool = True
    preset: str | None = None                   # with backend "null" instead of a run
    trt_plugin: str | None = None               # TensorRT plugin library an engine built with one needs
    label: str = "planned"                      # grading vector of the planned grade, or of the grade the encoder predicts from the masks
    fp8_attention: bool = False                 # spatial attention's P@V in float8 (torch backend; opt-in)
    verify: bool = False                        # check this shard's files already written; damaged ones are made again


@dataclass
class Summary:
    out: Path
    generated: int          # images written by this call
    skipped: int            # already present (resume)
    total: int              # images of the plan present in the folder
    planned: int            # images in the whole set (every shard)
    per_grade: dict[int, int]
    seconds: float
    gpu_busy_seconds: float | None = None  # device time (rasterization .. transfer), CUDA events
    pipeline_seconds: float = 0.0          # from the first batch queued to the last file written
    stage_seconds: dict[str, float] = field(default_factory=dict)  # see drgan.synthesis.stages
    bound: str | None = None               # the stage that bounds the run
    agreement: float | None = None         # --label predicted: share of the set whose predicted grade is the planned one
    damaged: list[str] | None = None       # --verify: ids of the files found damaged (and written again)
    empty: list[str] = field(default_factory=list)  # without --verify: ids whose image or a mask was empty or gone (written again)

    @property
    def gpu_idle_share(self) -> float | None:
        """Share of the pipeline's time the device had no work queued on the runner's stream
        (startup not counted; nvJPEG's encoding, on a stream of its own, counts as idle)."""
        if self.gpu_busy_seconds is None or self.pipeline_seconds <= 0:
            return None
        return max(0.0, 1.0 - self.gpu_busy_seconds / self.pipeline_seconds)

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        per_image = {k: round(1e3 * v / self.generated, 2) if self.generated else None for k, v in self.stage_seconds.items()}
        return {
            "out": str(self.out), "generated": self.generated, "skipped": self.skipped, "total": self.total,
            "planned": self.planned,
            "per_grade": self.per_grade, "seconds": round(self.seconds, 3),
            "pipeline_seconds": round(self.pipeline_seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "gpu_idle_share": None if self.gpu_idle_share is None else round(self.gpu_idle_share, 4),
            "stage_seconds": {k: round(v, 4) for k, v in self.stage_seconds.items()},
            "stage_ms_per_image": per_image, "bound": self.bound,
            "label_agreement": None if self.agreement is None else round(self.agreement, 4),
            "damaged": self.damaged, "empty": self.empty,
        }


def _device(name: str) -> torch.device:
    """--device; under torchrun, 'cuda' and an 'auto' that picks CUDA mean this process's own GPU
    (runtime.rank_gpu): device 0 for every rank would run them all on one GPU."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", rank_gpu(torchrun_ranks().local_rank))
    return device


def _shard(text: str | None) -> Shard:
    """--shard, else torchrun's place; both given must agree (every rank of a torchrun job given
    one --shard would write the same part)."""
    rank, world, _ = torchrun_ranks()
    if text is None:
        return Shard(rank, world)
    shard = Shard.parse(text)
    if world > 1 and (shard.index, shard.count) != (rank, world):
        raise UsageError(f"{{shard}} {text}: torchrun's environment gives RANK={rank} WORLD_SIZE={world}; "
                         "give one of them")
    return shard


def _model(opts: SynthesisOptions) -> tuple[int, GradingSpace, int | None]:
    """Output resolution, grading space and the side lesions are drawn at (`lesion_side`): the
    run's, or a preset's with standard-normal grading spaces and lesions drawn at its resolution
    (null backend only: it needs no trained run)."""
    if opts.run is None and opts.preset is None and opts.backend != "null":
        raise UsageError(f"{{run}} is required: the {opts.backend} backend runs a trained generator")
    if (opts.run is None) == (opts.preset is None):
        raise UsageError("give exactly one of {run} and {preset}")
    if opts.preset is not None:
        if opts.backend != "null":
            raise UsageError("{preset} needs {backend} null (a generator needs a trained run: {run})")
        cfg = preset_config(opts.preset)
        return cfg.resolution, GradingSpace(torch.zeros(NUM_GRADES, cfg.z_dim), torch.ones(NUM_GRADES, cfg.z_dim), float("nan")), None
    run = Path(opts.run)
    info = require_kind(run, "gan", "run")
    size = info.cfg.stage_resolution(info.stage)
    if size < MIN_SIDE:  # every reader of a set (validate, evaluate, training) would refuse its images
        raise ParameterError(f"{{run}} {run}: its {info.stage} stage makes {size} px images; a set needs at least "
                             f"{MIN_SIDE} px (synthesize from the local stage's run)")
    return size, _grading_space(run, info.cfg.z_dim), lesion_side(info)


# Lesions are drawn at most this many times the run's resolution: against a drawing at the data's
# side, 4288 px photographs for a 256 px run, one at 1280 px differs by 1.45 8-bit levels on
# average, and the drawing's memory grows with the square of its side.
DRAW_FACTOR = 4


def lesion_side(info: RunInfo) -> int | None:
    """The side a run's lesion masks had before training resampled them to its resolution (soft
    edges; a small lesion a faint blob): its dataset's image side, at most DRAW_FACTOR times the
    resolution. Synthesis draws lesions there and resamples them as training did. None: the data
    had the run's side (or no record of it), and lesions are drawn at the run's resolution, hard,
    as it trained (a global-stage run is warned about instead, by condition_shift)."""
    size = info.cfg.stage_resolution(info.stage)
    side = info.extra.get("dataset", {}).get("image_side")
    if info.stage == "global" or not side or side == size:
        return None
    return min(int(side), DRAW_FACTOR * size)


def condition_shift(run: str | Path | None) -> str | None:
    """A warning where the run trained on softer masks than synthesis draws: a global-stage run
    (its conditions averaged down from the preset's resolution), while synthesis draws lesions at
    the run's resolution with hard edges. None otherwise, or where the run cannot be read (the
    synthesis names that)."""
    try:
        info = require_kind(run, "gan", "run") if run is not None else None
    except DrganError:
        return None
    if info is None or info.stage != "global" or (size := info.cfg.stage_resolution(info.stage)) < MIN_SIDE:
        return None   # nothing to warn of, or refused: one error, no warning
    return (f"{run} is a global-stage run: it trained on conditions averaged down to {size} px, with soft "
            f"edges, and synthesis draws lesions with hard ones (synthesize from the local stage's run)")


def _grading_space(run: Path, z_dim: int) -> GradingSpace:
    path = run / GRADING_SPACE_FILE
    if not path.is_file():
        raise DrganError(f"{run}: no {GRADING_SPACE_FILE} (train the grader and pass its grading space to `drgan train gan`)")
    space = GradingSpace.load(path)
    if space.dim != z_dim or space.num_grades != NUM_GRADES:
        raise DrganError(f"{path}: grading vectors are {space.dim}-d for {space.num_grades} grades; the generator wants {z_dim}-d for {NUM_GRADES}")
    return space


def synthesize(opts: SynthesisOptions) -> Summary:
    start = time.perf_counter()
    size, space, drawn_at = _model(opts)
    plan = Plan(opts.count, tuple(opts.grades), opts.seed, opts.batch)
    _check_output_options(opts)
    shard = _shard(opts.shard)
    device = _device(opts.device)
    with current_gpu(device):  # also for what runs outside the runner's stream (a backend's set-up, the warm-up)
        return _synthesize(opts, start, size, space, drawn_at, plan, shard, device)


def _synthesize(opts: SynthesisOptions, start: float, size: int, space: GradingSpace, drawn_at: int | None, plan: Plan,
                shard: Shard, device: torch.device) -> Summary:
    stats = LesionStats.load(opts.lesion_stats) if opts.lesion_stats else None
    pool = (StructurePool.from_dataset(opts.structures, size, opts.loader, None if opts.structures_split == "all" else opts.structures_split)
            if opts.structures else StructurePool.phantom(size, opts.seed))
    loaded = make_backend(opts.backend, opts.run, size, device, opts.precision, opts.batch, opts.trt_plugin,
                          opts.fp8_attention)
    times = StageTimes({"placement": opts.threads, "main": 1, "device": 1, "nvjpeg": 1, "output": opts.threads})
    out = _output_folder(opts, shard, _fingerprint(opts, plan, size, drawn_at, pool, loaded), times)
    try:
        done = out.done_ids()
        mine = _in_shard(done, plan, shard)
        empty = [] if opts.verify else out.empty_items(mine)  # --verify finds these too
        # A rerun of a whole set (without --verify, which may remove files) keeps it readable throughout.
        if opts.verify or empty or sum(plan.item_index(i) is not None for i in done) < plan.count:
            out.mark_unfinished()
        out.remove_images(empty)
        damaged = out.remove_damaged(mine, opts.progress) if opts.verify else None
        pipeline = _Pipeline(opts, plan, pool, space, stats, loaded, device, size, drawn_at, out, times)
        generated, skipped, pipeline_seconds = pipeline.run(shard)
        out.close()
    except BaseException:
        out.abort()
        raise
    try:
        with locks.section(out.root):  # shards finishing together: the last one writes every row
            rows = _complete_rows(out, plan, pool, space, stats, pipeline.batch_predictions if opts.label == "predicted" else None)
            out.write_manifest(list(rows.values()), whole=len(rows) == plan.count)
    finally:
        locks.release(out.root)
    return _summary(opts, plan, list(rows.values()), generated, skipped, damaged, empty, start, pipeline_seconds, times, device)


def _in_shard(ids: set[str], plan: Plan, shard: Shard) -> list[str]:
    """Those of `ids` that are items of the plan in this shard (other shards' may be being written)."""
    return [item_id for item_id in ids if (i := plan.item_index(item_id)) is not None and plan.in_shard(i, shard)]


def _check_output_options(opts: SynthesisOptions) -> None:
    """Refuse encoder settings and labels the output cannot honour."""
    if opts.quality not in JPEG_QUALITIES:
        raise ParameterError(f"{{quality}} {opts.quality}: JPEG quality lies in 1..100")
    if opts.png_level not in PNG_LEVELS:
        raise ParameterError(f"{{png_level}} {opts.png_level}: PNG levels lie in 0..9")
    if opts.label not in LABELS:
        raise ParameterError(f"{{label}} {opts.label!r}: choose one of {', '.join(LABELS)}")
    if opts.structures_split not in STRUCTURES_SPLITS:
        raise ParameterError(f"{{structures_split}} {opts.structures_split!r}: choose one of {', '.join(STRUCTURES_SPLITS)}")
    if opts.label == "predicted" and opts.backend == "null":
        raise UsageError("{label} predicted needs the generator's encoder: a {run} and a generator backend, not null")
    if opts.structures and (Path(opts.structures) / RUN_FILE).is_file():  # the reader would say only "not a dataset folder"
        raise ParameterError(f"{{structures}} {opts.structures}: a drgan run folder; give the dataset whose vessel and disc masks to use")
    trained_on = read_run(opts.run).options.get("data") if opts.run else None
    check_outside(opts.out, [opts.run, opts.structures, trained_on])  # a set inside a dataset becomes part of it


def _output_folder(opts: SynthesisOptions, shard: Shard, set_fingerprint: dict, times: StageTimes) -> OutputFolder:
    """The output folder with this shard's journal."""
    return OutputFolder(
        Path(opts.out), opts.format, opts.quality, opts.png_level, opts.save_masks,
        journal_name=f".journal-{shard.index}-of-{shard.count}.csv", shard=f"{shard.index}/{shard.count}", threads=opts.threads,
        fingerprint=set_fingerprint, times=times,
    )


def _summary(opts: SynthesisOptions, plan: Plan, rows: list[dict], generated: int, skipped: int, damaged: list[str] | None,
             empty: list[str], start: float, pipeline_seconds: float, times: StageTimes, device: torch.device) -> Summary:
    """The run's summary from the manifest rows and the stage times."""
    per_grade = Counter(int(r["grade"]) for r in rows)
    pairs = [(int(r["grade"]), int(r["predicted_grade"])) for r in rows if r.get("predicted_grade") not in (None, "")]
    return Summary(
        Path(opts.out), generated, skipped, len(rows), plan.count, dict(sorted(per_grade.items())), time.perf_counter() - start,
        gpu_busy_seconds=times.device_seconds() if device.type == "cuda" else None, pipeline_seconds=pipeline_seconds,
        stage_seconds=dict(times.seconds), bound=times.bound() if generated else None,
        agreement=float(np.mean([a == b for a, b in pairs])) if pairs else None, damaged=damaged,
        empty=empty,
    )


def _fingerprint(opts: SynthesisOptions, plan: Plan, size: int, drawn_at: int | None, pool: StructurePool, loaded) -> dict:
    """What decides the set's bytes (see drgan.synthesis.fingerprint); threads, device and the
    structure loader do not."""
    return {
        "seed": plan.seed, "count": plan.count, "grades": list(plan.grades), "batch": plan.batch,
        "resolution": size, "format": opts.format,
        "quality": opts.quality if opts.format == "jpeg" else None,
        "png_level": opts.png_level if opts.format == "png" else None,
        "lesion_stats": fingerprint.lesion_stats_id(opts.lesion_stats), "structures": pool.identity,
        "generator": loaded.weights, "preset": opts.preset, "backend": opts.backend, "precision": loaded.precision,
        "save_masks": opts.save_masks, "label": opts.label,
        # Only when on, so the fingerprints of sets made before the option existed still match.
        **({"fp8_attention": True} if opts.fp8_attention else {}),
        **({"lesions_drawn_at": drawn_at} if drawn_at else {}),
    }


class _Pipeline:
    """One shard's batches through placement -> device -> host buffers -> encoders."""

    def __init__(self, opts: SynthesisOptions, plan: Plan, pool: StructurePool, space: GradingSpace, stats,
                 loaded, device: torch.device, size: int, drawn_at: int | None, out: OutputFolder, times: StageTimes) -> None:
        self.opts, self.plan, self.pool, self.space, self.stats = opts, plan, pool, space, stats
        self.loaded, self.device, self.size, self.out, self.times = loaded, device, size, out, times
        self.drawn_at = drawn_at   # the side lesions are drawn at before resampling (None: size)
        self.cuda = device.type == "cuda"
        self.structures = DeviceStructures(pool, size, device, plan.batch)
        self.noise_shapes = loaded.noise_shapes(1)
        self.gpu_encode = gpu_jpeg_encoder(opts.quality) if opts.format == "jpeg" and self.cuda else None
        # nvJPEG blocks its caller until the batch is encoded: on a thread of its own, the main
        # thread meanwhile queues the next batch, which the GPU generates while this one encodes.
        # Its current device is this GPU (an index: `cuda` alone is refused), its current stream the
        # default one, never another: torchvision's cached encoder ties its last copy to the stream
        # current when it was built (pytorch/vision#9060).
        self.jpeg = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="drgan-nvjpeg", initializer=torch.cuda.set_device,
                                        initargs=(device.index if device.index is not None else torch.cuda.current_device(),))
                     if self.gpu_encode is not None else None)
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        if self.cuda:  # the weights' and structures' set-up kernels were queued on the default stream
            self.stream.wait_stream(torch.cuda.current_stream(device))
        self.device_space = space.to(device) if opts.label == "predicted" else None
        self._work: dict[str, torch.Tensor] = {}          # device buffers reused batch after batch
        self._host: dict[tuple[str, int], torch.Tensor] = {}  # (name, ring slot) -> host buffer the writers read
        self.waited = 0.0   # seconds the main thread was blocked on the device in the current batch
        self.events: list[list[torch.cuda.Event]] = []    # per batch: start, conditions, generated, copied

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        # Reuse is safe: every use is queued in order on one stream (or runs synchronously on CPU).
        t = self._work.get(name)
        if t is None or t.shape != shape:
            t = self._work[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return t

    def _host_buffer(self, name: str, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
        """uint8 host buffer `name` of ring slot `slot`, pinned on CUDA, made on first use: the
        writers read it until the slot comes round again (run() waits for them then)."""
        if (name, slot) not in self._host:
            self._host[name, slot] = torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda)
        return self._host[name, slot]

    def _place(self, i: int) -> Item:
        with self.times.cpu("placement"):
            return place_item(self.plan, i, self.pool, self.space, self.stats)

    def run(self, shard: Shard) -> tuple[int, int, float]:
        plan, done = self.plan, self.out.done_ids()
        # Streamed: the batches still to make are found as they are reached, never listed.
        batches = (k for k in plan.shard_batches(shard) if any(plan.item_id(i) not in done for i in plan.batch_items(k)))
        skipped = len(_in_shard(done, plan, shard))
        todo = plan.shard_size(shard) - skipped
        bar = tqdm(total=todo, unit="img", desc=f"synthesize {shard.index}/{shard.count}", disable=not self.opts.progress, smoothing=0.1)
        placers = ThreadPoolExecutor(max_workers=self.opts.threads, thread_name_prefix="drgan-place")
        in_flight: list[list] = [[] for _ in range(IN_FLIGHT)]   # encoder futures per host buffer
        generated, start = 0, time.perf_counter()
        try:
            ahead = [[placers.submit(self._place, i) for i in plan.batch_items(k)] for k in itertools.islice(batches, PREFETCH)]
            for n in itertools.takewhile(lambda _: ahead, itertools.count()):
                items = [f.result() for f in ahead.pop(0)]
                k = next(batches, None)
                if k is not None:
                    ahead.append([placers.submit(self._place, i) for i in plan.batch_items(k)])
                slot = n % IN_FLIGHT
                for f in in_flight[slot]:   # the encoders are done with this host buffer
                    f.result()
                in_flight[slot] = []
                queued, self.waited = time.perf_counter(), 0.0
                images, masks, predicted = self._device_batch(items, slot)
                if self.cuda:  # on the CPU this thread's time is the device stages' own
                    self.times.add("queueing", time.perf_counter() - queued - self.waited)
                for b, it in enumerate(items):
                    if it.id in done:
                        continue
                    row = it.manifest_row() if predicted is None else {**it.manifest_row(), "predicted_grade": predicted[b]}
                    in_flight[slot].append(self.out.submit(row, images[b], None if masks is None else masks[b]))
                    generated += 1
                bar.update(sum(it.id not in done for it in items))
                self._collect_events()
                bar.set_postfix_str(f"bound: {self.times.bound()}", refresh=False)
            self.out.flush()
            if self.cuda:
                torch.cuda.synchronize(self.device)
                self._collect_events()
        finally:
            placers.shutdown(wait=True, cancel_futures=True)
            if self.jpeg is not None:
                self.jpeg.shutdown(wait=True, cancel_futures=True)
            bar.close()
        return generated, skipped, time.perf_counter() - start

    def _device_batch(self, items: list[Item], slot: int) -> tuple[list, list | None, list[int] | None]:
        """Queue one batch on the device; returns per item a function giving its pixels or bytes
        (waiting for the copy), and one giving its masks when they are saved, and the encoder's
        predicted grades with --label predicted."""
        plan, n, size = self.plan, len(items), self.size
        # The batch always has plan.batch rows (the last one padded by repetition): the same
        # shapes every time, so a resumed or sharded run computes bit-identical images.
        rows = items + [items[-1]] * (plan.batch - n)
        with torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext(), torch.inference_mode():
            mark = self._marker()
            slots = self.structures.slots([it.structure for it in rows])
            # The float condition exists only here.
            with self._own_stage():
                side = self.drawn_at or size
                cond = condition_masks(self.structures.planes, slots, [it.primitives for it in rows],
                                       out=self._buffer("cond", (len(rows), len(COND_CHANNELS), size, size), torch.float32),
                                       lesions=self._buffer("lesions", (len(rows), len(LESION_TYPES), side, side), torch.uint8),
                                       drawn_at=self.drawn_at)
            saved = self._masks_to_host(cond[:n], slot) if self.opts.save_masks else None
            mark("rasterization")
            if self.device_space is None:
                z = torch.stack([it.z for it in rows]).to(self.device, non_blocking=True)
            else:
                z, predicted = self._predicted_z(cond, rows)
            per_item = [item_noise(self.noise_shapes, it.noise_seed, self.device) for it in rows]
            image = self.loaded.call(cond, z, [torch.cat(level) for level in zip(*per_item)])
            # Read once generation is queued: the wait covers the prediction only.
            with self._waiting():
                grades = None if self.device_space is None else predicted()[:n]
            image = image[:n].float()
            if self.gpu_encode is not None:
                nhwc = to_pixels(image, self._buffer("nhwc", (n, size, size, 3), torch.uint8))
                # A tensor of its own, held by the encoding until it returns (the nhwc buffer is the
                # next batch's once this copy is queued).
                pixels = nhwc.permute(0, 3, 1, 2).contiguous()
                mark("generation")
                ready = mark("transfer")
                encoding = self.jpeg.submit(self._encode_when_ready, pixels, ready)
                return [functools.partial(_encoded_bytes, encoding, b) for b in range(n)], saved, grades
            host = self._host_buffer("pixels", slot, (plan.batch, size, size, 3))
            if self.cuda:
                nhwc = to_pixels(image, self._buffer("nhwc", (n, size, size, 3), torch.uint8))
                mark("generation")
                host[:n].copy_(nhwc, non_blocking=True)
            else:   # the device's memory is the host's: convert straight into the encoders' buffer
                with self._own_stage():
                    to_pixels(image, host[:n], self._buffer("scratch", (CHUNK,), torch.float32))
                mark("generation")
            done = mark("transfer")
        return [functools.partial(_pixels_when_ready, done, host, b) for b in range(n)], saved, grades

    def _encode_when_ready(self, pixels: torch.Tensor, ready: torch.cuda.Event) -> list[torch.Tensor]:
        """On the nvJPEG thread: wait for the runner's stream to have written the pixels (nvJPEG's
        own stream does not wait for it), then encode them, timed as the nvjpeg stage."""
        ready.synchronize()
        start = time.perf_counter()
        encoded = self.gpu_encode(pixels)
        self.times.add("nvjpeg", time.perf_counter() - start)
        return encoded

    @contextlib.contextmanager
    def _waiting(self):
        """Time the main thread spends blocked on the device inside a batch: not queueing."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.waited += time.perf_counter() - start

    def _masks_to_host(self, cond: torch.Tensor, slot: int) -> list[functools.partial]:
        """--save-masks: the batch's conditions as uint8 (0/255; vessels, and lesions drawn at another
        side, in 8-bit steps between), copied into the slot's host buffer in
        stream order (before generation, so they are ready first); per item a function giving its
        masks once copied. A blocking copy would make the main thread wait for the device every batch."""
        host = self._host_buffer("masks", slot, (self.plan.batch, *cond.shape[1:]))
        host[:len(cond)].copy_((cond * 255).round_().to(torch.uint8), non_blocking=self.cuda)
        copied = None
        if self.cuda:
            copied = torch.cuda.Event(blocking=True)
            copied.record()
        return [functools.partial(_pixels_when_ready, copied, host, b) for b in range(len(cond))]

    def _predicted_z(self, cond: torch.Tensor, rows: list[Item]) -> tuple[torch.Tensor, functools.partial]:
        """The paper's test-time label: grading vectors from the spaces of the grades the encoder
        predicts from the masks (each item's own standard-normal draws), and a function giving
        those grades once the device has them."""
        grades = self.loaded.predict_grade(cond)
        z = self.device_space.shift(grades, torch.stack([it.eps for it in rows]).to(self.device, non_blocking=True))
        host = torch.empty(len(rows), dtype=torch.int64, pin_memory=self.cuda)
        host.copy_(grades, non_blocking=self.cuda)
        ready = None
        if self.cuda:
            ready = torch.cuda.Event(blocking=True)
            ready.record()
        return z, functools.partial(_grades_when_ready, ready, host)

    def batch_predictions(self, k: int) -> list[int]:
        """The grades the encoder predicts for batch k, computed as the run computed them (the
        same padded batch): for manifest rows rebuilt after a kill."""
        items = [place_item(self.plan, i, self.pool, self.space, self.stats) for i in self.plan.batch_items(k)]
        rows = items + [items[-1]] * (self.plan.batch - len(items))
        with torch.inference_mode():
            slots = self.structures.slots([it.structure for it in rows])
            cond = condition_masks(self.structures.planes, slots, [it.primitives for it in rows], drawn_at=self.drawn_at)
            return self.loaded.predict_grade(cond)[:len(items)].tolist()

    def _own_stage(self) -> contextlib.AbstractContextManager:
        """On the CPU the runner's own device stages (rasterization, pixel conversion) run on one
        intra-op thread: the pipeline's lanes already occupy the cores (runtime.intra_op_threads)."""
        return contextlib.nullcontext() if self.cuda else intra_op_threads(1)

    def _marker(self):
        """mark(stage) ends the stage that began at the previous mark; returns the CUDA event
        recorded there (None on CPU, where stages are timed on the main thread's clock)."""
        if self.cuda:
            # Blocking: a host thread waiting on one sleeps. The default spins: on an H200 the
            # encoder threads, which wait here for their pixels, used 262 ms of CPU per image.
            events = [torch.cuda.Event(enable_timing=True, blocking=True)]
            events[0].record()
            self.events.append(events)

            def mark(stage: str) -> torch.cuda.Event:
                events.append(torch.cuda.Event(enable_timing=True, blocking=True))
                events[-1].record()
                return events[-1]
            return mark
        last = [time.perf_counter()]

        def mark(stage: str) -> None:
            now = time.perf_counter()
            self.times.add(stage, now - last[0])
            last[0] = now
        return mark

    def _collect_events(self) -> None:
        """Add the device time of batches the GPU has finished (without waiting for the others)."""
        while self.events and self.events[0][-1].query():
            events = self.events.pop(0)
            for stage, (a, b) in zip(("rasterization", "generation", "transfer"), zip(events, events[1:])):
                self.times.add(stage, a.elapsed_time(b) / 1e3)


def _grades_when_ready(ready: torch.cuda.Event | None, host: torch.Tensor) -> list[int]:
    if ready is not None:
        ready.synchronize()
    return host.tolist()


def _pixels_when_ready(copied: torch.cuda.Event | None, host: torch.Tensor, b: int) -> np.ndarray:
    if copied is not None:
        copied.synchronize()
    return host[b].numpy()


def _encoded_bytes(encoding, b: int) -> bytes:
    """In a writer: item b's JPEG bytes, once its batch is encoded (nvJPEG returns when it is)."""
    return bytes(encoding.result()[b].cpu().numpy())


def _complete_rows(out: OutputFolder, plan: Plan, pool: StructurePool, space: GradingSpace, stats,
                   predictions: Callable[[int], list[int]] | None) -> dict[str, dict]:
    """Journal rows of every finished item of the plan; rows lost to a kill are rebuilt (with the
    grade predicted for them, from predictions(batch), under --label predicted)."""
    rows = out.journal_rows()
    rows = {k: v for k, v in rows.items() if plan.item_index(k) is not None}
    for item_id in sorted(out.done_ids() - set(rows)):
        i = plan.item_index(item_id)
        if i is None:
            continue
        item = place_item(plan, i, pool, space, stats)
        path = out.image_path(item_id)
        rows[item_id] = {**item.manifest_row(), "file": f"images/{path.name}", "sha256": sha256_file(path)}
        if predictions is not None:
            rows[item_id]["predicted_grade"] = predictions(item.index // plan.batch)[item.index % plan.batch]
    return rows


def format_summary(s: Summary) -> str:
    grades = ", ".join(f"grade {g}: {n}" for g, n in s.per_grade.items())
    idle = "" if s.gpu_idle_share is None else f", GPU idle {100 * s.gpu_idle_share:.0f}% of the time"
    text = (
        f"wrote {s.generated} image{'s' * (s.generated != 1)} in {s.seconds:.1f} s ({s.images_per_second:.2f} images/s{idle}), "
        f"{s.skipped} already present; {s.out} holds {s.total} ({grades})"
    )
    if s.total < s.planned:
        text += f"\nunfinished: {s.planned - s.total} of its {s.planned} images are for the other shards to write"
    if s.damaged is not None:
        named = f" ({first_names(s.damaged)}), written again" if s.damaged else ""
        text += f"\nverified the files already present: {len(s.damaged)} damaged{named}"
    if s.empty:
        text += (f"\n{len(s.empty)} item{'s' * (len(s.empty) != 1)} found with an empty or missing file ({first_names(s.empty)}), "
                 "as a power loss leaves them: written again; --verify reads every file")
    if s.agreement is not None:
        text += f"\nthe encoder's predicted grade is the planned grade for {100 * s.agreement:.1f}% of the set"
    if s.generated:
        # Stages this run has not (queueing and nvjpeg off CUDA, nvjpeg for PNG) are left out.
        stages = ", ".join(f"{k} {1e3 * v / s.generated:.1f}" for k, v in s.stage_seconds.items() if v > 0)
        text += f"\nms per image: {stages}; bound by {s.bound}"
    return text
