"""Dataset format: the validator and the readers on every kind of bad input."""
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from drgan.cli import cli
from drgan.config import COND_CHANNELS
from drgan.data.dataset import FundusDataset
from drgan.data.format import open_dataset
from drgan.data.validation import validate_dataset
from drgan.data.phantom import write_phantom_dataset
from drgan.errors import DrganError
from helpers import copy_dataset, rows, write_rows


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ds") / "clean", count=5, size=96, seed=1)


def add_label(root, sid, grade):
    r = rows(root)
    r.append([sid, str(grade), "train"])
    write_rows(root, r)


def test_clean_dataset_validates(clean, tmp_path):
    report = validate_dataset(clean)
    assert report.problems == [] and report.ok == 5 and report.grades == {g: 1 for g in range(5)}
    assert "\nsplits: train: 5\n" in report.render()
    no_split = copy_dataset(clean, tmp_path / "no_split")
    write_rows(no_split, [r[:2] for r in rows(clean)])
    assert "\nsplits: none given: 5 (split 90/10 into train/val by a hash of the id's patient)\n" in validate_dataset(no_split).render()



def test_the_report_names_patients_whose_eyes_lie_in_different_splits(clean, tmp_path):
    ds = copy_dataset(clean, tmp_path / "eyes")
    header, *body = rows(ds)
    names = ["3_left", "3_RIGHT", "4_left", "4_right", "5"]
    splits = ["train", "test", "val", "val", ""]
    for (sid, *_), name in zip(body, names):
        (ds / "images" / f"{sid}.png").rename(ds / "images" / f"{name}.png")
        (ds / "masks" / sid).rename(ds / "masks" / name)
    write_rows(ds, [header] + [[n, r[1], sp] for n, r, sp in zip(names, body, splits)])
    report = validate_dataset(ds)
    assert report.problems == [] and report.apart == ["3"]
    assert "\npatients with images in more than one split (1): 3\n" in report.render()
    assert validate_dataset(clean).apart == [] and "patients with" not in validate_dataset(clean).render()

def test_the_report_counts_mask_files_and_says_when_there_are_none(clean, tmp_path):
    """A dataset without masks/ is a valid grader dataset, but the GAN has nothing to draw from:
    the report says so instead of passing it without a word."""
    report = validate_dataset(clean)
    assert report.masks == {c: 5 for c in COND_CHANNELS}
    assert "\nmask files: vessel: 5, disc: 5, ma: 5," in report.render()
    bare = copy_dataset(clean, tmp_path / "bare")
    shutil.rmtree(bare / "masks")
    (bare / "masks").mkdir()
    shutil.copytree(clean / "masks" / "phantom_000000", bare / "masks" / "phantom_000000")
    (bare / "masks" / "phantom_000000" / "disc.png").unlink()
    assert validate_dataset(bare).masks == {c: int(c != "disc") for c in COND_CHANNELS}
    shutil.rmtree(bare / "masks")
    report = validate_dataset(bare)
    assert report.problems == [] and report.to_dict()["masks"] == {c: 0 for c in COND_CHANNELS}
    assert "\nmask files: none (a grader trains without them; `drgan train gan` needs vessel masks)\n" in report.render()


def test_a_0_1_mask_is_a_problem_faint_shrunk_lesions_are_not(clean, tmp_path):
    """Label maps store lesions as 1: read as 1/255 coverage, the GAN saw nearly no lesion. A mask
    shrunk a lot (`data import --size 64` of a 2848 px release) leaves small lesions as scattered
    pixels of 1: those are the file's true coverage."""
    root = copy_dataset(clean, tmp_path / "m01")
    path = next((root / "masks").glob("*/vessel.png"))
    label = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
    Image.fromarray(label).save(path)
    assert validate_dataset(root).problems == [f"{path}: a 0/1 mask (its largest value is 1), which reads as nearly empty: "
                                               "store covered pixels as 255 (drgan data import does)"]
    speck = np.zeros_like(label)
    speck[3:60:4, 3:60:6] = 1       # 150 isolated faint pixels
    speck[10:12, 20:22] = 1         # and a 2x2 clump
    Image.fromarray(speck).save(path)
    assert validate_dataset(root).problems == []


