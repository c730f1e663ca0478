"""Batches of {"id", "image", "cond", "grade"}: a PyTorch DataLoader path and an NVIDIA DALI pipeline.

Both deliver the same tensors for the same samples: image float32 (B, 3, R, R) in [-1, 1], cond
float32 (B, 8, R, R) in [0, 1] (COND_CHANNELS order), grade int64 (B,), id list[str]. The DALI
pipeline decodes, finds the field-of-view box (largest bright region), crops it to a padded
square and resizes with DALI operators (CPU-only with device=None; with device="cuda" the
geometry and normalisation run on the GPU); it is optional (`pip install drgan[dali]`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from drgan.config import COND_CHANNELS
from drgan.data.dataset import FundusDataset
from drgan.data.decode import open_image, read_mask, read_rgb
from drgan.io import encode_png
from drgan.data.preprocess import FOV_THRESHOLD
from drgan.errors import DrganError
from drgan.runtime import epoch_seed

KINDS = ("torch", "dali")


def collate(items: list[dict]) -> dict:
    return {
        "id": [it["id"] for it in items],
        "image": torch.stack([it["image"] for it in items]),
        "cond": torch.stack([it["cond"] for it in items]),
        "grade": torch.stack([it["grade"] for it in items]),
    }


def epoch_order(n: int, shuffle: bool, key: int) -> list[int]:
    """Sample order of the epoch `key` (`epoch_seed`): both loader kinds use it, so they visit
    samples identically."""
    if not shuffle:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(key)).tolist()


class _EpochLoader:
    """A DataLoader whose sampler order and augmentations are fixed by (seed, epoch)."""

    def __init__(self, dataset: FundusDataset, batch_size: int, shuffle: bool, workers: int, seed: int,
                 drop_last: bool) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.workers = workers
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        key = epoch_seed(self.seed, self.epoch)
        self.dataset.set_epoch(key)
        self.epoch += 1
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=epoch_order(len(self.dataset), self.shuffle, key),
                            num_workers=self.workers, collate_fn=collate, drop_last=self.drop_last,
                            pin_memory=torch.cuda.is_available(), persistent_workers=False)
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except DrganError as exc:  # from a worker it carries the worker's traceback: keep its last line
                last = str(exc).strip().splitlines()[-1]
                raise DrganError(last.split("DrganError: ", 1)[-1]) from None
            yield batch


def make_loader(root: str | Path, resolution: int, batch_size: int, kind: str = "torch", split: str | None = None,
                shuffle: bool = False, augment: bool = False, workers: int = 0, seed: int = 0,
                drop_last: bool = False, skip_bad: bool = False, device: str | None = None):
    """An iterable of batches over a dataset folder (re-iterable: each pass is one epoch).

    kind "torch" uses a DataLoader with `workers` processes and pinned memory on CUDA machines;
    kind "dali" a DALI pipeline with `workers` threads, on the CPU unless device is "cuda".
    """
    if kind not in KINDS:
        raise DrganError(f"loader kind {kind!r} is not one of {', '.join(KINDS)}")
    if batch_size < 1:
        raise DrganError(f"batch size {batch_size} must be at least 1")
    dataset = FundusDataset(root, resolution, split=split, augment=augment, skip_bad=skip_bad)
    if kind == "torch":
        return _EpochLoader(dataset, batch_size, shuffle, workers, seed, drop_last)
    return DaliLoader(dataset, batch_size, shuffle, augment, max(1, workers), seed, drop_last, device)


# ---------------------------------------------------------------------------------------------
# DALI

def _import_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise DrganError("the DALI loader needs NVIDIA DALI: pip install drgan[dali]") from None
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    return fn, dmath, types, pipeline_def


def _png_kind(data: np.ndarray) -> tuple[int, int] | None:
    """(bit depth, colour type) of PNG bytes, None for other formats."""
    if data[:8].tobytes() != b"\x89PNG\r\n\x1a\n" or len(data) < 26:
        return None
    return int(data[24]), int(data[25])


def _encode(arr: np.ndarray) -> np.ndarray:
    return np.frombuffer(encode_png(arr, compress_level=0), np.uint8)


class DaliLoader:
    """Batches from a DALI pipeline fed by an external source (encoded files, in epoch order)."""

    def __init__(self, dataset: FundusDataset, batch_size: int, shuffle: bool, augment: bool, threads: int,
                 seed: int, drop_last: bool, device: str | None) -> None:
        self.fn, self.dmath, self.types, self.pipeline_def = _import_dali()
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.threads = threads
        self.seed = seed
        self.drop_last = drop_last
        self.gpu = device is not None and str(device).startswith("cuda")
        self.epoch = 0
        self._zeros: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def _n_inputs(self) -> int:
        """Encoded image, 8 encoded masks, and (with augment) quarter turns and flip."""
        return 1 + len(COND_CHANNELS) + (2 if self.augment else 0)

    def _image_bytes(self, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        with open_image(path) as img:
            size = img.size[::-1]
            mode = img.mode
        data = np.fromfile(path, np.uint8)
        plain = mode == "RGB" and (_png_kind(data) in (None, (8, 2)))
        if not plain:   # grayscale, alpha, palette, 16-bit: convert exactly as the torch path does
            data = _encode(read_rgb(path)[0])
        return data, size

    def _mask_bytes(self, sample, name: str, size: tuple[int, int]) -> np.ndarray:
        path = sample.masks.get(name)
        if path is None:
            if size not in self._zeros:
                self._zeros[size] = _encode(np.zeros(size, np.uint8))
            return self._zeros[size]
        data = np.fromfile(path, np.uint8)
        if _png_kind(data) != (8, 0):
            data = _encode(read_mask(path, size)[0])
        return data

    def _batches(self, order: np.ndarray, key: int) -> Iterator[list[np.ndarray]]:
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                return
            cols: list[list[np.ndarray]] = [[] for _ in range(self._n_inputs)]
            for i in idx:
                sample = self.dataset.samples[i]
                data, size = self._image_bytes(sample.image)
                cols[0].append(data)
                for k, name in enumerate(COND_CHANNELS):
                    cols[1 + k].append(self._mask_bytes(sample, name, size))
                if self.augment:  # the (epoch, index) stream of FundusDataset: identical augmentations
                    rng = np.random.default_rng([key, int(i)])
                    cols[-2].append(np.array(rng.integers(0, 4), np.int32))
                    cols[-1].append(np.array(rng.integers(0, 2), np.int32))
            yield cols

    def _pipeline(self, source: Iterator):
        fn, dmath, types = self.fn, self.dmath, self.types
        R = self.dataset.resolution

        @self.pipeline_def(batch_size=self.batch_size, num_threads=self.threads, device_id=0 if self.gpu else None,
                           exec_dynamic=True, prefetch_queue_depth=2)
        def pipe():
            inputs = fn.external_source(source=source, num_outputs=self._n_inputs, batch=True)
            enc, menc = inputs[0], inputs[1:1 + len(COND_CHANNELS)]
            k90, flip = inputs[-2:] if self.augment else (None, None)
            # Decoding stays on the CPU because the largest-region box operator (the FOV) is
            # CPU-only; with a GPU, cropping, resizing and normalising run on the device.
            img = fn.decoders.image(enc, device="cpu", output_type=types.RGB)
            bright = fn.reductions.max(img, axes=[2]) > FOV_THRESHOLD
            anchor, shape = fn.segmentation.random_object_bbox(bright, format="anchor_shape", foreground_prob=1.0,
                                                               k_largest=1, seed=0)
            side = dmath.max(shape[0], shape[1])
            start = anchor - (side - shape) // 2      # centred square window, padded outside the image
            square = shape - shape + side
            cond = fn.cat(*[fn.decoders.image(m, device="cpu", output_type=types.GRAY) for m in menc], axis=2)
            if self.gpu:
                img, cond = img.gpu(), cond.gpu()

            def geometry(x, interp):
                x = fn.slice(x, start, square, axis_names="HW", out_of_bounds_policy="pad", fill_values=0)
                x = fn.resize(x, size=[R, R], interp_type=interp, antialias=interp != types.INTERP_NN)
                if self.augment:   # np.rot90(k) then a left-right flip, as in paired_augment
                    x = fn.rotate(x, angle=fn.cast(k90, dtype=types.FLOAT) * 90.0, interp_type=types.INTERP_NN,
                                  keep_size=True, fill_value=0)
                    x = fn.flip(x, horizontal=flip)
                return x

            img = geometry(img, types.INTERP_LINEAR)
            cond = geometry(cond, types.INTERP_LINEAR)  # masks filtered as their image (preprocess.resize_mask)
            img = fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW", mean=[127.5] * 3, std=[127.5] * 3)
            cond = fn.crop_mirror_normalize(cond, dtype=types.FLOAT, output_layout="CHW", mean=[0.0] * 8, std=[255.0] * 8)
            return img, cond

        p = pipe()
        p.build()
        return p

    def __iter__(self) -> Iterator[dict]:
        key = epoch_seed(self.seed, self.epoch)
        order = np.asarray(epoch_order(len(self.dataset), self.shuffle, key), np.int64)
        self.epoch += 1
        pipe = self._pipeline(self._batches(order, key))
        grades = np.asarray(self.dataset.grades)
        ids = self.dataset.ids
        device = torch.device("cuda") if self.gpu else None
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            try:
                img, cond = pipe.run()
            except RuntimeError as exc:
                raise self._decode_error(order[start:start + 3 * self.batch_size], exc) from None
            yield {
                "id": [ids[i] for i in idx],
                "image": _to_torch(img, device),
                "cond": _to_torch(cond, device),
                "grade": torch.as_tensor(grades[idx], dtype=torch.int64),
            }

    def _decode_error(self, indices: np.ndarray, exc: RuntimeError) -> DrganError:
        """DALI's error names neither the file nor (on its first line) the reason: decode the
        files of this batch and of the two it has prefetched as the torch path does, and name the
        first that fails."""
        for i in indices:
            try:
                self.dataset.index.read_sample(self.dataset.samples[i])
            except DrganError as culprit:
                return culprit
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or ["?"]
        # DALI's message: "Error in CPU operator ... (the pipeline's traceback) encountered: REASON ..."
        reason = lines[lines.index("encountered:") + 1] if "encountered:" in lines[:-1] else lines[-1]
        names = ", ".join(str(self.dataset.samples[i].image) for i in indices[:self.batch_size])
        return DrganError(f"DALI could not decode a batch of {names}: {reason}")


def _to_torch(tl, device) -> torch.Tensor:
    if device is None:
        return torch.from_numpy(np.array(tl.as_tensor()))
    from nvidia.dali.plugin.pytorch import feed_ndarray
    t = tl.as_tensor()
    out = torch.empty(t.shape(), dtype=torch.float32, device=device)
    feed_ndarray(t, out)
    return out
