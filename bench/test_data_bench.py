"""Data benchmarks: phantom rendering rate and loader throughput (PyTorch vs DALI), on this machine.

Each entry's extra_info holds images_per_s. The load average of the machine during the run is
recorded too: on a shared 2-core machine it changes the wall-clock numbers several-fold.

    python -m pytest bench/test_data_bench.py --benchmark-json=bench/results/data.json
"""
import os
import shutil

import pytest

from drgan.data.loaders import make_loader
from drgan.data.phantom import render_phantom, write_phantom_dataset

N_PHANTOM = 50          # images per round at 256 px; rate = N_PHANTOM / mean time
N_LOADER = 64           # dataset size for the loader rounds


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("bench") / "ph", count=N_LOADER, size=512, seed=0)


def test_phantom_render_256(benchmark):
    benchmark.extra_info.update(images_per_round=N_PHANTOM, load_average_1min=os.getloadavg()[0],
                                cpu_count=os.cpu_count())
    benchmark.pedantic(lambda: [render_phantom(256, i % 5, i) for i in range(N_PHANTOM)], rounds=3, iterations=1)
    benchmark.extra_info["images_per_s"] = N_PHANTOM / benchmark.stats.stats.mean


@pytest.mark.parametrize("workers", [0, 2])
def test_phantom_write_dataset_256(benchmark, tmp_path, workers):
    counter = iter(range(1000))
    count = N_PHANTOM * max(1, workers)

    def run():
        out = tmp_path / f"ph{next(counter)}"
        write_phantom_dataset(out, count, 256, 0, workers=workers)
        shutil.rmtree(out)

    benchmark.extra_info.update(images_per_round=count, workers=workers)
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["images_per_s"] = count / benchmark.stats.stats.mean


@pytest.mark.parametrize("kind,workers", [("torch", 0), ("torch", 2), ("dali", 2)])
def test_loader_throughput_512_to_256(benchmark, dataset, kind, workers):
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
    loader = make_loader(dataset, 256, batch_size=16, kind=kind, workers=workers)
    benchmark.extra_info.update(images_per_round=N_LOADER, source_px=512, resolution=256, workers=workers)
    benchmark.pedantic(lambda: sum(len(b["id"]) for b in loader), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = N_LOADER / benchmark.stats.stats.mean
