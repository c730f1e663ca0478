"""Condition fidelity: the AUC is near 1 where the image shows its masks, 0.5 where it ignores them."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from drgan.cli import cli
from drgan.cli.common import run_command
from drgan.config import COND_CHANNELS
from drgan.data.phantom import write_phantom_dataset
from drgan.errors import DrganError
from drgan.metrics.fidelity import (
    condition_fidelity, contrast_scores, dataset_fidelity, fidelity_above_chance, roc_auc, tensor_fidelity,
)

SIZE = 64


def _scene(rng: np.random.Generator, show: float) -> tuple[np.ndarray, np.ndarray]:
    """A noisy fundus-coloured disc with vessel lines, red dots and bright dots in its masks; the
    image darkens / brightens them by `show` (0: the image ignores its masks; < 0: inverted)."""
    image = np.zeros((SIZE, SIZE, 3), np.float32) + (200, 90, 40)
    image += rng.normal(0, 6, image.shape)
    masks = np.zeros((len(COND_CHANNELS), SIZE, SIZE), np.uint8)
    vessel, red, bright = (masks[COND_CHANNELS.index(n)] for n in ("vessel", "he", "ex"))
    for row in rng.integers(12, 52, 3):
        vessel[row, 10:54] = 255
    for name, plane in (("red", red), ("bright", bright)):
        for r, c in rng.integers(14, 50, (4, 2)):
            plane[r:r + 2, c:c + 2] = 255
    image[vessel > 0, 1] -= 40 * show
    image[red > 0, 1] -= 40 * show
    image[bright > 0, 1] += 40 * show
    return np.clip(image, 0, 255).astype(np.uint8), masks


def test_auc_is_one_where_masks_show_half_where_ignored_and_below_when_inverted():
    rng = np.random.default_rng(0)
    for show, low, high in ((1.0, 0.9, 1.0), (0.0, 0.4, 0.6), (-1.0, 0.0, 0.1)):
        result = condition_fidelity(_scene(rng, show) + (2,) for _ in range(4))
        assert set(result["overall"]) == {"vessel", "red_lesion", "bright_lesion"}
        for name, auc in result["overall"].items():
            assert low <= auc <= high, (show, name, auc)
        assert result["images"] == 4 and list(result["per_grade"]) == [2]


def test_roc_auc_and_fraction_of_reference():
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5  # ties count half
    assert fidelity_above_chance({"vessel": 0.7, "ex": 0.9}, {"vessel": 0.9}) == pytest.approx({"vessel": 0.5})
    # A reference at chance gives no scale: 0.501 turned 0.687 into 187 times the real data's.
    assert fidelity_above_chance({"vessel": 0.687, "ex": 0.7}, {"vessel": 0.501, "ex": 0.6}) == pytest.approx({"ex": 2.0})


def test_absent_groups_are_left_out_and_bad_shapes_refused():
    image, masks = _scene(np.random.default_rng(1), 1.0)
    masks[COND_CHANNELS.index("he")] = 0
    assert set(contrast_scores(image, masks)) == {"vessel", "bright_lesion"}
    with pytest.raises(DrganError, match="masks have shape"):
        contrast_scores(image, masks[:, :32])
    with pytest.raises(DrganError, match="no images"):
        condition_fidelity([])


def test_tensor_fidelity_matches_uint8_path():
    image, masks = _scene(np.random.default_rng(2), 1.0)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    c = torch.from_numpy(masks)[None].float() / 255
    assert tensor_fidelity(x, c, [3]) == condition_fidelity([(image, masks, 3)])


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid") / "p"
    write_phantom_dataset(root, 15, 128, seed=0)
    return root


def test_real_phantoms_show_their_masks(phantoms):
    result = dataset_fidelity(phantoms, resolution=64)
    assert result["images"] == 15
    assert result["overall"]["vessel"] > 0.9
    assert result["overall"]["red_lesion"] > 0.9 and result["overall"]["bright_lesion"] > 0.9


def test_cli_fidelity_json_with_reference(phantoms, capsys):
    args = ["evaluate", "fidelity", "--fake", str(phantoms), "--real", str(phantoms), "--resolution", "64", "--json"]
    assert run_command(cli, args=args, prog_name="drgan") == 0
    result = json.loads(capsys.readouterr().out)
    split = []
    for spelling in (["--fake", "--real", "--real-split"], ["--data", "--reference", "--reference-split"]):  # and the former
        fake, real, real_split = spelling
        assert run_command(cli, args=["evaluate", "fidelity", fake, str(phantoms), real, str(phantoms), real_split, "train",
                                      "--resolution", "64", "--json"], prog_name="drgan") == 0
        split.append(json.loads(capsys.readouterr().out))
    assert split[0] == split[1] and split[0]["fidelity_reference"]["images"] < result["fidelity_reference"]["images"]
    assert result["fidelity"] == result["fidelity_reference"]
    assert result["fraction_of_reference"] == pytest.approx({"vessel": 1.0, "red_lesion": 1.0, "bright_lesion": 1.0})
    assert run_command(cli, args=["evaluate", "fidelity", "--data", str(phantoms / "images")], prog_name="drgan") == 1
    assert capsys.readouterr().err.startswith("error: ")
    for name in ("--run", "--model"):  # the former spellings of --grader, as README lists them
        assert run_command(cli, args=["evaluate", "fidelity", "--data", str(phantoms), name, str(phantoms / "none")],
                           prog_name="drgan") == 1
        assert "does not exist" in capsys.readouterr().err


def test_a_set_without_masks_is_refused_not_reported_empty(phantoms, tmp_path, capsys):
    """A set synthesized without --save-masks: every mask reads as zeros, so nothing can be measured."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(phantoms, bare)
    shutil.rmtree(bare / "masks")
    args = ["evaluate", "fidelity", "--fake", str(bare), "--real", str(phantoms), "--resolution", "64"]
    assert run_command(cli, args=args, prog_name="drgan") == 1
    assert capsys.readouterr().err == (f"error: {bare}: no condition mask in its images: condition fidelity "
                                       "needs masks/<id>/<name>.png (a synthesized set: drgan synthesize --save-masks)\n")
    # Mask files there, but each covering the whole image: no ring around any mask to compare with.
    full = tmp_path / "full"
    shutil.copytree(phantoms, full)
    for mask in (full / "masks").rglob("*.png"):
        Image.fromarray(np.full((128, 128), 255, np.uint8)).save(mask)
    assert run_command(cli, args=[a.replace(str(bare), str(full)) for a in args], prog_name="drgan") == 1
    assert capsys.readouterr().err == (f"error: {full}: no condition mask with both covered and uncovered pixels in the 15 "
                                       "image(s) measured (each is empty or covers the whole image): fidelity compares the two\n")


def test_real_split_without_real_is_refused_not_ignored(phantoms, capsys):
    for spelling in ("--real-split", "--reference-split"):
        args = ["evaluate", "fidelity", "--fake", str(phantoms), spelling, "test", "--resolution", "64"]
        assert run_command(cli, args=args, prog_name="drgan") == 2  # an option that needs another: usage
        assert capsys.readouterr().err == "error: --real-split 'test' is a split of --real: give --real too\n"


def test_a_device_without_a_grader_is_refused_not_ignored(phantoms, capsys):
    args = ["evaluate", "fidelity", "--fake", str(phantoms), "--resolution", "64", "--device", "cpu"]
    assert run_command(cli, args=args, prog_name="drgan") == 2
    assert capsys.readouterr().err == "error: --device is the grading device: add --grader (fidelity itself runs on the CPU)\n"
    args[-1] = "auto"  # the default, as a script passing one --device to every evaluate command gives it
    assert run_command(cli, args=args, prog_name="drgan") == 0, capsys.readouterr().err
