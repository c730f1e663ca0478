"""Data path at its edges: tensor conversion, FOV box and square crop, resizing, decoding of unusual
pixel types, loader epochs and drop_last, and DALI agreeing with the torch path on unusual files."""
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from drgan.config import COND_CHANNELS, MIN_SIDE
from drgan.data.dataset import to_tensors
from drgan.data.decode import MAX_PIXELS, open_image, pixels_to_uint8, read_mask, read_rgb
from drgan.data.loaders import make_loader
from drgan.data.phantom import write_phantom_dataset
from drgan.data.preprocess import (FOV_THRESHOLD, MIN_CONTRAST, check_has_content, crop_and_resize, crop_square,
                                   detect_fov, fov_box, resize_image, square_window)
from drgan.errors import DrganError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("edges") / "ph", count=6, size=96, seed=5)


# ------------------------------------------------------------------------------------------------
# to_tensors


def test_to_tensors_maps_levels_to_their_ranges_and_keeps_rgb_and_row_column_order():
    image = np.zeros((2, 3, 3), np.uint8)          # non-square: rows and columns cannot be confused
    image[..., 0] = 255
    image[..., 2] = 51
    image[1, 2] = (0, 255, 102)
    cond = np.zeros((2, 3, 8), np.uint8)
    cond[0, 1, 3] = 255
    cond[1, 2, 7] = 51
    x, c = to_tensors(image, cond)
    assert x.shape == (3, 2, 3) and c.shape == (8, 2, 3)
    assert x.dtype == torch.float32 and c.dtype == torch.float32
    # (level / 127.5) - 1: 0 -> -1, 255 -> 1, 51 -> -0.6, 102 -> -0.2
    assert x[0, 0, 0] == 1.0 and x[1, 0, 0] == -1.0 and torch.isclose(x[2, 0, 0], torch.tensor(-0.6))
    assert x[0, 1, 2] == -1.0 and x[1, 1, 2] == 1.0 and torch.isclose(x[2, 1, 2], torch.tensor(-0.2))
    # level / 255: 255 -> 1, 51 -> 0.2
    assert c[3, 0, 1] == 1.0 and torch.isclose(c[7, 1, 2], torch.tensor(0.2)) and c.sum() == pytest.approx(1.2)


# ------------------------------------------------------------------------------------------------
# FOV box, square window, crop


def test_fov_box_takes_levels_above_the_threshold_only():
    image = np.full((40, 60, 3), FOV_THRESHOLD, np.uint8)        # a surround at the threshold is not FOV
    image[5:15, 10:40] = FOV_THRESHOLD + 1
    assert fov_box(image) == (5, 10, 10, 30)                     # (top, left, height, width)
    assert FOV_THRESHOLD == 20


def test_fov_box_is_the_largest_region_not_the_first_or_brightest():
    image = np.zeros((40, 60, 3), np.uint8)
    image[1:3, 1:3] = 255              # a bright speck (a camera's text) first in raster order
    image[20:40, 20:60, 1] = 200
    assert fov_box(image) == (20, 20, 20, 40)


def test_fov_box_of_an_image_without_a_bright_pixel_is_the_whole_image():
    assert fov_box(np.zeros((10, 20, 3), np.uint8)) == (0, 0, 10, 20)


@pytest.mark.parametrize("box, window", [((10, 20, 30, 50), (0, 20, 50)),
                                         ((10, 20, 50, 30), (10, 10, 50)),
                                         ((3, 4, 5, 8), (2, 4, 8))])
def test_square_window_is_centred_on_the_box_with_its_longer_side(box, window):
    assert square_window(box) == window


def test_crop_square_zero_pads_where_the_window_leaves_the_array():
    arr = np.arange(1, 13, dtype=np.uint8).reshape(3, 4)
    assert crop_square(arr, (-1, 1, 4)).tolist() == [[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]]
    assert crop_square(arr, (1, -2, 3)).tolist() == [[0, 0, 5], [0, 0, 9], [0, 0, 0]]
    rgb = np.stack([arr, arr + 20, arr + 40], axis=2)
    assert crop_square(rgb, (-1, 1, 4))[1, 0].tolist() == [2, 22, 42]