def test_a_split_no_row_has_says_how_to_give_one(clean, tmp_path):
    """`train grader` on a dataset without val rows said only 'no usable samples in split 'val''."""
    root = copy_dataset(clean, tmp_path / "no_val")   # every row is train
    with pytest.raises(DrganError) as err:
        open_dataset(root, split="val")
    assert str(err.value) == (f"{root}: no usable samples in split 'val' (no row of labels.csv has it, given or by the "
                              "90/10 train/val split by patient of rows without one: give it to some rows)")
    with pytest.raises(DrganError, match=r"in split 'test' \(no row of labels.csv has it: give it to some rows; rows "
                                         r"without one are train or val\)$"):
        open_dataset(root, split="test")


def test_a_test_split_of_rows_without_splits_is_one_error_line(clean, tmp_path, capsys):
    """Rows without a split are never test: the note on how they are hashed into train and val is
    not printed before the error (a synthesized set, whose rows have none, asked for its test split)."""
    root = copy_dataset(clean, tmp_path / "unsplit")
    rows = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("id,grade\n" + "".join(",".join(r.split(",")[:2]) + "\n" for r in rows[1:]))
    with pytest.raises(DrganError, match=r"in split 'test' \(no row of labels.csv has it"):
        open_dataset(root, split="test")
    assert capsys.readouterr().err == ""
    open_dataset(root, split="train")
    assert capsys.readouterr().err.startswith(f"note: {root / 'labels.csv'}: rows without a split are split 90/10 into train/val")


def test_a_dataset_without_one_usable_sample_lists_every_problem(clean, tmp_path):
    """Every labels.csv row broken: the report lists each problem (it gave one line naming the
    first); a labels.csv of its header alone is a problem too."""
    root = copy_dataset(clean, tmp_path / "bad")
    write_rows(root, [rows(root)[0]] + [[f"{sid}.png", grade, split] for sid, grade, split in rows(root)[1:]])
    report = validate_dataset(root)
    assert report.ok == 0 and len(report.problems) >= 10  # per row: an id with a suffix; per image: no row
    assert report.checked == 5  # the bad rows are rows of labels.csv all the same
    assert report.render().startswith(f"dataset {root}: 0 usable samples of 5 rows in labels.csv\n")
    assert sum("phantom_00000" in p and ".png.png" not in p for p in report.problems) >= 5
    write_rows(root, [rows(root)[0]])
    for folder in ("images", "masks"):
        shutil.rmtree(root / folder)
    (root / "images").mkdir()
    assert validate_dataset(root).problems == [f"{root}: no usable samples"]


# Each case: (name, how to break a copy of the clean dataset, text in the problem line).
def _truncated(root):
    p = root / "images" / "phantom_000001.png"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return "phantom_000001.png"


def _tiny(root):
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(root / "images" / "tiny.png")
    add_label(root, "tiny", 0)
    return "too small"


def declared_png(path, width, height):
    """A small PNG whose header (IHDR) declares width x height: a decompression bomb's shape."""
    import struct
    import zlib
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)      # IHDR fields follow the signature and chunk head
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _bomb(root):
    declared_png(root / "images" / "bomb.png", 30000, 30000)
    add_label(root, "bomb", 0)
    return "bomb.png: image too large"


def _large(root):
    declared_png(root / "images" / "large.png", 9000, 9000)   # under Pillow's own limit, over drgan's
    add_label(root, "large", 0)
    return "large.png: image too large (9000x9000 px"


def _fifo_mask(root):
    import os
    path = root / "masks" / "phantom_000002" / "ma.png"
    path.unlink(missing_ok=True)
    os.mkfifo(path)     # opening it for reading would wait forever for a writer
    return "ma.png: is a named pipe, not a regular file"


