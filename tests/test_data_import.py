"""`drgan data import`: fixture trees in each release's layout, imported and checked channel by
channel and label by label. Each lesion type is drawn at its own place with anti-aliased edges
(255 inside, 200 on the first ring: positive; 60 on the second: negative), so a channel mix-up,
a wrong threshold or a lost mask fails a comparison."""
import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from drgan.cli import cli
from drgan.config import COND_CHANNELS
from drgan.data.decode import read_mask, read_rgb
from drgan.data.validation import validate_dataset
from helpers import dead_pid
from drgan.data.importers import import_release
from drgan.data.importers.core import Item, binarize, carve_splits, parse_grade
from drgan.data.labels import patients_apart
from drgan.data.preprocess import crop_and_resize
from drgan.errors import DrganError

H, W = 96, 128          # non-square photographs: the importer crops to the field of view
SIZE = 80
# Where each lesion type is drawn: (row, col), radius. IRMA has no channel and must vanish.
SHAPES = {"ma": ((30, 60), 2), "he": ((60, 84), 4), "ex": ((38, 92), 3), "se": ((66, 50), 4),
          "nv": ((24, 76), 3), "irma": ((72, 70), 3), "od": ((48, 40), 8)}
CHANNEL = {"ma": "ma", "he": "he", "ex": "ex", "se": "se", "nv": "membrane", "od": "disc"}


def fundus(seed: int) -> np.ndarray:
    """A black surround, an orange field of view, a bright optic disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.float64)
    img[np.hypot(yy - 48, xx - 64) <= 44] = (170, 80, 40)
    img[np.hypot(yy - 48, xx - 40) <= 8] = (240, 210, 160)
    img += rng.normal(0, 3, img.shape) * (img > 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def drawn(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(mask values with anti-aliased edges, the pixels that must count as positive)."""
    (r, c), rad = SHAPES[kind]
    yy, xx = np.mgrid[0:H, 0:W]
    d = np.hypot(yy - r, xx - c)
    values = np.where(d <= rad, 255, np.where(d <= rad + 1, 200, np.where(d <= rad + 2, 60, 0))).astype(np.uint8)
    return values, d <= rad + 1


def save_mask(path, kind: str, mode: str) -> None:
    """mode: "L", "RGB" (equal channels, FGADR) or "red" (IDRiD: the lesion in the red channel only)."""
    values = drawn(kind)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.fromarray(values).save(path)
    elif mode == "RGB":
        Image.fromarray(np.repeat(values[..., None], 3, axis=2)).save(path)
    else:
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[..., 0] = values
        Image.fromarray(rgb).save(path)


def save_image(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(fundus(seed)).save(path, **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}))


def expected_masks(image_path, kinds) -> dict[str, np.ndarray]:
    """The channels an import must give: the known shapes through the readers' crop, pad and resize."""
    image = read_rgb(image_path)[0]
    stack = np.zeros((H, W, len(COND_CHANNELS)), np.uint8)
    for kind in kinds:
        if kind in CHANNEL:
            stack[..., COND_CHANNELS.index(CHANNEL[kind])] = drawn(kind)[1] * 255
    return {n: crop_and_resize(image, stack, SIZE)[1][..., k] for k, n in enumerate(COND_CHANNELS)}


def labels(out) -> dict[str, tuple[int, str]]:
    with open(out / "labels.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "grade", "split"]
    return {r[0]: (int(r[1]), r[2]) for r in rows[1:]}


def written(out, sid: str, channel: str) -> np.ndarray:
    path = out / "masks" / sid / f"{channel}.png"
    return read_mask(path)[0] if path.is_file() else np.zeros((SIZE, SIZE), np.uint8)


def check_channels(out, sid: str, image_path, kinds, channels=("ma", "he", "ex", "se", "laser", "membrane")) -> None:
    expect = expected_masks(image_path, kinds)
    for ch in channels:
        got = written(out, sid, ch)
        assert np.array_equal(got, expect[ch]), (sid, ch, int((got > 0).sum()), int((expect[ch] > 0).sum()))
    assert any(expect[ch].any() for ch in channels) == any(written(out, sid, ch).any() for ch in channels)


def run_import(*args):
    res = CliRunner().invoke(cli, ["data", "import", *map(str, args)])
    return res, res.output


# ---------------------------------------------------------------- FGADR

FGADR_DIRS = {"ma": "Microaneurysms_Masks", "he": "Hemohedge_Masks", "ex": "HardExudate_Masks",
              "se": "SoftExudate_Masks", "irma": "IRMA_Masks", "nv": "Neovascularization_Masks"}
# id: (file name, grade, lesion kinds with a mask file, mask mode)
FGADR = {"0001_1": ("0001_1.png", 0, (), "L"),
         "0002_1": ("0002_1.png", 2, ("ma", "he", "ex"), "RGB"),
         "0003_2": ("0003_2.PNG", 3, ("ma", "ex", "se", "irma"), "L"),     # upper-case extension; no HE file
         "0004_3": ("0004_3.png", 4, ("ma", "he", "ex", "se", "nv", "irma"), "RGB")}


@pytest.fixture(scope="module")
def fgadr(tmp_path_factory):
    root = tmp_path_factory.mktemp("fgadr") / "FGADR-Seg-set_Release" / "Seg-set"
    for i, (sid, (name, _, kinds, mode)) in enumerate(FGADR.items()):
        save_image(root / "Original_Images" / name, i)
        for kind in kinds:
            save_mask(root / FGADR_DIRS[kind] / f"{sid}.png", kind, mode)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "Hemohedge_Masks" / "0001_1.png")   # an empty mask
    rows = [f"{name},{grade}" for name, grade, _, _ in FGADR.values()] + ["0009_9.png,1"]       # graded, no image
    (root / "DR_Seg_Grading_Label.csv").write_text("\n".join(rows) + "\n")
    return root.parent.parent          # the folder the release zip unpacks into


def test_fgadr_channels_and_labels(fgadr, tmp_path):
    out = tmp_path / "ds"
    res, text = run_import("fgadr", fgadr, "--out", out, "--size", SIZE, "--vessels", "none", "--workers", 0)
    assert res.exit_code == 0, text
    got = labels(out)
    assert {sid: g for sid, (g, _) in got.items()} == {sid: v[1] for sid, v in FGADR.items()}
    assert {s for _, s in got.values()} <= {"train", "val", "test"}
    for sid, (name, _, kinds, _) in FGADR.items():
        check_channels(out, sid, fgadr / "FGADR-Seg-set_Release" / "Seg-set" / "Original_Images" / name, kinds)
        assert (out / "masks" / sid / "disc.png").is_file()          # the extractor's disc: FGADR has none
        assert not (out / "masks" / sid / "vessel.png").exists()     # --vessels none
    assert written(out, "0004_3", "membrane").any()                  # neovascularisation -> membrane
    assert "IRMA_Masks: 2 mask files not imported" in text
    assert "0009_9: listed in DR_Seg_Grading_Label.csv but no image in" in text
    assert "he: 1" in text and "membrane: 3" in text                 # missing files, read as empty
    report = validate_dataset(out)
    assert report.problems == [] and report.ok == 4