def test_crop_and_resize_keeps_masks_on_their_image_pixels_in_a_non_square_photograph():
    image = np.zeros((40, 70, 3), np.uint8)
    image[5:25, 30:60] = 100            # FOV box: top 5, left 30, 20 x 30 -> window (0, 30, 30)
    image[8:12, 33:37] = 250            # a lesion
    masks = np.zeros((40, 70, len(COND_CHANNELS)), np.uint8)
    masks[5:25, 30:60, 0] = 255
    masks[8:12, 33:37, 3] = 255
    img, m = crop_and_resize(image, masks, 30)
    assert img.shape == (30, 30, 3) and m.shape == (30, 30, len(COND_CHANNELS))
    rows, cols = np.nonzero(m[..., 3])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 11, 3, 6)
    assert (img[8:12, 3:7] == 250).all() and (m[..., 0] > 0).sum() == 20 * 30
    assert np.array_equal(m[..., 0] > 0, img.max(axis=2) > 0)
    # Shrunk, image and masks share one footprint (same window, same filter).
    img, m = crop_and_resize(image, masks, 15)
    assert np.array_equal(m[..., 0] > 0, img.max(axis=2) > 0)
    assert np.array_equal(m[..., 3] > 0, img[..., 0] > 100)


# ------------------------------------------------------------------------------------------------
# detect_fov, check_has_content, resizing


def test_detect_fov_fills_holes_and_takes_everything_when_nothing_is_bright():
    image = np.zeros((30, 30, 3), np.uint8)
    image[5:25, 5:25] = 200
    image[12:16, 12:16] = 0               # a dark lesion inside the field of view
    fov = detect_fov(image)
    assert fov[12:16, 12:16].all() and fov.sum() == 400
    assert detect_fov(np.zeros((8, 12, 3), np.uint8)).all()


def test_check_has_content_refuses_less_than_min_contrast_levels():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = MIN_CONTRAST - 1
    with pytest.raises(DrganError, match="one flat colour"):
        check_has_content(image, "x")
    image[:, 32:] = MIN_CONTRAST
    check_has_content(image, "x")


def test_resize_image_is_pillows_bilinear_and_always_square():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(image).resize((37, 37), Image.Resampling.BILINEAR))
    assert np.array_equal(resize_image(image, 37), want)
    assert resize_image(rng.integers(0, 256, (64, 100, 3), dtype=np.uint8), 64).shape == (64, 64, 3)


# ------------------------------------------------------------------------------------------------
# Decoding


def test_16_bit_pixels_keep_their_high_byte():
    values = [0, 255, 256, 511, 32768, 65535]
    high = [0, 0, 1, 1, 128, 255]
    for dtype in (np.uint16, np.int32):           # Pillow gives 16-bit files as either
        notes = []
        got = pixels_to_uint8(np.array(values, dtype), "f.png", notes)
        assert got.dtype == np.uint8 and got.tolist() == high and notes == ["f.png: 16-bit converted to 8-bit"]


def test_a_16_bit_grayscale_file_reads_as_its_high_byte_in_three_equal_channels(tmp_path):
    gray = np.tile(np.array([0, 255, 256, 511, 32768, 65535], np.uint16), (MIN_SIDE, 11))
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb, notes = read_rgb(tmp_path / "g.png")
    want = (gray >> 8).astype(np.uint8)
    assert rgb.shape == gray.shape + (3,) and all(np.array_equal(rgb[..., k], want) for k in range(3))
    assert any("16-bit converted" in n for n in notes)


