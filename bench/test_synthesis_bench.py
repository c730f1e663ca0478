"""Synthesis throughput (images/s, end to end: conditions, generator, PNG encoding, writes) on CPU."""
import itertools
import os

import pytest

from drgan.synthesis.runner import SynthesisOptions, synthesize
from synthesis_fixtures import make_run


@pytest.mark.parametrize("name, count, batch", [("tiny-64", 40, 8), ("small-256", 10, 5)])
def test_synthesis_throughput(benchmark, tmp_path, name, count, batch):
    run = make_run(tmp_path / "run", preset_name=name)
    fresh = itertools.count()

    def synth():
        return synthesize(SynthesisOptions(checkpoint=str(run), out=str(tmp_path / f"out{next(fresh)}"), count=count,
                                           batch=batch, device="cpu", progress=False, threads=os.cpu_count() or 2))

    summary = benchmark.pedantic(synth, rounds=2, warmup_rounds=0)
    benchmark.extra_info.update(preset=name, images=count, batch=batch, images_per_second=round(summary.images_per_second, 2))
    assert summary.generated == count