def test_fgadr_report_counts_components(fgadr, tmp_path):
    report = import_release("fgadr", fgadr, tmp_path / "ds", size=SIZE, vessels="none", progress=False)
    assert report.images == 4 and report.new == 4 and report.resumed == 0
    assert dict(report.grades) == {0: 1, 2: 1, 3: 1, 4: 1}
    px, comp, images = report.lesions["ma"]
    assert comp == 3 and images == 3 and px > 0           # one drawn microaneurysm in each of three images
    assert report.lesions["membrane"][1:] == [1, 1]
    assert report.lesions["laser"] == [0, 0, 0]


def test_missing_mask_counts_leave_out_the_images_not_imported(fgadr, tmp_path):
    """A skipped image's absent masks are not the dataset's: 0001_1 (no lesion files) is unreadable."""
    import shutil

    src = tmp_path / "release"
    shutil.copytree(fgadr, src)
    image = src / "FGADR-Seg-set_Release" / "Seg-set" / "Original_Images" / "0001_1.png"
    image.write_bytes(image.read_bytes()[:100])
    report = import_release("fgadr", src, tmp_path / "ds", size=SIZE, vessels="none", progress=False)
    assert report.images == 3 and any("0001_1.png: unreadable image" in s for s in report.skipped)
    assert dict(report.missing) == {"se": 1, "he": 1, "membrane": 2}   # 0002_1: no SE, NV; 0003_2: no HE, NV


# ---------------------------------------------------------------- IDRiD

IDRID_SETS = {"train": "a. Training Set", "test": "b. Testing Set"}
IDRID_DIRS = {"ma": ("1. Microaneurysms", "MA"), "he": ("2. Haemorrhages", "HE"), "ex": ("3. Hard Exudates", "EX"),
              "se": ("4. Soft Exudates", "SE"), "od": ("5. Optic Disc", "OD")}
# id: (set, image extension, grade or None, lesion kinds with a mask file)
IDRID = {"IDRiD_01": ("train", ".jpg", 2, ("ma", "he", "ex", "se", "od")),
         "IDRiD_02": ("train", ".JPG", 3, ("ma", "he", "ex", "od")),           # no SE file: all zeros
         "IDRiD_03": ("train", ".jpg", None, ("ma", "od")),                    # not in the grading table
         "IDRiD_55": ("test", ".jpg", 1, ("ma", "ex", "od"))}


@pytest.fixture(scope="module")
def idrid(tmp_path_factory):
    root = tmp_path_factory.mktemp("idrid") / "IDRiD"
    seg = root / "A. Segmentation"
    for i, (sid, (part, ext, _, kinds)) in enumerate(IDRID.items()):
        save_image(seg / "1. Original Images" / IDRID_SETS[part] / f"{sid}{ext}", 10 + i)
        for kind in kinds:
            folder, sfx = IDRID_DIRS[kind]
            mask_ext = ".TIF" if sid == "IDRiD_02" else ".tif"
            save_mask(seg / "2. All Segmentation Groundtruths" / IDRID_SETS[part] / folder / f"{sid}_{sfx}{mask_ext}",
                      kind, "red")
    truths = root / "B. Disease Grading" / "2. Groundtruths"
    truths.mkdir(parents=True)
    header = "Image name,Retinopathy grade,Risk of macular edema ,,\n"
    (truths / "a. IDRiD_Disease Grading_Training Labels.csv").write_text(
        header + "IDRiD_01,2,1,,\nIDRiD_02,3,2,,\nIDRiD_001,4,2,,\n")
    # Both published tables number their own images from IDRiD_001: another image of each.
    (truths / "b. IDRiD_Disease Grading_Testing Labels.csv").write_text(header + "IDRiD_55,1,0,,\nIDRiD_001,0,0,,\n")
    (truths / "c. Added.csv").write_text("Image name,Retinopathy grade\nIDRID_5,2\n")  # a typo for IDRiD_55
    return root


def test_idrid_channels_labels_and_disc(idrid, tmp_path):
    out = tmp_path / "ds"
    res, text = run_import("idrid", idrid, "--out", out, "--size", SIZE, "--vessels", "none", "--workers", 0)
    assert res.exit_code == 0, text
    assert labels(out) == {"IDRiD_01": (2, "train"), "IDRiD_02": (3, "train"), "IDRiD_55": (1, "test")}
    images = idrid / "A. Segmentation" / "1. Original Images"
    for sid in labels(out):
        part, ext, _, kinds = IDRID[sid]
        # The disc is the release's OD mask, not the extractor's.
        check_channels(out, sid, images / IDRID_SETS[part] / f"{sid}{ext}", kinds,
                       channels=("ma", "he", "ex", "se", "laser", "membrane", "disc"))
    assert not written(out, "IDRiD_02", "se").any()
    assert "IDRiD_03.jpg: no grade in B. Disease Grading/2. Groundtruths/*.csv" in text
    # Rows of the grading images are not read: neither listed one by one nor a conflict between the tables.
    assert ("note: B. Disease Grading/2. Groundtruths/*.csv: 2 grading rows name the grading images (IDRiD_NNN), "
            "none of the segmentation images; not read") in text
    assert "IDRiD_001" not in text
    assert f"{idrid / 'B. Disease Grading/2. Groundtruths/c. Added.csv'}:2: IDRID_5 names no image in" in text
    assert validate_dataset(out).problems == []


def test_idrid_as_published_says_why_nothing_came_in(idrid, tmp_path):
    """The published tables grade only the grading images: nothing imports, and the note that says
    so comes before the error, where the user needs it."""
    src = tmp_path / "IDRiD"
    shutil.copytree(idrid, src)
    truths = src / "B. Disease Grading" / "2. Groundtruths"
    for table in truths.iterdir():
        table.unlink()
    (truths / "a. IDRiD_Disease Grading_Training Labels.csv").write_text("Image name,Retinopathy grade\nIDRiD_001,4\n")
    res, err = run_import("idrid", src, "--out", tmp_path / "ds", "--size", SIZE, "--vessels", "none", "--workers", 0)
    assert res.exit_code == 1 and str(res.exception).startswith("no importable images in the idrid release")
    assert ("note: B. Disease Grading/2. Groundtruths/*.csv: 1 grading row names the grading images (IDRiD_NNN), none "
            "of the segmentation images; not read") in err
    assert "IDRiD_01.jpg: no grade in" in err and not (tmp_path / "ds").exists()