def test_an_8_bit_grayscale_file_reads_as_three_copies_of_itself(tmp_path):
    gray = np.random.default_rng(1).integers(0, 256, (MIN_SIDE, MIN_SIDE + 7), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb, _ = read_rgb(tmp_path / "g.png")
    assert np.array_equal(rgb, np.stack([gray] * 3, axis=2))


def test_bilevel_pixels_read_as_0_and_255(tmp_path):
    assert pixels_to_uint8(np.array([True, False]), "f", []).tolist() == [255, 0]
    bits = np.zeros((MIN_SIDE, MIN_SIDE), bool)
    bits[:, :10] = True
    Image.fromarray(bits).save(tmp_path / "b.png")
    rgb, _ = read_rgb(tmp_path / "b.png")
    assert set(np.unique(rgb)) == {0, 255} and (rgb[:, :10] == 255).all()
    mask, _ = read_mask(tmp_path / "b.png", (MIN_SIDE, MIN_SIDE))
    assert mask.dtype == np.uint8 and (mask[:, :10] == 255).all() and (mask[:, 10:] == 0).all()


@pytest.mark.parametrize("arr", [np.zeros(3, np.float32), np.array([-1, 5], np.int32), np.array([70000], np.int32),
                                 np.zeros(3, np.int16)], ids=["float32", "negative", "over-16-bit", "int16"])
def test_other_pixel_types_are_refused(arr):
    with pytest.raises(DrganError, match=f"^f.png: unsupported pixel type {arr.dtype}$"):
        pixels_to_uint8(arr, "f.png", [])


def test_a_colour_mask_reads_as_the_maximum_of_its_colour_channels(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2, 3, 1] = 255                 # green only
    rgb[4, 5] = (10, 90, 40)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    mask, notes = read_mask(tmp_path / "rgb.png", (8, 8))
    assert mask[2, 3] == 255 and mask[4, 5] == 90 and mask.sum() == 345 and "reduced to one channel" in notes[0]
    la = Image.fromarray(np.full((8, 8), 100, np.uint8)).convert("LA")     # alpha 255 is no coverage
    la.save(tmp_path / "la.png")
    assert (read_mask(tmp_path / "la.png", (8, 8))[0] == 100).all()


def test_a_mask_of_another_size_than_its_image_is_refused(tmp_path):
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DrganError, match=r"m.png: mask is 10x8 px but its image is 8x8$"):
        read_mask(tmp_path / "m.png", (8, 8))


