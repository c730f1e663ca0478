"""SWD: Laplacian pyramid against the reference's scipy formulation, independent of file names and order,
small for identical sets, grows with noise."""
import json

import numpy as np
import PIL.Image
import pytest
import scipy.ndimage
import torch
from click.testing import CliRunner
from skimage import data

from drgan.cli import cli
from drgan.cli.common import run_command
from drgan.errors import DrganError, ParameterError
from drgan.metrics.images import load_rgb, open_image_set
from drgan.metrics.swd import compute_swd, laplacian_pyramid, pyramid_levels

GAUSS = np.float32([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6], [4, 16, 24, 16, 4], [1, 4, 6, 4, 1]]) / 256


def _reference_pyramid(x, levels):
    """progressive_growing_of_gans metrics/sliced_wasserstein.py, numpy + scipy."""
    def down(m):
        return scipy.ndimage.convolve(m, GAUSS[None, None], mode="mirror")[:, :, ::2, ::2]

    def up(m):
        res = np.zeros((m.shape[0], m.shape[1], m.shape[2] * 2, m.shape[3] * 2), m.dtype)
        res[:, :, ::2, ::2] = m
        return scipy.ndimage.convolve(res, GAUSS[None, None] * 4.0, mode="mirror")

    pyramid = [np.float32(x)]
    for _ in range(1, levels):
        pyramid.append(down(pyramid[-1]))
        pyramid[-2] -= up(pyramid[-1])
    return pyramid


def test_laplacian_pyramid_matches_reference():
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 64, 64)).astype(np.float32)
    ours = laplacian_pyramid(torch.from_numpy(x), 3)
    ref = _reference_pyramid(x, 3)
    assert [o.shape[-1] for o in ours] == [64, 32, 16]
    for o, r in zip(ours, ref):
        np.testing.assert_allclose(o.numpy(), r, atol=1e-3)


def test_pyramid_levels():
    assert pyramid_levels(128) == [128, 64, 32, 16]
    assert pyramid_levels(1280) == [1280, 640, 320, 160, 80, 40, 20]