# ---------------------------------------------------------------- DDR

# id: (release split folder, grade, lesion kinds with a mask file)
DDR = {"007-0004-000": ("train", 1, ("ma",)),
       "007-0005-000": ("train", 3, ("ma", "he", "ex", "se")),
       "007-0006-000": ("valid", 2, ("he", "ex")),
       "007-0007-000": ("test", 5, ("ex",)),                 # ungradable
       "007-0008-000": ("test", 4, ("ma", "he", "se"))}


@pytest.fixture(scope="module")
def ddr(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddr") / "DDR-dataset"
    lesion_dir = {"ma": "MA", "he": "HE", "ex": "EX", "se": "SE"}
    lists: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for i, (sid, (part, grade, kinds)) in enumerate(DDR.items()):
        save_image(root / "lesion_segmentation" / part / "image" / f"{sid}.jpg", 20 + i)
        for kind in kinds:
            ext = ".TIF" if sid == "007-0005-000" else ".tif"
            labels = "segmentation label" if part == "valid" else "label"  # the release's own folder names
            save_mask(root / "lesion_segmentation" / part / labels / lesion_dir[kind] / f"{sid}{ext}", kind, "L")
        lists[part].append(f"{sid}.jpg {grade}")
    # Bad files are skipped with their reason: a mask of another size, a truncated photograph.
    save_image(root / "lesion_segmentation" / "train" / "image" / "007-0009-000.jpg", 28)
    Image.fromarray(np.zeros((50, 70), np.uint8)).save(root / "lesion_segmentation" / "train" / "label" / "HE" / "007-0009-000.tif")
    save_image(root / "lesion_segmentation" / "train" / "image" / "007-0010-000.jpg", 29)
    truncated = root / "lesion_segmentation" / "train" / "image" / "007-0010-000.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    Image.new("RGB", (W, H)).save(root / "lesion_segmentation" / "train" / "image" / "007-0011-000.jpg")   # a blank capture
    lists["train"] += ["007-0009-000.jpg 2", "007-0010-000.jpg 2", "007-0011-000.jpg 1"]
    (root / "DR_grading").mkdir()
    for part, lines in lists.items():
        (root / "DR_grading" / f"{part}.txt").write_text("\n".join(lines + ["999-0000-000.jpg 0"]) + "\n")
    return root


def test_ddr_channels_labels_and_ungradable(ddr, tmp_path):
    out = tmp_path / "ds"
    res, text = run_import("ddr", ddr, "--out", out, "--size", SIZE, "--vessels", "none", "--workers", 0)
    assert res.exit_code == 0, text
    assert labels(out) == {"007-0004-000": (1, "train"), "007-0005-000": (3, "train"),
                           "007-0006-000": (2, "val"), "007-0008-000": (4, "test")}
    for sid in labels(out):
        part, _, kinds = DDR[sid]
        check_channels(out, sid, ddr / "lesion_segmentation" / part / "image" / f"{sid}.jpg", kinds)
    assert "007-0007-000.jpg: ungradable (grade 5 in DR_grading/*.txt)" in text
    assert "007-0009-000.tif: mask is 70x50 px but its image is 128x96" in text
    assert "007-0010-000.jpg: unreadable image" in text
    assert "007-0011-000.jpg: one flat colour (grey levels 0-0), no fundus in it" in text
    assert validate_dataset(out).problems == []


# ---------------------------------------------------------------- EyePACS and APTOS: grades only

@pytest.fixture(scope="module")
def eyepacs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eyepacs")
    for i, name in enumerate(["10_left.jpeg", "10_right.JPEG", "13_left.jpeg", "15_left.jpeg"]):
        save_image(root / "train" / name, 30 + i)
    (root / "trainLabels.csv").write_text("image,level\n10_left,0\n10_right,4\n13_left,2\n99_left,1\n")
    return root


def test_eyepacs_grades_only(eyepacs, tmp_path):
    out = tmp_path / "ds"
    res, text = run_import("eyepacs", eyepacs, "--out", out, "--size", SIZE, "--vessels", "none", "--workers", 0)
    assert res.exit_code == 0, text
    assert {sid: g for sid, (g, _) in labels(out).items()} == {"10_left": 0, "10_right": 4, "13_left": 2}
    assert "15_left.jpeg: no grade in trainLabels.csv" in text
    assert "99_left: listed in trainLabels.csv but no image in" in text
    for sid in labels(out):
        assert sorted(p.name for p in (out / "masks" / sid).iterdir()) == ["disc.png"]
    assert validate_dataset(out).problems == []


def test_a_rerun_over_an_import_that_carved_a_patients_eyes_apart_keeps_them_and_says_so(eyepacs, tmp_path):
    out = tmp_path / "ds"
    args = ("eyepacs", eyepacs, "--out", out, "--size", SIZE, "--vessels", "none", "--workers", 0)
    res, text = run_import(*args)
    assert res.exit_code == 0 and "more than one split" not in text
    with open(out / "labels.csv") as f:  # as an earlier version, carving image by image, could have
        carved = f.read().replace("10_right,4,train", "10_right,4,val")
    (out / "labels.csv").write_text(carved)
    res, text = run_import(*args)
    assert res.exit_code == 0, text
    assert labels(out)["10_right"] == (4, "val") and labels(out)["10_left"] == (0, "train")
    assert "note: 1 patient (10) has images in more than one split" in text


def test_aptos_grades_only(tmp_path):
    src = tmp_path / "aptos2019-blindness-detection"
    for i, sid in enumerate(["000c1434d8d7", "001639a390f0"]):
        save_image(src / "train_images" / f"{sid}.png", 40 + i)
    (src / "train.csv").write_text("id_code,diagnosis\n000c1434d8d7,2\n001639a390f0,4\n")
    report = import_release("aptos", tmp_path, tmp_path / "ds", size=SIZE, vessels="none", progress=False)
    assert report.images == 2 and dict(report.grades) == {2: 1, 4: 1}
    assert {sid: g for sid, (g, _) in labels(tmp_path / "ds").items()} == {"000c1434d8d7": 2, "001639a390f0": 4}


# ---------------------------------------------------------------- resume, workers, vessels

def test_rerun_resumes_and_equals_parallel_run(eyepacs, tmp_path):
    """Workers do not change the bytes; a rerun after a killed run redoes only the unfinished id."""
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    import_release("eyepacs", eyepacs, serial, size=SIZE, vessels="extract", workers=0, progress=False)
    import_release("eyepacs", eyepacs, parallel, size=SIZE, vessels="extract", workers=2, progress=False)
    files = sorted(p.relative_to(serial) for p in serial.rglob("*.png"))
    assert any(p.name == "vessel.png" for p in files)
    assert files == sorted(p.relative_to(parallel) for p in parallel.rglob("*.png"))
    assert all((serial / p).read_bytes() == (parallel / p).read_bytes() for p in files)

    before = {p: (serial / p).read_bytes() for p in files}
    (serial / "images" / "13_left.png").unlink()                         # killed before its image was written
    (serial / "images" / f".10_left.png.tmp-{dead_pid()}-2").write_bytes(b"partial")  # its writer is gone
    report = import_release("eyepacs", eyepacs, serial, size=SIZE, vessels="extract", progress=False)
    assert (report.new, report.resumed) == (1, 2)
    assert {p: (serial / p).read_bytes() for p in files} == before
    assert not list((serial / "images").glob(".*"))
    assert dict(report.grades) == {0: 1, 2: 1, 4: 1}


def test_interrupted_import_is_not_read_as_a_dataset(eyepacs, tmp_path, monkeypatch):
    from drgan.data.format import open_dataset
    from drgan.data.importers import core

    out, convert = tmp_path / "ds", core._convert_task
    calls = []

    def interrupted(args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return convert(args)

    monkeypatch.setattr(core, "_convert_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    monkeypatch.undo()
    with pytest.raises(DrganError, match="unfinished"):
        open_dataset(out)
    report = import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.resumed) == (2, 1) and len(open_dataset(out).samples) == 3


def test_rerun_with_other_options_is_refused(eyepacs, tmp_path):
    out = tmp_path / "ds"
    import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    res, _ = run_import("eyepacs", eyepacs, "--out", out, "--size", 96, "--vessels", "none", "--workers", 0)
    assert isinstance(res.exception, DrganError)
    assert "holds an import with other settings (size: 80 there, 96 now)" in str(res.exception)


def test_import_into_a_folder_in_use_is_refused(eyepacs, tmp_path, lock_holder):
    """Two imports into one folder would convert the same ids at once; the second is refused, and
    the folder is taken once the first has finished (or died)."""
    out = tmp_path / "ds"
    pid = lock_holder(out)
    res, _ = run_import("eyepacs", eyepacs, "--out", out, "--vessels", "none", "--workers", 0)
    assert isinstance(res.exception, DrganError)
    assert str(res.exception) == f"{out} is in use by another drgan process (pid {pid})"
    assert [p.name for p in out.iterdir()] == [".drgan.lock"]


def test_import_resumes_a_folder_holding_only_its_lock(eyepacs, tmp_path):
    """A run killed after taking the folder's lock and before its first write left only the lock file."""
    out = tmp_path / "ds"
    out.mkdir()
    (out / ".drgan.lock").write_text("12345\n")
    report = import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    assert report.new == 3 and (out / "labels.csv").is_file()


def test_rerun_from_another_source_is_refused(eyepacs, tmp_path, monkeypatch):
    """Finished ids are kept on a rerun, so another release's images would stay under this one's grades."""
    out, other = tmp_path / "ds", tmp_path / "other"
    import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    shutil.copytree(eyepacs, other)
    res, _ = run_import("eyepacs", other, "--out", out, "--size", SIZE, "--vessels", "none", "--workers", 0)
    assert isinstance(res.exception, DrganError)
    assert str(res.exception) == (f"out {out}: holds an import with other settings "
                                  f"(source: '{eyepacs.resolve()}' there, '{other.resolve()}' now); "
                                  "rerun it with its own or choose a new folder")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.chdir(eyepacs.parent)           # the same source spelled another way resumes
    report = import_release("eyepacs", eyepacs.name, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.resumed) == (0, 3)
    top = tmp_path / "unpacked"                 # or given as the folder above the release's
    shutil.copytree(eyepacs, top / "release")
    new = tmp_path / "ds2"
    import_release("eyepacs", top, new, size=SIZE, vessels="none", progress=False)
    report = import_release("eyepacs", top / "release", new, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.resumed) == (0, 3)


def test_import_recorded_without_a_source_resumes(eyepacs, tmp_path):
    """An import.json from before sources were recorded resumes, and records the source from then on."""
    out = tmp_path / "ds"
    import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    (out / "import.json").write_text(json.dumps({"kind": "eyepacs", "size": SIZE, "vessels": "none"}))
    report = import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.resumed) == (0, 3)
    assert json.loads((out / "import.json").read_text())["source"] == str(eyepacs.resolve())


# ---------------------------------------------------------------- malformed grading rows

def grading_case(request, tmp_path, kind: str, table: str, text: str):
    """A copy of `kind`'s fixture release with `table` (relative to it) rewritten, imported by the CLI."""
    src = tmp_path / "src"
    shutil.copytree(request.getfixturevalue(kind), src)
    (src / table).write_text(text)
    res, output = run_import(kind, src, "--out", tmp_path / "ds", "--size", SIZE, "--vessels", "none", "--workers", 0)
    assert res.exit_code == 0, output
    return src / table, {sid: g for sid, (g, _) in labels(tmp_path / "ds").items()}, output


IDRID_TRAIN_TABLE = "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"
FGADR_TABLE = "FGADR-Seg-set_Release/Seg-set/DR_Seg_Grading_Label.csv"


@pytest.mark.parametrize("kind, table, text, graded, ungraded", [
    ("eyepacs", "trainLabels.csv", "image,level\n10_left,0\n10_right\n13_left,2\n",
     {"10_left": 0, "13_left": 2}, "10_right.JPEG: no grade in trainLabels.csv"),
    ("fgadr", FGADR_TABLE, "0001_1.png,0\n0002_1.png\n0003_2.PNG,3\n0004_3.png,4\n",
     {"0001_1": 0, "0003_2": 3, "0004_3": 4}, "0002_1.png: no grade in DR_Seg_Grading_Label.csv"),
    ("idrid", IDRID_TRAIN_TABLE, "Image name,Retinopathy grade,Risk of macular edema \nIDRiD_01,2,0\nIDRiD_02\n",
     {"IDRiD_01": 2, "IDRiD_55": 1}, "IDRiD_02.JPG: no grade in B. Disease Grading/2. Groundtruths/*.csv"),
    ("ddr", "DR_grading/train.txt", "007-0004-000.jpg 1\n007-0005-000.jpg\n",
     {"007-0004-000": 1, "007-0006-000": 2, "007-0008-000": 4}, "007-0005-000.jpg: no grade in DR_grading/*.txt"),
])
def test_grading_row_without_a_grade_is_reported(request, tmp_path, kind, table, text, graded, ungraded):
    """A row holding only a name reads as one with an empty grade: its image is skipped and listed."""
    _, got, output = grading_case(request, tmp_path, kind, table, text)
    assert got == graded
    assert ungraded in output and "Traceback" not in output


@pytest.mark.parametrize("kind, table, text, graded, line, fields, columns", [
    # A row's empty trailing fields (13_left, 0003_2, IDRiD_03) are spreadsheet separators, not data.
    ("eyepacs", "trainLabels.csv", "image,level\n10_left,0\n10_right,4,x\n13_left,2,\n",
     {"10_left": 0, "13_left": 2}, 3, 3, 2),
    ("fgadr", FGADR_TABLE, "0001_1.png,0\n0002_1.png,2,x\n0003_2.PNG,3,\n0004_3.png,4\n",
     {"0001_1": 0, "0003_2": 3, "0004_3": 4}, 2, 3, 2),
    ("idrid", IDRID_TRAIN_TABLE,
     "Image name,Retinopathy grade,Risk of macular edema \nIDRiD_01,2,0\nIDRiD_02,3,1,extra\nIDRiD_03,1,0,,\n",
     {"IDRiD_01": 2, "IDRiD_03": 1, "IDRiD_55": 1}, 3, 4, 3),
    ("ddr", "DR_grading/train.txt", "007-0004-000.jpg 1\n007-0005-000.jpg 3 1\n",
     {"007-0004-000": 1, "007-0006-000": 2, "007-0008-000": 4}, 2, 3, 2),
])
def test_grading_row_with_extra_fields_is_reported(request, tmp_path, kind, table, text, graded, line, fields,
                                                   columns):
    """A row longer than its table may have shifted columns: it is listed and not read, so its image
    has no grade."""
    path, got, output = grading_case(request, tmp_path, kind, table, text)
    assert got == graded
    assert f"{path}:{line}: {fields} fields, the table has {columns} columns; row not read" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("kind, table, text, graded, conflicts", [
    # 10_left's repeated row agrees and is taken; 10_right's rows (names differ in case only) do not.
    ("eyepacs", "trainLabels.csv", "image,level\n10_left,0\n10_right,4\n13_left,2\n10_RIGHT,3\n10_left,0\n",
     {"10_left": 0, "13_left": 2},
     [("trainLabels.csv", 3, "10_right", "grade 4", "grade 3", "trainLabels.csv", 5),
      ("trainLabels.csv", 5, "10_RIGHT", "grade 3", "grade 4", "trainLabels.csv", 3)]),
    ("fgadr", FGADR_TABLE, "0001_1.png,0\n0002_1.png,2\n0003_2.PNG,3\n0004_3.png,4\n0002_1.png,\n",
     {"0001_1": 0, "0003_2": 3, "0004_3": 4},
     [(FGADR_TABLE, 2, "0002_1", "grade 2", "no grade", FGADR_TABLE, 5),
      (FGADR_TABLE, 5, "0002_1", "no grade", "grade 2", FGADR_TABLE, 2)]),
    ("idrid", IDRID_TRAIN_TABLE, "Image name,Retinopathy grade\nIDRiD_01,2\nIDRiD_02,3\nIDRiD_01.jpg,1\n",
     {"IDRiD_02": 3, "IDRiD_55": 1},
     [(IDRID_TRAIN_TABLE, 2, "IDRiD_01", "grade 2", "grade 1", IDRID_TRAIN_TABLE, 4),
      (IDRID_TRAIN_TABLE, 4, "IDRiD_01", "grade 1", "grade 2", IDRID_TRAIN_TABLE, 2)]),
    # Across tables: valid.txt grades 007-0006-000 2.
    ("ddr", "DR_grading/train.txt", "007-0004-000.jpg 1\n007-0005-000.jpg 3\n007-0006-000.jpg 4\n",
     {"007-0004-000": 1, "007-0005-000": 3, "007-0008-000": 4},
     [("DR_grading/train.txt", 3, "007-0006-000", "grade 4", "grade 2", "DR_grading/valid.txt", 1),
      ("DR_grading/valid.txt", 1, "007-0006-000", "grade 2", "grade 4", "DR_grading/train.txt", 3)]),
])
def test_id_graded_differently_twice_is_reported_and_not_imported(request, tmp_path, kind, table, text, graded,
                                                                  conflicts):
    """Which of two disagreeing rows is right cannot be told: each is listed with its file and line,
    and the image is left out (not also listed as ungraded)."""
    _, got, output = grading_case(request, tmp_path, kind, table, text)
    src = tmp_path / "src"
    assert got == graded
    for table, line, name, grade, other, other_table, other_line in conflicts:
        assert f"{src / table}:{line}: {name} has {grade}, but {other} at {src / other_table}:{other_line}; not imported" \
            in output, output
    name = conflicts[0][2].lower()
    assert not [line for line in output.lower().splitlines() if f"{name}." in line and "no grade in" in line]
    assert "Traceback" not in output


def test_rerun_after_a_table_contradicts_a_converted_image_keeps_the_dataset_valid(eyepacs, tmp_path):
    """labels.csv is rewritten from the rerun: the image it no longer lists goes with it (it stayed,
    and data validate refused the dataset)."""
    src, out = tmp_path / "src", tmp_path / "ds"
    shutil.copytree(eyepacs, src)
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    with open(src / "trainLabels.csv", "a") as f:
        f.write("13_left,3\n")
    report = import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert set(labels(out)) == {"10_left", "10_right"}
    assert not (out / "images" / "13_left.png").exists() and not (out / "masks" / "13_left").exists()
    assert any(note.startswith("removed 1 image(s) an earlier run imported") for note in report.notes)
    assert validate_dataset(out).problems == []


def test_an_image_that_drops_out_of_a_release_and_comes_back_keeps_its_part(eyepacs, tmp_path):
    """labels.csv lists only what a run imported: an id a contradicting row took out was carved
    afresh when the row was put right, and could land in another part than the one a grader
    already trained or validated on. import_splits.csv keeps every carved id's part."""
    src, out = tmp_path / "src", tmp_path / "ds"
    shutil.copytree(eyepacs, src)
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert labels(out)["13_left"] == (2, "train")
    for name in ("labels.csv", "import_splits.csv"):  # as a carve that gave 13_left to val would have
        text = (out / name).read_text()
        (out / name).write_text(text.replace("13_left,2,train", "13_left,2,val").replace("13_left,train", "13_left,val"))
    table = (src / "trainLabels.csv").read_text()
    (src / "trainLabels.csv").write_text(table + "13_left,3\n")   # contradicted: taken out
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert "13_left" not in labels(out) and "13_left,val" in (out / "import_splits.csv").read_text()
    (src / "trainLabels.csv").write_text(table)                   # put right: back in its part
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert labels(out)["13_left"] == (2, "val") and validate_dataset(out).problems == []


def test_a_file_the_release_replaced_is_converted_again(fgadr, tmp_path):
    """A corrected mask (or image) in the release: a rerun converts its id again, and only it; a mask
    file added for an id counts as a change too."""
    src, out = tmp_path / "src", tmp_path / "ds"
    shutil.copytree(fgadr, src)  # copy2: times kept, as an unpacked release's are
    seg = src / "FGADR-Seg-set_Release" / "Seg-set"
    import_release("fgadr", src, out, size=SIZE, vessels="none", progress=False)
    assert written(out, "0002_1", "ma").any() and not (out / "masks" / "0001_1" / "ma.png").exists()
    before = {p: p.read_bytes() for p in sorted(out.rglob("*.png"))}

    mask = np.array(Image.open(seg / FGADR_DIRS["ma"] / "0002_1.png").convert("L"))
    Image.fromarray(np.zeros_like(mask)).save(seg / FGADR_DIRS["ma"] / "0002_1.png")  # the corrected file: no MA
    Image.fromarray(mask).save(seg / FGADR_DIRS["ma"] / "0001_1.png")                 # a mask the release lacked
    report = import_release("fgadr", src, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed) == (0, 2, 2)
    assert "converted again: 2" in report.render()
    assert not (out / "masks" / "0002_1" / "ma.png").exists()
    assert written(out, "0001_1", "ma").any()
    changed = {p for p, data in before.items() if not p.is_file() or p.read_bytes() != data}
    assert changed == {out / "masks" / "0002_1" / "ma.png"}  # the images are the same photographs
    report = import_release("fgadr", src, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed) == (0, 0, 4)
    assert validate_dataset(out).problems == []


def test_an_id_converted_but_not_yet_recorded_is_converted_again(eyepacs, tmp_path):
    """A run killed between an image and the next save of import_sources.csv: the id's source is
    unknown, so it is converted again (the same bytes); a folder imported before sources were
    recorded keeps its images and records their sources."""
    out = tmp_path / "ds"
    import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    files = {p: p.read_bytes() for p in sorted(out.rglob("*.png"))}
    record = out / "import_sources.csv"
    rows = record.read_text().splitlines()
    assert rows[0] == "id,source" and [r.split(",")[0] for r in rows[1:]] == ["10_left", "10_right", "13_left"]
    record.write_text("\n".join(r for r in rows if not r.startswith("13_left")) + "\n")
    report = import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed) == (0, 1, 2)
    assert record.read_text().splitlines() == rows
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.png"))} == files

    record.unlink()
    report = import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed) == (0, 0, 3)
    assert record.read_text().splitlines() == rows