def test_an_image_too_small_on_one_side_is_refused(tmp_path):
    Image.fromarray(np.full((MIN_SIDE - 1, 4 * MIN_SIDE, 3), 128, np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(DrganError, match=f"too small \\({4 * MIN_SIDE}x{MIN_SIDE - 1} px"):
        read_rgb(tmp_path / "thin.png")


def _declared_png(path, width, height):
    """A small PNG whose header declares width x height."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_an_image_of_exactly_max_pixels_opens_one_more_row_does_not(tmp_path):
    _declared_png(tmp_path / "at.png", 10_000, MAX_PIXELS // 10_000)
    with open_image(tmp_path / "at.png") as img:
        assert img.size == (10_000, MAX_PIXELS // 10_000)
    _declared_png(tmp_path / "over.png", 10_000, MAX_PIXELS // 10_000 + 1)
    with pytest.raises(DrganError, match="image too large"):
        open_image(tmp_path / "over.png")


# ------------------------------------------------------------------------------------------------
# Torch loader: epochs, seeds, drop_last


def test_augmentations_change_from_one_epoch_to_the_next(root):
    loader = make_loader(root, 16, batch_size=6, augment=True, seed=3)
    first, second = next(iter(loader)), next(iter(loader))
    assert first["id"] == second["id"]
    # 8 orientations: the odds that all 6 samples repeat theirs by chance are 8**-6.
    assert any(not torch.equal(a, b) for a, b in zip(first["image"], second["image"]))


def test_runs_with_other_seeds_do_not_replay_each_others_epochs(root):
    def orders(seed, epochs):
        loader = make_loader(root, 8, batch_size=6, shuffle=True, seed=seed)
        return [[i for b in loader for i in b["id"]] for _ in range(epochs)]
    seen = [tuple(o) for seed in range(3) for o in orders(seed, 3)]
    assert len(set(seen)) == len(seen)          # 9 orders of 6 ids; by chance a repeat has odds ~5%: seeds fixed


def test_drop_last_leaves_out_the_partial_batch(root):
    loader = make_loader(root, 8, batch_size=4, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 1 and len(batches[0]["id"]) == 4
    assert len(make_loader(root, 8, batch_size=4)) == 2


def test_a_batch_size_under_one_is_refused(root):
    with pytest.raises(DrganError, match="batch size 0 must be at least 1"):
        make_loader(root, 8, batch_size=0)


# ------------------------------------------------------------------------------------------------
# DALI against the torch path


def _write_png16_rgb(path, arr):
    """A 16-bit RGB PNG (Pillow cannot write one): filter-0 rows, big-endian samples."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _reframe(root, sid, rows, surround):
    """Put rows `rows` of a sample's 96x96 image and masks off-centre in a 150-wide frame of level
    `surround`; two of its masks left out."""
    p = root / "images" / f"{sid}.png"
    img = np.asarray(Image.open(p))[rows]
    wide = np.full((img.shape[0], 150, 3), surround, np.uint8)
    wide[:, 10:106] = np.maximum(img, surround)
    Image.fromarray(wide).save(p)
    for m in (root / "masks" / sid).iterdir():
        if m.stem in ("laser", "membrane"):
            m.unlink()
            continue
        w = np.zeros((img.shape[0], 150), np.uint8)
        w[:, 10:106] = np.asarray(Image.open(m))[rows]
        Image.fromarray(w).save(m)


@pytest.fixture(scope="module")
def unusual(root, tmp_path_factory):
    """The phantom set (FOV box: the whole 96x96 image) with
    phantom_000001: rows 16-79 only, in a wide black frame (FOV box 64x96: its square reaches outside), 2 masks missing;
    phantom_000002: its vessel mask stored as RGB, covered pixels green;
    phantom_000003: stored as 16-bit RGB (each level v as 256 v + 255);
    phantom_000004: in a wide frame of level FOV_THRESHOLD, its own dark pixels raised to it, 2 masks missing."""
    out = shutil.copytree(root, tmp_path_factory.mktemp("unusual") / "ds")
    _reframe(out, "phantom_000001", slice(16, 80), 0)
    _reframe(out, "phantom_000004", slice(0, 96), FOV_THRESHOLD)
    m = out / "masks" / "phantom_000002" / "vessel.png"
    a = np.asarray(Image.open(m))
    rgb = np.zeros(a.shape + (3,), np.uint8)
    rgb[..., 1] = a
    Image.fromarray(rgb).save(m)
    p = out / "images" / "phantom_000003.png"
    _write_png16_rgb(p, np.asarray(Image.open(p)).astype(np.uint16) * 256 + 255)
    return out


def _assert_close(ref, got):
    assert [b["id"] for b in ref] == [b["id"] for b in got]
    for a, b in zip(ref, got):
        for key, scale in (("image", 2.0), ("cond", 1.0)):   # Pillow and DALI round about 0.1 levels apart
            for sid, x, y in zip(a["id"], a[key], b[key]):
                diff = (x - y).abs() / scale
                assert diff.mean() < 0.002 and diff.max() < 0.075, (key, sid, float(diff.mean()))


def _pillow_sample(root, sid, side):
    """Image and masks of a sample whose FOV box is its whole square image, as Pillow resizes them, in [-1, 1] and [0, 1]."""
    def shrink(arr):
        return np.asarray(Image.fromarray(arr).resize((side, side), Image.Resampling.BILINEAR)).astype(np.float32)
    image = np.asarray(Image.open(root / "images" / f"{sid}.png")).copy()
    masks = [np.asarray(Image.open(root / "masks" / sid / f"{n}.png")).copy() for n in COND_CHANNELS]
    if sid == "phantom_000001":
        for a in [image] + masks:
            a[:16] = 0
            a[80:] = 0
    if sid == "phantom_000004":
        image = np.maximum(image, FOV_THRESHOLD)
    if sid in ("phantom_000001", "phantom_000004"):
        masks[COND_CHANNELS.index("laser")][:] = 0
        masks[COND_CHANNELS.index("membrane")][:] = 0
    x = torch.from_numpy(shrink(image)).permute(2, 0, 1) / 127.5 - 1
    c = torch.from_numpy(np.stack([shrink(m) for m in masks])) / 255
    return x, c


def test_the_unusual_files_read_as_their_plain_counterparts(unusual, root):
    from drgan.data.dataset import FundusDataset
    got = FundusDataset(unusual, 32)
    for i, sid in enumerate(got.ids):
        x, c = _pillow_sample(root, sid, 32)
        assert torch.allclose(got[i]["image"], x, atol=1e-6) and torch.allclose(got[i]["cond"], c, atol=1e-6), sid


@pytest.mark.parametrize("augment", [False, True])
def test_dali_and_torch_agree_on_unusual_files(unusual, augment):
    pytest.importorskip("nvidia.dali")
    kw = dict(batch_size=3, shuffle=augment, augment=augment, seed=2)
    _assert_close(list(make_loader(unusual, 32, kind="torch", **kw)), list(make_loader(unusual, 32, kind="dali", **kw)))


def test_dali_epochs_follow_the_torch_epochs_and_solid_masks_read_1(root):
    pytest.importorskip("nvidia.dali")
    kw = dict(batch_size=3, shuffle=True, augment=True, seed=4)
    torch_loader, dali_loader = make_loader(root, 32, kind="torch", **kw), make_loader(root, 32, kind="dali", **kw)
    epochs = []
    for _ in range(2):
        ref, got = list(torch_loader), list(dali_loader)
        _assert_close(ref, got)
        epochs.append([i for b in got for i in b["id"]])
        assert max(float(b["cond"].max()) for b in got) == 1.0      # 255 / 255, as in the torch path
        assert min(float(b["image"].min()) for b in got) == -1.0
    assert epochs[0] != epochs[1]


def test_dali_drop_last_leaves_out_the_partial_batch(root):
    pytest.importorskip("nvidia.dali")
    loader = make_loader(root, 16, batch_size=4, kind="dali", drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 1 and len(batches[0]["id"]) == 4
    assert len(make_loader(root, 16, batch_size=4, kind="dali")) == 2


def test_a_resolution_under_8_is_refused(root):
    from drgan.data.dataset import FundusDataset
    with pytest.raises(DrganError, match="resolution 7 is too small"):
        FundusDataset(root, 7)
    assert FundusDataset(root, 8)[0]["image"].shape == (3, 8, 8)


def test_dali_and_torch_find_one_fov_box_for_a_region_joined_at_a_corner(tmp_path):
    """Two parts that touch at a corner only are two regions on both paths (DALI joins by edges)."""
    pytest.importorskip("nvidia.dali")
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    image = np.zeros((64, 96, 3), np.uint8)
    image[:40, :40] = 200                  # the larger part
    image[40:, 40:] = 120                  # touching it at one corner only
    assert fov_box(image) == (0, 0, 40, 40)
    Image.fromarray(image).save(root / "images" / "a.png")
    (root / "labels.csv").write_text("id,grade,split\na,0,train\n")
    _assert_close(list(make_loader(root, 16, batch_size=1)), list(make_loader(root, 16, batch_size=1, kind="dali")))


def test_rows_without_a_split_go_to_val_when_their_ids_sha256_falls_in_the_first_tenth(root, tmp_path):
    import hashlib
    out = tmp_path / "ds"
    (out / "images").mkdir(parents=True)
    ids = ["eye0", "eye2"]
    tenth = [int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") < 2**64 // 10 for s in ids]
    assert tenth == [False, True]
    for sid, src in zip(ids, sorted((root / "images").iterdir())):
        shutil.copy(src, out / "images" / f"{sid}.png")
    (out / "labels.csv").write_text("id,grade\neye0,0\neye2,1\n")
    from drgan.data.format import open_dataset
    assert [s.id for s in open_dataset(out, split="val").samples] == ["eye2"]
    assert [s.id for s in open_dataset(out, split="train").samples] == ["eye0"]
    assert [s.id for s in open_dataset(out).samples] == ids


def test_extracted_masks_have_the_size_of_a_non_square_photograph():
    from skimage import data
    from drgan.data.masks import extract_structure
    photo = np.ascontiguousarray(data.retina()[::2, ::2][40:640])      # 600 x 706: worked on at 512 px
    st = extract_structure(photo)
    assert all(st[k].shape == photo.shape[:2] for k in ("vessel", "disc", "fov"))
