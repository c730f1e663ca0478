"""Loaders: the PyTorch path, paired augmentation, and DALI giving the same batches."""
import numpy as np
import pytest
import torch

from drgan.data.dataset import FundusDataset, paired_augment
from drgan.data.loaders import make_loader
from drgan.data.phantom import write_phantom_dataset
from drgan.errors import DrganError



@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ld") / "ph", count=12, size=96, seed=5)


def test_dataset_contract(root):
    ds = FundusDataset(root, 64)
    item = ds[0]
    assert item["id"] == ds.ids[0] and item["image"].dtype == torch.float32 and item["image"].shape == (3, 64, 64)
    assert item["cond"].shape == (8, 64, 64) and item["cond"].min() >= 0 and item["cond"].max() <= 1
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["grade"].dtype == torch.int64 and item["grade"].ndim == 0 and int(item["grade"]) == ds.grades[0]
    # Masks are filtered like their image: thin structures survive as partial coverage, and the
    # area they cover is kept (a 96 -> 64 shrink of 0/255 masks).
    image, masks = ds.index.read_sample(ds.samples[0])
    assert len(torch.unique(item["cond"])) > 2
    covered = masks.reshape(-1, 8).mean(0) / 255 * (masks.shape[0] * masks.shape[1]) / 96**2
    assert np.allclose(item["cond"].mean(dim=(1, 2)).numpy(), covered, atol=0.02)
    train = FundusDataset(root, 64, split="train")
    assert 0 < len(train) < len(ds) and set(train.ids) < set(ds.ids)


def test_paired_augmentation_moves_image_and_masks_together():
    img = np.zeros((8, 8, 3), np.uint8)
    cond = np.zeros((8, 8, 2), np.uint8)
    img[1, 2] = 255
    cond[1, 2] = 255
    for s in range(8):
        a, c = paired_augment(img, cond, np.random.default_rng(s))
        assert np.array_equal(np.argwhere(a[..., 0]), np.argwhere(c[..., 0]))


def test_torch_loader_batches(root):
    loader = make_loader(root, 32, batch_size=5, shuffle=True, augment=True, seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert sum(len(b["id"]) for b in batches) == 12
    assert batches[0]["image"].shape == (5, 3, 32, 32) and batches[0]["cond"].shape == (5, 8, 32, 32)
    again = list(make_loader(root, 32, batch_size=5, shuffle=True, augment=True, seed=1))
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(batches, again))
    second = list(loader)     # next epoch: another order
    assert [b["id"] for b in second] != [b["id"] for b in batches]


def test_torch_loader_with_workers(root):
    batches = list(make_loader(root, 32, batch_size=6, workers=2))
    assert [i for b in batches for i in b["id"]] == FundusDataset(root, 32).ids


def test_bad_kind_and_bad_file_in_worker(root, tmp_path):
    with pytest.raises(DrganError, match="loader kind"):
        make_loader(root, 32, 4, kind="tf")
    import shutil
    bad = shutil.copytree(root, tmp_path / "bad")
    p = bad / "images" / "phantom_000003.png"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DrganError) as exc:
        list(make_loader(bad, 32, batch_size=4, workers=1))
    assert "phantom_000003.png" in str(exc.value) and "\n" not in str(exc.value)


def test_dali_missing_is_one_clear_error(root, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(DrganError, match=r"pip install drgan\[dali\]"):
        make_loader(root, 32, 4, kind="dali")


@pytest.mark.parametrize("augment", [False, True])
def test_dali_and_torch_give_equal_batches(root, augment):
    pytest.importorskip("nvidia.dali")
    kw = dict(batch_size=5, shuffle=augment, augment=augment, seed=2)
    ref = list(make_loader(root, 48, kind="torch", **kw))
    got = list(make_loader(root, 48, kind="dali", **kw))
    assert len(ref) == len(got) == 3
    for a, b in zip(ref, got):
        assert a["id"] == b["id"] and torch.equal(a["grade"], b["grade"])
        # Pillow's and DALI's antialiased bilinear filters round differently: about 0.1 levels on average.
        for key, scale in (("image", 2.0), ("cond", 1.0)):  # image in [-1, 1], cond in [0, 1]
            diff = (a[key] - b[key]).abs() / scale
            assert diff.mean() < 0.002 and diff.max() < 0.075, key


def test_dali_names_the_file_it_cannot_decode(root, tmp_path):
    """DALI's own error names neither the file nor the reason: the torch path's decoder does."""
    pytest.importorskip("nvidia.dali")
    import shutil

    broken = shutil.copytree(root, tmp_path / "ph")
    victim = sorted((broken / "images").iterdir())[7]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(DrganError) as err:
        list(make_loader(broken, 48, batch_size=4, kind="dali"))
    assert str(err.value) == f"{victim}: unreadable image (image file is truncated)"