def test_a_file_put_back_after_a_killed_reconversion_is_converted_again(eyepacs, tmp_path, monkeypatch):
    """Killed between a replaced id's new image and the save of its record, then the release file
    put back as it was (a bad correction restored with its times): the id must not meet its old
    record entry and keep the new image."""
    import os

    from drgan.data.importers import core

    src, out = tmp_path / "src", tmp_path / "ds"
    shutil.copytree(eyepacs, src)
    photo = src / "train" / "13_left.jpeg"
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    first, kept, when = (out / "images" / "13_left.png").read_bytes(), photo.read_bytes(), photo.stat().st_mtime_ns
    save_image(photo, 99)
    convert = core._convert_task

    def killed_after(args):
        result = convert(args)
        if args[0].id == "13_left":
            raise KeyboardInterrupt   # the image is written, the record not yet saved
        return result

    monkeypatch.setattr(core, "_convert_task", killed_after)
    with pytest.raises(KeyboardInterrupt):
        import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    monkeypatch.undo()
    assert (out / "images" / "13_left.png").read_bytes() != first
    photo.write_bytes(kept)
    os.utime(photo, ns=(when, when))
    report = import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed) == (0, 1, 2)
    assert (out / "images" / "13_left.png").read_bytes() == first


def test_a_replaced_file_that_cannot_be_read_takes_its_image_out_and_says_so(eyepacs, tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    shutil.copytree(eyepacs, src)
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    (src / "train" / "13_left.jpeg").write_bytes((src / "train" / "13_left.jpeg").read_bytes()[:200])  # cut short
    report = import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert "13_left" not in labels(out) and not (out / "images" / "13_left.png").exists()
    assert any("13_left.jpeg" in line for line in report.skipped)
    assert any(note.startswith("removed 1 image(s) an earlier run imported") for note in report.notes)
    assert validate_dataset(out).problems == []


def test_a_new_time_or_a_new_size_each_marks_a_replaced_file_and_a_moved_dataset_none(eyepacs, tmp_path):
    """The signature judges size and modification time each, and names files under the release,
    not the dataset: a dataset moved elsewhere converts nothing again."""
    import os

    src, out = tmp_path / "src", tmp_path / "ds"
    shutil.copytree(eyepacs, src)
    photo = src / "train" / "13_left.jpeg"
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    before = photo.stat()
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))    # the same bytes, touched
    report = import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed, report.images) == (0, 1, 2, 3)
    before = photo.stat()
    save_image(photo, 99)
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))            # other bytes, the old time
    assert photo.stat().st_size != before.st_size
    report = import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed) == (0, 1, 2)
    moved = tmp_path / "a" / "b" / "moved"
    moved.parent.mkdir(parents=True)
    shutil.move(out, moved)
    report = import_release("eyepacs", src, moved, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed) == (0, 0, 3)