def _mask_mismatch(root):
    Image.fromarray(np.zeros((50, 70), np.uint8)).save(root / "masks" / "phantom_000002" / "he.png")
    return "he.png: mask is 70x50 px but its image is 96x96"


def _mask_without_image(root):
    (root / "masks" / "ghost").mkdir()
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(root / "masks" / "ghost" / "vessel.png")
    return "ghost: masks without an image"


def _missing_label(root):
    write_rows(root, [r for r in rows(root) if r[0] != "phantom_000003"])
    return "phantom_000003.png: no row in labels.csv"


def _grade7(root):
    write_rows(root, [r if r[0] != "phantom_000004" else [r[0], "7", r[2]] for r in rows(root)])
    return "grade 7 of 'phantom_000004' is outside 0..4"


def _duplicate_row(root):
    r = rows(root)
    write_rows(root, r + [r[1]])
    return "duplicate id 'phantom_000000'"


def _duplicate_file(root):
    Image.open(root / "images" / "phantom_000000.png").save(root / "images" / "phantom_000000.jpg")
    return "duplicate id 'phantom_000000'"


BAD = [_truncated, _tiny, _bomb, _large, _fifo_mask, _mask_mismatch, _mask_without_image, _missing_label, _grade7, _duplicate_row, _duplicate_file]


@pytest.mark.timeout(30)   # a reader blocked on a named pipe fails instead of hanging the suite
@pytest.mark.parametrize("breaker", BAD, ids=lambda f: f.__name__[1:])
def test_bad_input_is_named_stopped_or_skipped(clean, tmp_path, breaker):
    root = copy_dataset(clean, tmp_path / "ds")
    expected = breaker(root)
    report = validate_dataset(root)
    assert any(expected in p for p in report.problems), report.problems
    assert report.ok >= 3
    # A reader stops at the first bad file with one line naming it (decoding pixels at load time).
    with pytest.raises(DrganError) as exc:
        ds = FundusDataset(root, 64)
        for i in range(len(ds)):
            ds[i]
    assert "\n" not in str(exc.value) and expected.split(":")[0] in str(exc.value)
    # With skip_bad it completes and counts.
    ds = FundusDataset(root, 64, skip_bad=True)
    assert ds.skipped >= 1 and len(ds) == report.ok
    assert all(torch.isfinite(ds[i]["image"]).all() for i in range(len(ds)))
    # The CLI: non-zero exit listing the problem; --skip-bad completes.
    res = CliRunner().invoke(cli, ["data", "validate", str(root)])
    assert res.exit_code != 0 and expected in res.output
    res = CliRunner().invoke(cli, ["data", "validate", str(root), "--skip-bad"])
    assert res.exit_code == 0 and "skipped" in res.output


@pytest.mark.timeout(30)
def test_labels_file_that_is_a_named_pipe_is_one_clear_error(clean, tmp_path):
    import os
    root = copy_dataset(clean, tmp_path / "ds")
    (root / "labels.csv").unlink()
    os.mkfifo(root / "labels.csv")
    with pytest.raises(DrganError, match="labels.csv: is a named pipe, not a regular file"):
        open_dataset(root)


