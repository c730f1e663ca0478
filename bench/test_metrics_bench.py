"""FID feature extraction rate on this machine's CPU (Inception at 299 px, float32), and what KID
and PRDC cost on 2048-d features once they are extracted.

    python -m pytest bench/test_metrics_bench.py --benchmark-json=bench/results/metrics.json
"""
import numpy as np
import PIL.Image
import pytest
import torch
from skimage import data

from drgan.metrics.fid import FEATURE_DIM, extract_features, load_inception, preprocess
from drgan.metrics.kid import SUBSET_SIZE, polynomial_mmd2
from drgan.metrics.prdc import prdc

N_IMAGES = 8   # images per round
BATCH = 8


@pytest.fixture(scope="module")
def net():
    return load_inception("cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fidbench")
    retina = PIL.Image.fromarray(data.retina()).resize((512, 512), PIL.Image.BOX)
    paths = []
    for i in range(N_IMAGES):
        paths.append(folder / f"{i}.png")
        retina.rotate(45 * i).save(paths[-1])
    return paths


def test_fid_features_from_png_512(benchmark, net, files):
    """End to end: decode 512 px PNGs, resize to 299, Inception forward."""
    benchmark.extra_info.update(images_per_round=N_IMAGES, batch=BATCH, source_px=512, threads=torch.get_num_threads())
    benchmark.pedantic(lambda: extract_features(files, net, batch=BATCH, progress=False), rounds=3, iterations=1,
                       warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = N_IMAGES / benchmark.stats.stats.mean


def test_fid_network_only_299(benchmark, net):
    """The Inception forward alone on a preprocessed (B, 3, 299, 299) batch."""
    x = preprocess([np.zeros((299, 299, 3), np.uint8)] * BATCH, torch.device("cpu"))
    benchmark.extra_info.update(images_per_round=BATCH, threads=torch.get_num_threads())

    def run():
        with torch.inference_mode():
            return net(x)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.mean


def _features(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, FEATURE_DIM)).astype(np.float32)


def test_kid_one_subset_pair(benchmark):
    """One of KID's subsets (default: 100 of them) at its default size: three 1000 x 1000 kernels."""
    real, fake = _features(SUBSET_SIZE, 0), _features(SUBSET_SIZE, 1)
    benchmark.extra_info.update(rows=SUBSET_SIZE, dim=FEATURE_DIM, threads=torch.get_num_threads())
    benchmark.pedantic(lambda: polynomial_mmd2(real, fake), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("rows", [2000, 5000])
def test_prdc(benchmark, rows):
    """PRDC of two sets of `rows` features (time grows with the square; default cap 10,000)."""
    real, fake = _features(rows, 0), _features(rows, 1)
    benchmark.extra_info.update(rows=rows, dim=FEATURE_DIM, threads=torch.get_num_threads())
    benchmark.pedantic(lambda: prdc(real, fake), rounds=3, iterations=1, warmup_rounds=1)