def test_the_record_is_saved_before_converting_and_as_images_finish(eyepacs, tmp_path, monkeypatch):
    """What import_sources.csv holds when each conversion starts: a folder of an earlier version has
    its converted ids recorded first; a replaced id's entry is gone first; finished ids are saved
    as they come (every SOURCES_EVERY_S; here at once)."""
    import os

    from drgan.data.importers import core

    src, out = tmp_path / "src", tmp_path / "ds"
    shutil.copytree(eyepacs, src)
    seen, convert = [], core.convert

    def watched(item, *args, **kwargs):
        record = out / core.SOURCES_FILE
        seen.append(record.read_text().splitlines()[1:] if record.is_file() else None)
        return convert(item, *args, **kwargs)

    monkeypatch.setattr(core, "convert", watched)
    monkeypatch.setattr(core, "SOURCES_EVERY_S", -1.0)
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert [len(rows) for rows in seen] == [0, 1, 2]
    rows = (out / core.SOURCES_FILE).read_text().splitlines()[1:]
    (out / core.SOURCES_FILE).unlink()
    seen.clear()
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert seen[0] == rows
    os.utime(src / "train" / "13_left.jpeg", ns=(1, 1))
    seen.clear()
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert [r.split(",")[0] for r in seen[0]] == ["10_left", "10_right"]


