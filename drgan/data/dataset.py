"""The PyTorch `Dataset` over the dataset format: preprocessed, paired image and condition tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from drgan.data.format import open_dataset
from drgan.data.preprocess import crop_and_resize
from drgan.errors import DrganError


def paired_augment(image: np.ndarray, cond: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random flip and quarter-turn rotation for an image (H, W, 3) and its masks (H, W, K)."""
    k = int(rng.integers(0, 4))
    flip = bool(rng.integers(0, 2))
    out = []
    for a in (image, cond):
        a = np.rot90(a, k, axes=(0, 1))
        out.append(a[:, ::-1] if flip else a)
    return out[0], out[1]


def to_tensors(image: np.ndarray, cond: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (H, W, 3) and (H, W, 8) -> float32 image (3, H, W) in [-1, 1], cond (8, H, W) in [0, 1]."""
    x = torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1).div_(127.5).sub_(1.0)
    c = torch.from_numpy(np.array(cond, np.float32)).permute(2, 0, 1).div_(255.0)
    return x.contiguous(), c.contiguous()


class FundusDataset(Dataset):
    """Samples of a dataset folder at `resolution`: {"id", "image", "cond", "grade"}.

    Images are cropped to the field of view, padded square and resized; masks follow the same
    geometry. Bad input raises DrganError naming the file, or with skip_bad is left out and
    counted in `.skipped` (every file is then decoded once when the dataset is opened).
    """

    def __init__(
        self,
        root: str | Path,                 # dataset folder (images/, masks/, labels.csv)
        resolution: int,                  # output side in pixels
        split: str | None = None,         # "train" | "val" | "test"; None = every sample
        augment: bool = False,            # random paired flips and quarter turns
        skip_bad: bool = False,           # leave bad samples out (counted) instead of stopping
    ) -> None:
        if resolution < 8:
            raise DrganError(f"resolution {resolution} is too small")
        self.index = open_dataset(root, skip_bad=skip_bad, split=split)
        self.resolution = resolution
        self.augment = augment
        self.samples = self.index.samples
        self.ids = [s.id for s in self.samples]
        self.grades = [s.grade for s in self.samples]
        self.skipped = self.index.skipped
        self.problems = self.index.problems
        self._epoch_seed = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, key: int) -> None:
        """Augmentations depend on (key, index) only, so runs are reproducible with any worker count;
        the trainers and loaders key an epoch by its run's seed too (`runtime.epoch_seed`)."""
        self._epoch_seed = int(key)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed uint8 image (R, R, 3) and masks (R, R, 8) of sample i, before augmentation."""
        image, masks = self.index.read_sample(self.samples[i])
        return crop_and_resize(image, masks, self.resolution)

    def __getitem__(self, i: int) -> dict:
        image, cond = self.load(i)
        if self.augment:
            image, cond = paired_augment(image, cond, np.random.default_rng([self._epoch_seed, i]))
        x, c = to_tensors(image, cond)
        return {"id": self.ids[i], "image": x, "cond": c, "grade": torch.tensor(self.grades[i], dtype=torch.int64)}