def _write(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        PIL.Image.fromarray(image).save(folder / f"{i:03d}.png")
    return open_image_set(folder)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("swd")
    rng = np.random.default_rng(0)
    base = np.asarray(PIL.Image.fromarray(data.retina()).resize((64, 64), PIL.Image.BOX)).astype(np.float32)
    crops = [np.roll(base, (int(dy), int(dx)), axis=(0, 1)) for dy, dx in rng.integers(-6, 7, (12, 2))]
    real = [c.astype(np.uint8) for c in crops]
    out = {"real": _write(root / "real", real), "copy": _write(root / "copy", real)}
    for sigma in (10, 40):
        noisy = [np.clip(c + rng.normal(0, sigma, c.shape), 0, 255).astype(np.uint8) for c in crops]
        out[sigma] = _write(root / f"noise{sigma}", noisy)
    return out


def test_swd_identical_sets_score_the_sampling_noise_and_noise_grows(sets):
    """Each set draws its own patch positions (as the reference does): two sets of the same images
    score above 0, and below even mildly noised images."""
    kw = dict(seed=3, progress=False)
    same = compute_swd(sets["real"], sets["copy"], **kw)
    assert list(same["swd_x1e3"]) == ["64", "32", "16"] and same["count"] == 12
    low = compute_swd(sets["real"], sets[10], **kw)
    high = compute_swd(sets["real"], sets[40], **kw)
    assert 0 < same["swd_x1e3_average"] < low["swd_x1e3_average"] < high["swd_x1e3_average"]
    assert low["swd_x1e3"]["64"] < high["swd_x1e3"]["64"]  # finest band carries the noise


def _renamed(folder, source, order):
    """The files of `source` under other names: file j of the new folder is file order[j] of source."""
    folder.mkdir()
    for j, i in enumerate(order):
        (folder / f"x{j:03d}.png").write_bytes(source.paths[i].read_bytes())
    return open_image_set(folder)


@pytest.mark.parametrize("max_images", [8192, 7])
def test_swd_does_not_depend_on_file_names_or_order(sets, tmp_path, max_images):
    """The same files under shuffled names give the same score, also when a subset is drawn; the old
    shared position stream paired image i of one set with image i of the other and did not."""
    order = np.random.default_rng(5).permutation(len(sets["real"]))
    shuffled_real = _renamed(tmp_path / "real", sets["real"], order)
    shuffled_noisy = _renamed(tmp_path / "noisy", sets[10], order[::-1])
    kw = dict(seed=4, progress=False, max_images=max_images)
    for real, fake in ((sets["real"], sets["copy"]), (sets["real"], sets[10])):
        base = compute_swd(real, fake, **kw)
        assert compute_swd(shuffled_real, fake, **kw)["swd_x1e3"] == base["swd_x1e3"]
        assert compute_swd(real, shuffled_noisy if fake is sets[10] else shuffled_real, **kw)["swd_x1e3"] == base["swd_x1e3"]


def test_swd_seed_stable(sets):
    a = compute_swd(sets["real"], sets[10], seed=7, progress=False)
    b = compute_swd(sets["real"], sets[10], seed=7, progress=False)
    c = compute_swd(sets["real"], sets[10], seed=8, progress=False)
    assert a["swd_x1e3"] == b["swd_x1e3"]
    assert a["swd_x1e3"] != c["swd_x1e3"]
    assert c["swd_x1e3_average"] == pytest.approx(a["swd_x1e3_average"], rel=0.5)  # same quantity, other draw


def test_cli_swd_json_and_text(sets):
    args = ["evaluate", "swd", "--real", str(sets["real"].root), "--fake", str(sets[40].root), "--device", "cpu",
            "--max-images", "8", "--resolution", "32"]
    result = CliRunner().invoke(cli, args + ["--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["count"] == 8 and r["resolution"] == 32 and list(r["swd_x1e3"]) == ["32", "16"]
    text = CliRunner().invoke(cli, args)
    assert text.stdout.strip().endswith(f"{r['swd_x1e3_average']:.4f}")


def _dataset(folder, images, grades):
    (folder / "images").mkdir(parents=True)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image).save(folder / "images" / f"{i:03d}.png")
    (folder / "labels.csv").write_text("id,grade\n" + "".join(f"{i:03d},{g}\n" for i, g in enumerate(grades)))
    return folder


def test_swd_per_grade_compares_each_grade_with_its_own(sets, tmp_path):
    """Grade 0 of the fake set is a copy of the real grade 0, grade 3 is noisy: grade 3 scores higher."""
    real = [np.asarray(PIL.Image.open(p)) for p in sets["real"].paths]
    noisy = [np.asarray(PIL.Image.open(p)) for p in sets[40].paths]
    grades = [0] * 6 + [3] * 6
    real_dir = _dataset(tmp_path / "real", real, grades)
    fake_dir = _dataset(tmp_path / "fake", real[:6] + noisy[6:], grades)
    r = compute_swd(open_image_set(real_dir), open_image_set(fake_dir), seed=1, progress=False, per_grade=True)
    assert r["grades_used"] == [0, 3] and r["per_grade"]["0"]["count"] == 6
    copy, noisy = (r["per_grade"][g]["swd_x1e3_average"] for g in ("0", "3"))
    assert 0 < copy < noisy
    assert r["swd_x1e3_grade_average"] == pytest.approx((copy + noisy) / 2)
    with pytest.raises(DrganError, match="dataset folder"):
        compute_swd(sets["real"], sets[40], progress=False, per_grade=True)
    args = ["evaluate", "swd", "--real", str(real_dir), "--fake", str(fake_dir), "--device", "cpu", "--seed", "1", "--per-grade"]
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert text.stdout.strip().endswith(f"(only grades 0,3 have >= 2 images in both sets): {r['swd_x1e3_grade_average']:.4f}")


def test_swd_per_grade_leaves_out_grades_of_one_image_as_a_whole_set_is_refused(sets, tmp_path):
    """As FID per grade: a grade with 1 image in either set is not compared (one image is a single
    sample); the average covers the others and says so, and no grade left is an error."""
    real = [np.asarray(PIL.Image.open(p)) for p in sets["real"].paths]
    real_dir = _dataset(tmp_path / "real", real, [0] * 6 + [3] * 6)
    fake_dir = _dataset(tmp_path / "fake", real[:7], [0] * 6 + [3])  # grade 3: one image
    r = compute_swd(open_image_set(real_dir), open_image_set(fake_dir), seed=1, progress=False, per_grade=True)
    assert r["grades_used"] == [0] and list(r["per_grade"]) == ["0"]
    assert r["swd_x1e3_grade_average"] == r["per_grade"]["0"]["swd_x1e3_average"]
    lone_dir = _dataset(tmp_path / "lone", real[:3], [0, 3, 4])
    with pytest.raises(DrganError, match="no grade has at least 2 images in both sets"):
        compute_swd(open_image_set(real_dir), open_image_set(lone_dir), progress=False, per_grade=True)


def test_swd_subset_of_one_image_is_refused(sets, capsys):
    with pytest.raises(ParameterError, match="^max_images 1: SWD needs at least 2 images per set$"):
        compute_swd(sets["real"], sets["copy"], max_images=1, progress=False)
    args = ["evaluate", "metrics", "--fake", str(sets["copy"].root), "--real", str(sets["real"].root), "--metrics", "swd",
            "--max-images", "1", "--device", "cpu"]
    assert run_command(cli, args=args, prog_name="drgan") == 1
    assert capsys.readouterr().err == "error: --max-images 1: outside the range x>=2\n"  # the option says its range


def test_16_bit_grayscale_scores_as_its_8_bit_pixels(sets, tmp_path):
    """Pillow's convert("RGB") clipped 16-bit pixels at 255: such a set scored like an unrelated one."""
    gray = [np.asarray(PIL.Image.open(p).convert("L")) for p in sets["real"].paths]
    gray8 = _write(tmp_path / "gray8", gray)
    copy8 = _write(tmp_path / "copy8", gray)
    gray16 = _write(tmp_path / "gray16", [g.astype(np.uint16) * 257 for g in gray])
    assert PIL.Image.open(gray16.paths[0]).mode == "I;16"
    for p8, p16 in zip(gray8.paths, gray16.paths):
        assert np.array_equal(load_rgb(p16), load_rgb(p8)) and np.array_equal(load_rgb(p16, 32), load_rgb(p8, 32))
    kw = dict(seed=3, progress=False)
    copy = compute_swd(gray8, copy8, **kw)["swd_x1e3_average"]
    assert compute_swd(gray8, gray16, **kw)["swd_x1e3_average"] == pytest.approx(copy, rel=0.25)  # sampling noise only


def test_patch_descriptors_are_128_7x7_neighbourhoods_per_image_at_every_valid_centre():
    """Each image gives 128 neighbourhoods, each the 7x7 block about its centre in all 3 channels;
    centres are uniform over every position whose block fits (3 .. side - 4 on both axes)."""
    from drgan.metrics.swd import patch_descriptors

    b, h, w = 40, 16, 16
    level = torch.arange(b * 3 * h * w, dtype=torch.float64).reshape(b, 3, h, w)
    desc = patch_descriptors(level, np.random.default_rng(0))
    assert desc.shape == (b * 128, 3, 7, 7)
    image, rest = np.divmod(desc[:, 0, 3, 3].numpy().astype(int), 3 * h * w)   # the centre's flat index
    ys, xs = np.divmod(rest, w)
    assert np.array_equal(np.bincount(image, minlength=b), np.full(b, 128))
    assert set(ys) == set(xs) == set(range(3, h - 3))
    for d, i, y, x in zip(desc, image, ys, xs):
        assert torch.equal(d, level[i, :, y - 3:y + 4, x - 3:x + 4])


def test_descriptors_are_standardised_per_colour_channel_over_the_set():
    """Each colour channel minus its mean and over its (population) std over all descriptors, as the
    reference's per-channel normalisation; flattened to 147 values."""
    from drgan.metrics.swd import normalize_descriptors

    rng = np.random.default_rng(1)
    desc = rng.normal((10.0, -5.0, 3.0), (1.0, 4.0, 0.5), (6, 7, 7, 3)).transpose(0, 3, 1, 2).copy()  # (6, 3, 7, 7)
    expected = np.stack([(desc[:, c] - desc[:, c].mean()) / desc[:, c].std() for c in range(3)], axis=1)
    out = normalize_descriptors(torch.from_numpy(desc)).numpy()
    assert out.shape == (6, 147)
    np.testing.assert_allclose(out, expected.reshape(6, 147), rtol=1e-10, atol=1e-10)


def test_sliced_wasserstein_is_the_mean_1d_wasserstein_over_4x128_unit_directions():
    """As the reference: 4 repeats of 128 Gaussian directions scaled to unit length, each scored by the
    1-D Wasserstein-1 distance of the two sets' projections (scipy.stats.wasserstein_distance)."""
    from scipy.stats import wasserstein_distance

    from drgan.metrics.swd import sliced_wasserstein

    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 147))
    b = rng.standard_normal((300, 147)) * 1.3 + 0.2
    got = sliced_wasserstein(torch.from_numpy(a), torch.from_numpy(b), np.random.default_rng(9))
    dirs_rng = np.random.default_rng(9)
    dists = []
    for _ in range(4):
        dirs = dirs_rng.standard_normal((147, 128))
        dirs /= np.linalg.norm(dirs, axis=0)
        dists += [wasserstein_distance(a @ d, b @ d) for d in dirs.T]
    assert got == pytest.approx(np.mean(dists), rel=1e-9)