def test_an_import_whose_every_conversion_fails_lists_its_notes_too(tmp_path, capsys):
    from drgan.data.importers import core

    src = tmp_path / "rel"
    src.mkdir()
    (src / "a.png").write_bytes(b"not a png")
    plan = core.Plan(root=src, items=[Item("a", src / "a.png", 1, None, {})], notes=["why nothing came in"])
    with pytest.raises(core.NothingImported):
        core.import_plan("aptos", plan, src, tmp_path / "ds", SIZE, "none", 0, progress=False)
    err = capsys.readouterr().err
    assert err.startswith("skipped:\n") and err.endswith("note: why nothing came in\n")
    core._list_skipped([], ["only a note"])
    assert capsys.readouterr().err == "note: only a note\n"


def test_damaged_import_records_are_named_or_rebuilt(eyepacs, tmp_path):
    """import_sources.csv damaged: no source is known, so every image is converted again (the same
    bytes); import_splits.csv damaged: carving afresh could move an id between parts, so the import
    stops with one line naming the file and the ways on."""
    out = tmp_path / "ds"
    import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    files = {p: p.read_bytes() for p in sorted(out.rglob("*.png"))}
    rows = (out / "import_sources.csv").read_text()
    (out / "import_sources.csv").write_bytes(b"\xff\xfe\x00 not text")
    report = import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed) == (0, 3, 0)
    assert any("import_sources.csv: damaged, not a CSV text file" in note and note.endswith("every image converted again")
               for note in report.notes)
    assert (out / "import_sources.csv").read_text() == rows
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.png"))} == files

    (out / "import_sources.csv").write_text("id,source\n13_left," + "a" * 200_000 + "\n")  # past csv's field limit
    report = import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    assert report.again == 3 and any("import_sources.csv: damaged, not a CSV text file" in note for note in report.notes)

    (out / "import_splits.csv").write_bytes(b"\xff\xfe\x00 not text")
    res, _ = run_import("eyepacs", eyepacs, "--out", out, "--size", SIZE, "--vessels", "none", "--workers", 0)
    assert res.exit_code == 1 and isinstance(res.exception, DrganError)
    assert str(res.exception).startswith(f"{out / 'import_splits.csv'}: damaged, not a CSV text file (")
    assert str(res.exception).endswith("; delete it to keep the parts labels.csv lists and carve the other ids afresh, "
                                       "or restore it")
    (out / "import_splits.csv").unlink()
    report = import_release("eyepacs", eyepacs, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed) == (0, 0, 3) and validate_dataset(out).problems == []


