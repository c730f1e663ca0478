"""Synthesis throughput on CPU: end to end (conditions, generator, encoding, writes) at small
presets, and the host side alone at paper-1280 (null backend, bench/synthesis_host.py)."""
import itertools
import os

import pytest

from drgan.synthesis.runner import SynthesisOptions, synthesize
from drgan.synthesis.structures import StructurePool
from synthesis_fixtures import make_run
from synthesis_host import BATCH, PRESET, SIZE


@pytest.mark.parametrize("name, count, batch", [("tiny-64", 40, 8), ("small-256", 10, 5)])
def test_synthesis_throughput(benchmark, tmp_path, name, count, batch):
    run = make_run(tmp_path / "run", preset_name=name)
    fresh = itertools.count()

    def synth():
        return synthesize(SynthesisOptions(run=str(run), out=str(tmp_path / f"out{next(fresh)}"), count=count,
                                           batch=batch, device="cpu", progress=False, threads=os.cpu_count() or 2))

    summary = benchmark.pedantic(synth, rounds=2, warmup_rounds=0)
    benchmark.extra_info.update(preset=name, images=count, batch=batch, images_per_second=round(summary.images_per_second, 2))
    assert summary.generated == count


@pytest.fixture(scope="module")
def rendered_pool():
    pool = StructurePool.phantom(SIZE, 0)   # the pool the runner uses for seed 0
    for j in range(len(pool)):
        pool.geometry(j)
    return pool


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_host_side_null_backend_paper_1280(benchmark, tmp_path, rendered_pool, fmt):
    fresh, count = itertools.count(), 64

    def synth():
        return synthesize(SynthesisOptions(run=None, preset=PRESET, backend="null", out=str(tmp_path / f"out{next(fresh)}"),
                                           count=count, batch=BATCH, format=fmt, device="cpu", progress=False,
                                           threads=os.cpu_count() or 2))

    summary = benchmark.pedantic(synth, rounds=2, warmup_rounds=0)
    benchmark.extra_info.update(preset=PRESET, format=fmt, images=count, batch=BATCH, bound=summary.bound,
                                images_per_second=round(summary.generated / summary.pipeline_seconds, 2),
                                stage_ms_per_image=summary.to_dict()["stage_ms_per_image"])
    assert summary.generated == count