def test_swd_reports_each_level_times_1e3_and_their_mean(sets, monkeypatch):
    """The paper's scale: each level's sliced distance times 1e3; the average is their mean."""
    from drgan.metrics import swd

    raw = []
    original = swd.sliced_wasserstein

    def recording(a, b, rng):
        raw.append(original(a, b, rng))
        return raw[-1]

    monkeypatch.setattr(swd, "sliced_wasserstein", recording)
    r = compute_swd(sets["real"], sets[40], seed=2, progress=False)
    assert len(raw) == 3
    assert list(r["swd_x1e3"].values()) == pytest.approx([1e3 * v for v in raw], rel=1e-12)
    assert r["swd_x1e3_average"] == pytest.approx(1e3 * float(np.mean(raw)), rel=1e-12)


def test_swd_resolution_defaults_to_the_first_fake_width_and_two_images_are_enough(sets, tmp_path):
    """A 32 x 24 (width x height) first fake image sets 32 px; a subset of 2 images per set is allowed."""
    wide = [np.asarray(PIL.Image.open(p).resize((32, 24), PIL.Image.BOX)) for p in sets["real"].paths[:3]]
    r = compute_swd(sets["real"], _write(tmp_path / "wide", wide), seed=1, progress=False)
    assert r["resolution"] == 32 and list(r["swd_x1e3"]) == ["32", "16"] and r["count"] == 3
    assert compute_swd(sets["real"], sets["copy"], max_images=2, progress=False)["count"] == 2


def test_load_rgb_resizes_by_area_averaging(tmp_path):
    """Each output pixel is the mean of the 2 x 2 block it covers (area resampling), to Pillow's
    fixed-point rounding (up to 1 level); a bilinear or nearest resize is further off."""
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    PIL.Image.fromarray(image).save(tmp_path / "a.png")
    blocks = image.reshape(4, 2, 4, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(load_rgb(tmp_path / "a.png", 4) - blocks).max() <= 1


def test_load_rgb_refuses_float_pixels_rather_than_clipping_them(tmp_path):
    """A 32-bit float image (mode F) has no 8-bit reading: refused, as drgan.data.decode refuses it."""
    PIL.Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "f.tif")
    assert PIL.Image.open(tmp_path / "f.tif").mode == "F"
    with pytest.raises(DrganError, match="unsupported pixel type float32"):
        load_rgb(tmp_path / "f.tif")