def test_a_run_killed_while_converting_a_replaced_id_again_leaves_it_unfinished(eyepacs, tmp_path, monkeypatch):
    """The old image goes before the new one is made: a kill in between cannot leave the old
    photograph looking finished under the record of the new file."""
    import os

    from drgan.data.importers import core

    src, out = tmp_path / "src", tmp_path / "ds"
    shutil.copytree(eyepacs, src)
    import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    old = (out / "images" / "13_left.png").read_bytes()
    save_image(src / "train" / "13_left.jpeg", 99)
    os.utime(src / "train" / "13_left.jpeg", ns=(1, 1))  # a replaced file, whatever the clock's resolution

    def killed(image, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "read_rgb", killed)
    with pytest.raises(KeyboardInterrupt):
        import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    monkeypatch.undo()
    assert not (out / "images" / "13_left.png").exists()
    report = import_release("eyepacs", src, out, size=SIZE, vessels="none", progress=False)
    assert (report.new, report.again, report.resumed) == (1, 0, 2)
    assert (out / "images" / "13_left.png").read_bytes() != old


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, message", [
    (["fgadr", "{src}/nowhere"], "nowhere: folder not found"),
    (["idrid", "{src}"], "not an unpacked IDRiD release (no A. Segmentation/1. Original Images"),
    (["fgadr", "{src}/trainLabels.csv"], "is a file; unpack the FGADR Seg-set release"),
])
def test_bad_input_is_one_error_line(eyepacs, tmp_path, capsys, args, message):
    from drgan.cli.common import run_command

    args = [a.format(src=eyepacs) for a in args]
    code = run_command(cli, args=["data", "import", *args, "--out", str(tmp_path / "ds")], prog_name="drgan")
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "ds").exists()


def test_unknown_release_is_a_usage_error(eyepacs, tmp_path, capsys):
    """Exit 2, as an option's unknown choice (the other commands' --preset): a kind is a choice."""
    from drgan.cli.common import run_command

    code = run_command(cli, args=["data", "import", "messidor", str(eyepacs), "--out", str(tmp_path / "ds")], prog_name="drgan")
    err = capsys.readouterr().err
    assert code == 2 and "Invalid value for 'KIND': 'messidor' is not one of 'fgadr', 'idrid', 'ddr', 'eyepacs', 'aptos'." in err
    assert not (tmp_path / "ds").exists()


def test_output_folder_that_is_not_an_import(eyepacs, tmp_path, capsys):
    from drgan.cli.common import run_command

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    code = run_command(cli, args=["data", "import", "eyepacs", str(eyepacs), "--out", str(tmp_path / "ds")],
                       prog_name="drgan")
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and f"error: --out {tmp_path / 'ds'}: folder not empty and not an import (no import.json)" in err and "Traceback" not in err
    (tmp_path / "file").write_text("mine")
    code = run_command(cli, args=["data", "import", "eyepacs", str(eyepacs), "--out", str(tmp_path / "file")],
                       prog_name="drgan")
    assert code == 1 and capsys.readouterr().err == f"error: --out {tmp_path / 'file'}: is a file, expected a folder\n"


# ---------------------------------------------------------------- rules

def test_binarize_and_parse_grade():
    assert binarize(np.array([0, 60, 127, 128, 200, 255], np.uint8)).tolist() == [0, 0, 0, 255, 255, 255]
    assert binarize(np.array([0, 1, 1, 0], np.uint8)).tolist() == [0, 255, 255, 0]      # a 0/1 mask
    assert [parse_grade(t) for t in ("3", " 2.0 ", "2.5", "inf", "", "x")] == [3, 2, None, None, None, None]


def test_carve_splits_keeps_release_test_and_takes_val_from_train():
    def items(split, n, grade=0):
        return [Item(f"{split}{i:02d}g{grade}", None, grade, split, {}) for i in range(n)]

    out = {it.id: it.split for it in carve_splits(items("train", 20) + items("test", 5) + items("train", 3, grade=1))}
    assert sum(s == "val" for s in out.values()) == 3          # 2 of 20 in grade 0, 1 of 3 in grade 1
    assert all(out[f"test{i:02d}g0"] == "test" for i in range(5))
    assert not any(s == "test" for k, s in out.items() if k.startswith("train"))
    unsplit = [it.split for it in carve_splits(items(None, 20))]
    assert (unsplit.count("train"), unsplit.count("val"), unsplit.count("test")) == (16, 2, 2)