def test_an_id_too_long_for_the_csv_module_names_labels_csv_and_its_line(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    add_label(root, "x" * 200_000, 0)
    line = len(rows(clean)) + 1
    with pytest.raises(DrganError, match=f"labels.csv:{line}: unreadable CSV row"):
        open_dataset(root, skip_bad=True)
    res = CliRunner().invoke(cli, ["data", "validate", str(root)])
    assert res.exit_code == 1 and f"labels.csv:{line}: unreadable CSV row" in res.output
    assert "Traceback" not in res.output and "x" * 100 not in res.output


@pytest.mark.parametrize("sid, reason", [("y" * 300, "is 300 bytes long (at most 200"),
                                         ("a\x01b", "holds a control character")])
def test_ids_that_cannot_name_files_are_problems(clean, tmp_path, sid, reason):
    root = copy_dataset(clean, tmp_path / "ds")
    add_label(root, sid, 0)
    report = validate_dataset(root)
    assert report.ok == 5 and len(report.problems) == 1 and reason in report.problems[0], report.problems


def test_missing_labels_file_is_one_clear_error(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    (root / "labels.csv").unlink()
    with pytest.raises(DrganError, match="labels.csv: labels file not found"):
        open_dataset(root, skip_bad=True)
    res = CliRunner().invoke(cli, ["data", "validate", str(root)])
    assert res.exit_code != 0


def test_a_folder_of_images_given_as_a_dataset_is_named_as_given(clean, tmp_path):
    """Not its missing images/ subfolder, a path the user never typed."""
    with pytest.raises(DrganError) as err:
        open_dataset(clean / "images")
    assert str(err.value) == (f"{clean / 'images'}: not a dataset folder (images/ and labels.csv, masks/ optional); "
                              "it holds images itself: give the dataset folder above it")
    with pytest.raises(DrganError) as err:
        open_dataset(tmp_path)
    assert str(err.value) == f"{tmp_path}: not a dataset folder (images/ and labels.csv, masks/ optional)"
    shutil.copy(clean / "images" / "phantom_000000.png", tmp_path / "a.png")   # loose images, no dataset above
    with pytest.raises(DrganError) as err:
        open_dataset(tmp_path)
    assert str(err.value).endswith("it holds images itself: a dataset keeps them in images/ beside labels.csv (id,grade[,split])")


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_convertible_images_are_converted_and_reported(clean, tmp_path, mode):
    root = copy_dataset(clean, tmp_path / "ds")
    path = root / "images" / "phantom_000002.png"
    rgb = np.asarray(Image.open(path))
    if mode == "I;16":
        gray = rgb.mean(axis=2).astype(np.uint16) * 257
        Image.fromarray(gray).save(path)
        note = "16-bit converted to 8-bit"
    elif mode == "RGBA":
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(path)
        note = "alpha channel dropped"
    elif mode == "L":
        Image.fromarray(rgb.mean(axis=2).astype(np.uint8)).save(path)
        note = "grayscale converted to RGB"
    else:
        Image.fromarray(rgb).convert("P").save(path)
        note = "palette converted to RGB"
    report = validate_dataset(root)
    assert report.problems == [] and report.ok == 5
    assert any(note in n and "phantom_000002" in n for n in report.notes)
    ds = FundusDataset(root, 64)
    x = ds[ds.ids.index("phantom_000002")]["image"]
    assert x.shape == (3, 64, 64) and x.min() >= -1 and x.max() <= 1
    if mode in ("L", "I;16"):
        assert torch.allclose(x[0], x[1]) and torch.allclose(x[1], x[2])


def test_non_square_photograph_is_cropped_to_the_field_of_view(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    path = root / "images" / "phantom_000001.png"
    img = np.asarray(Image.open(path))
    wide = np.zeros((96, 160, 3), np.uint8)
    wide[:, 20:116] = img                      # FOV off-centre in a wide black frame
    Image.fromarray(wide).save(path)
    mdir = root / "masks" / "phantom_000001"
    for m in mdir.iterdir():
        a = np.asarray(Image.open(m))
        w = np.zeros((96, 160), np.uint8)
        w[:, 20:116] = a
        Image.fromarray(w).save(m)
    report = validate_dataset(root)
    assert report.problems == [] and any("non-square 160x96" in n for n in report.notes)
    ds = FundusDataset(root, 96)
    i = ds.ids.index("phantom_000001")
    got = ds[i]["image"]
    ref = FundusDataset(clean, 96)[i]["image"]
    assert (got - ref).abs().mean() < 0.02     # the crop recovers the original framing