def test_carve_splits_keeps_the_part_an_earlier_run_gave_an_id():
    """An added image would shift the one-in-ten rule: ids already carved keep their part, and
    count in the rule, so that additions keep the val share at one in ten."""
    items = [Item(f"a{i:02d}", None, 0, None, {}) for i in range(20)]
    splits = {it.id: it.split for it in carve_splits(items)}
    for batch in range(3):  # three reruns, each adding two images
        items += [Item(f"b{batch}{i}", None, 0, None, {}) for i in range(2)]
        again = {it.id: it.split for it in carve_splits(items, earlier=splits)}
        assert {k: again[k] for k in splits} == splits
        splits = again
    shares = [list(splits.values()).count(s) for s in ("train", "val", "test")]
    assert shares == [20, 3, 3]  # as a fresh import of the 26 gives
    fresh = [it.split for it in carve_splits(items)]
    assert [fresh.count(s) for s in ("train", "val", "test")] == shares


def test_rerun_after_an_added_image_moves_no_image_between_splits(tmp_path):
    src = tmp_path / "aptos"
    ids = [f"{i:03d}abc" for i in range(12)]
    for i, sid in enumerate(ids):
        save_image(src / "train_images" / f"{sid}.png", 60 + i)
    (src / "train.csv").write_text("id_code,diagnosis\n" + "".join(f"{sid},0\n" for sid in ids))
    out = tmp_path / "ds"
    import_release("aptos", src, out, size=SIZE, vessels="none", progress=False)
    before = labels(out)
    save_image(src / "train_images" / "000aaa.png", 90)  # first in id order
    (src / "train.csv").write_text((src / "train.csv").read_text() + "000aaa,0\n")
    import_release("aptos", src, out, size=SIZE, vessels="none", progress=False)
    after = labels(out)
    assert {k: after[k] for k in before} == before and set(after) - set(before) == {"000aaa"}


def test_an_import_that_brings_in_nothing_lists_why_and_leaves_no_folder(tmp_path, capsys):
    src = tmp_path / "aptos"
    for sid in ("a1", "a2"):
        (src / "train_images").mkdir(parents=True, exist_ok=True)
        (src / "train_images" / f"{sid}.png").write_bytes(b"not a png")
    (src / "train.csv").write_text("id_code,diagnosis\na1,0\na2,1\n")
    out = tmp_path / "ds"
    with pytest.raises(DrganError, match=r"^no aptos image could be imported \(2 skipped\)$"):
        import_release("aptos", src, out, size=SIZE, vessels="none", progress=False)
    err = capsys.readouterr().err
    assert err.startswith("skipped:\n") and "a1.png: unreadable image" in err and "a2.png: unreadable image" in err
    assert not out.exists()  # the retry with the release fixed is a new import
    given = tmp_path / "empty"
    given.mkdir()
    with pytest.raises(DrganError):
        import_release("aptos", src, given, size=SIZE, vessels="none", progress=False)
    assert given.is_dir() and not any(given.iterdir())
    for i, sid in enumerate(("a1", "a2")):
        save_image(src / "train_images" / f"{sid}.png", 70 + i)
    assert import_release("aptos", src, out, size=SIZE, vessels="none", progress=False).images == 2


def test_a_name_clash_or_a_dangling_link_is_skipped_with_its_own_reason(tmp_path):
    src = tmp_path / "aptos"
    save_image(src / "train_images" / "a1.png", 80)
    save_image(src / "train_images" / "a1.jpg", 81)
    save_image(src / "train_images" / "a3.png", 82)
    (src / "train_images" / "a2.png").symlink_to(tmp_path / "nowhere.png")
    (src / "train.csv").write_text("id_code,diagnosis\na1,0\na2,1\na3,2\n")
    report = import_release("aptos", src, tmp_path / "ds", size=SIZE, vessels="none", progress=False)
    assert report.images == 1
    assert sorted(report.skipped) == sorted([
        f"{src / 'train_images' / 'a1.png'}: same name as a1.jpg",
        f"{src / 'train_images' / 'a1.jpg'}: another file has the same name",
        f"{src / 'train_images' / 'a2.png'}: a symbolic link to nothing",
        f"a2: listed in train.csv but no image in {src / 'train_images'}"])


def test_carve_splits_keeps_a_patients_eyes_in_one_part():
    """EyePACS names the two eyes of a patient <n>_left and <n>_right: they look alike, so one in
    train and the other in val or test would score a grader on what it has seen."""
    items = [Item(f"{n}_{eye}", None, (n + (eye == "right")) % 3, None, {}) for n in range(60) for eye in ("left", "RIGHT")]
    carved = carve_splits(items)
    split = {it.id: it.split for it in carved}
    assert all(split[f"{n}_left"] == split[f"{n}_RIGHT"] for n in range(60))
    patients = [split[f"{n}_left"] for n in range(60)]
    assert (patients.count("val"), patients.count("test")) == (6, 6)  # one in ten of each worst grade's patients
    assert patients_apart((it.id, it.split) for it in carved) == []


def test_a_new_eye_joins_its_patients_part_and_eyes_carved_apart_earlier_stay_and_are_named():
    left = [Item(f"{n}_left", None, 0, None, {}) for n in range(20)]
    earlier = {it.id: it.split for it in carve_splits(left)}
    val = [k for k, s in earlier.items() if s == "val"]
    both = carve_splits(left + [Item(f"{n}_right", None, 4, None, {}) for n in range(20)], earlier)
    assert {it.id: it.split for it in both if it.id.endswith("_left")} == earlier
    assert all(it.split == earlier[it.id.replace("_right", "_left")] for it in both if it.id.endswith("_right"))
    assert val and patients_apart((it.id, it.split) for it in both) == []
    # An import by a version that carved image by image: each id keeps its part, and is named.
    apart = {**earlier, "3_right": "test" if earlier["3_left"] != "test" else "train"}
    again = carve_splits(left + [Item("3_right", None, 0, None, {})], apart)
    assert {it.id: it.split for it in again} == apart and patients_apart((it.id, it.split) for it in again) == ["3"]


def test_an_unsplit_release_gives_the_second_of_ten_to_val_and_the_fourth_to_test():
    carved = {it.id: it.split for it in carve_splits([Item(f"u{i:02d}", None, 0, None, {}) for i in range(20)])}
    assert {k for k, s in carved.items() if s == "val"} == {"u01", "u11"}
    assert {k for k, s in carved.items() if s == "test"} == {"u03", "u13"}


def test_every_carved_part_is_read_back(tmp_path):
    from drgan.data.importers import core

    (tmp_path / core.CARVED_FILE).write_text("id,split\nx,test\ny,val\nz,train\nw,holdout\n")
    assert core._carved_splits(tmp_path, core.Plan()) == {"x": "test", "y": "val", "z": "train"}
