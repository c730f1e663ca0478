"""Dataset files at their edges: labels.csv as spreadsheets save it, multi-byte ids, the hash-split
note, mask conversions, the dataset writer's refusals and its clean-up of a killed writer's folder."""
import numpy as np
import pytest
from PIL import Image

from drgan.data.format import UNFINISHED, open_dataset
from drgan.data.labels import MAX_ID_BYTES, id_problem, read_labels
from drgan.data.phantom import write_phantom_dataset
from drgan.data.validation import validate_dataset
from drgan.errors import DrganError
from helpers import copy_dataset, rows, write_rows


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("files_edges") / "clean", count=5, size=64, seed=5)


# --- labels.csv -----------------------------------------------------------------------------------


def test_a_labels_file_saved_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    """Spreadsheets save CSV as UTF-8 with a BOM: its header is still id,grade,split."""
    (tmp_path / "labels.csv").write_bytes("\ufeffid,grade,split\na,1,train\nb,0,\n".encode())
    assert read_labels(tmp_path) == ([("a", 1, "train"), ("b", 0, None)], [])


def test_an_id_counts_bytes_not_characters_against_the_file_name_limit():
    """An id names files: 101 two-byte characters are 202 bytes, over the limit though 101 characters are not."""
    assert id_problem("\u00e9" * (MAX_ID_BYTES // 2)) is None
    problem = id_problem("\u00e9" * (MAX_ID_BYTES // 2 + 1))
    assert problem is not None and f"is {MAX_ID_BYTES + 2} bytes long (at most {MAX_ID_BYTES}" in problem


# --- the dataset index ----------------------------------------------------------------------------


def test_the_hash_split_note_is_printed_once_per_dataset(clean, tmp_path, capsys):
    """Training opens train and val: the note on rows without a split comes once, not per opening."""
    root = copy_dataset(clean, tmp_path / "unsplit")
    write_rows(root, [r[:2] for r in rows(clean)])
    capsys.readouterr()
    for split in ("train", "val", "train"):
        try:
            open_dataset(root, split=split)
        except DrganError:  # five ids may hash into one part only
            pass
    assert capsys.readouterr().err.count("rows without a split are split 90/10 into train/val") == 1


def test_a_reader_stops_at_the_first_bad_sample(clean, tmp_path):
    """Without skip_bad the first bad sample is the error: the samples after it are not checked."""
    root = copy_dataset(clean, tmp_path / "ds")
    for sid in ("phantom_000001", "phantom_000003"):
        Image.fromarray(np.zeros((64, 80), np.uint8)).save(root / "masks" / sid / "he.png")
    with pytest.raises(DrganError) as err:
        open_dataset(root)
    assert str(err.value) == f"{root / 'masks' / 'phantom_000001' / 'he.png'}: mask is 80x64 px but its image is 64x64"


def test_mask_conversions_are_reported_with_the_image_conversions(clean, tmp_path):
    """A colour mask is read as its channels' maximum; the report says so for the mask file."""
    root = copy_dataset(clean, tmp_path / "ds")
    path = root / "masks" / "phantom_000002" / "vessel.png"
    gray = np.asarray(Image.open(path))
    Image.fromarray(np.dstack([gray, np.zeros_like(gray), np.zeros_like(gray)])).save(path)
    report = validate_dataset(root)
    assert report.problems == [] and report.ok == 5
    assert f"{path}: RGB mask reduced to one channel (maximum)" in report.notes


# --- the dataset writer ---------------------------------------------------------------------------


def test_the_writer_refuses_a_mask_of_another_size_than_its_image(tmp_path):
    from drgan.data.dataset_writer import DatasetWriter

    with pytest.raises(DrganError, match=r"^mask 'disc' of 'a' is \(32, 64\) but the image is \(64, 64\)$"):
        with DatasetWriter(tmp_path / "out") as writer:
            writer.add("a", np.zeros((64, 64, 3), np.uint8), {"disc": np.zeros((32, 64), np.uint8)}, 0)
    assert not (tmp_path / "out").exists()


def test_the_writer_leaves_a_folder_another_command_is_writing(tmp_path):
    """A synthesized set still being written holds UNFINISHED too, with other content: it is not a
    killed dataset writer's folder to clear."""
    from drgan.data.dataset_writer import DatasetWriter

    out = tmp_path / "set"
    (out / "images").mkdir(parents=True)
    (out / "images" / "0.png").write_bytes(b"png")
    (out / UNFINISHED).write_bytes(b"drgan synthesize\n")
    with pytest.raises(DrganError, match="output folder exists and is not empty"):
        DatasetWriter(out)
    assert (out / "images" / "0.png").read_bytes() == b"png" and (out / UNFINISHED).is_file()


def test_clearing_a_killed_writers_folder_removes_links_not_what_they_point_to(tmp_path):
    from drgan.data.dataset_writer import DatasetWriter

    out, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (elsewhere / "keep").mkdir(parents=True)
    (elsewhere / "keep" / "photo.png").write_bytes(b"png")
    out.mkdir()
    (out / UNFINISHED).write_bytes(b"dataset writer\n")        # as a killed DatasetWriter leaves it
    (out / "masks").symlink_to(elsewhere, target_is_directory=True)
    writer = DatasetWriter(out)
    writer.add("a", np.zeros((64, 64, 3), np.uint8), {}, 0)
    writer.close()
    assert (elsewhere / "keep" / "photo.png").read_bytes() == b"png"
    assert (out / "masks").is_dir() and not (out / "masks").is_symlink()
    assert validate_dataset(out).ok == 1


@pytest.mark.parametrize("sid, grade, split, masks, message", [
    ("a/b", 0, None, {}, r"^sample 'a/b': invalid id 'a/b'$"),
    ("a", 0, None, {"lesion": b"png"}, r"^unknown mask names \['lesion'\]; expected vessel, disc,"),
    ("a", 5, None, {}, r"^sample 'a': grade 5 / split None invalid$"),
    ("a", -1, None, {}, r"^sample 'a': grade -1 / split None invalid$"),
    ("a", 1, "holdout", {}, r"^sample 'a': grade 1 / split 'holdout' invalid$"),
])
def test_the_writer_refuses_what_a_reader_would_refuse(tmp_path, sid, grade, split, masks, message):
    from drgan.data.dataset_writer import DatasetWriter

    writer = DatasetWriter(tmp_path / "out")
    try:
        with pytest.raises(DrganError, match=message):
            writer.add_encoded(sid, b"png", masks, grade, split)
        assert list((tmp_path / "out" / "images").iterdir()) == [] and writer.rows == []
    finally:
        writer.__exit__(DrganError, None, None)


def test_the_writer_refuses_an_id_it_was_given_before(tmp_path):
    from drgan.data.dataset_writer import DatasetWriter

    with pytest.raises(DrganError, match=r"^duplicate id 'a'$"):
        with DatasetWriter(tmp_path / "out") as writer:
            writer.add("a", np.zeros((64, 64, 3), np.uint8), {}, 0)
            writer.add("a", np.full((64, 64, 3), 9, np.uint8), {}, 1)
    assert not (tmp_path / "out").exists()


def test_a_failed_write_into_an_empty_folder_leaves_it_empty_and_unlocked(tmp_path):
    """The folder was the user's: it stays, as empty as it was, and no lock of it is kept."""
    from drgan import locks
    from drgan.data.dataset_writer import DatasetWriter

    out = tmp_path / "given"
    out.mkdir()
    with pytest.raises(DrganError):
        with DatasetWriter(out) as writer:
            writer.add("a", np.zeros((64, 64, 3), np.uint8), {}, 0)
            writer.add("b", np.zeros((64, 64, 3), np.uint8), {}, 9)
    assert out.is_dir() and list(out.iterdir()) == [] and not locks.holds(out)


def test_a_failed_write_into_a_new_folder_removes_it_and_keeps_no_lock(tmp_path):
    from drgan import locks
    from drgan.data.dataset_writer import DatasetWriter

    out = tmp_path / "new"
    with pytest.raises(DrganError):
        with DatasetWriter(out) as writer:
            writer.add("b", np.zeros((64, 64, 3), np.uint8), {}, 9)
    assert not out.exists() and not locks.holds(out)


def test_a_finished_dataset_holds_its_files_alone(tmp_path):
    """No marker and no lock file are left beside images/, masks/ and labels.csv."""
    from drgan import locks
    from drgan.data.dataset_writer import DatasetWriter

    out = tmp_path / "out"
    with DatasetWriter(out) as writer:
        writer.add("a", np.zeros((64, 64, 3), np.uint8), {}, 0)
        writer.close()
    assert sorted(p.name for p in out.iterdir()) == ["images", "labels.csv", "masks"] and not locks.holds(out)


def test_a_folder_that_is_not_empty_is_refused_untouched(tmp_path):
    from drgan.data.dataset_writer import DatasetWriter

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    with pytest.raises(DrganError, match=r"mine: output folder exists and is not empty$"):
        DatasetWriter(out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_labels_csv_keeps_given_splits_beside_rows_without_one(tmp_path):
    from drgan.data.dataset_writer import DatasetWriter

    with DatasetWriter(tmp_path / "out") as writer:
        writer.add("a", np.zeros((64, 64, 3), np.uint8), {}, 0, "test")
        writer.add("b", np.zeros((64, 64, 3), np.uint8), {}, 3)
        root = writer.close()
    assert read_labels(root) == ([("a", 0, "test"), ("b", 3, None)], [])
    with DatasetWriter(tmp_path / "bare") as writer:
        writer.add("a", np.zeros((64, 64, 3), np.uint8), {}, 2)
        root = writer.close()
    assert (root / "labels.csv").read_text().splitlines() == ["id,grade", "a,2"]


def test_extra_files_are_written_under_the_dataset_folder(tmp_path):
    from drgan.data.dataset_writer import DatasetWriter

    overlay = np.full((64, 64, 3), 200, np.uint8)
    with DatasetWriter(tmp_path / "out") as writer:
        (writer.root / "overlays").mkdir()
        writer.add("a", np.zeros((64, 64, 3), np.uint8), {}, 0, extra={"overlays/a.png": overlay})
        root = writer.close()
    assert np.array_equal(np.asarray(Image.open(root / "overlays" / "a.png")), overlay)


# --- contact sheets -------------------------------------------------------------------------------


def _tile(value: int, side: int = 8) -> np.ndarray:
    return np.full((side, side, 3), value, np.uint8)


def test_a_contact_sheet_places_each_tile_in_its_row_and_column(tmp_path):
    from drgan.data.contact_sheet import GAP, LABEL_W, save_contact_sheet

    rows_ = [[_tile(40)], [_tile(10), _tile(20), _tile(30)]]
    sheet = np.asarray(Image.open(save_contact_sheet(rows_, tmp_path / "s.png")))
    assert sheet.shape == (2 * (8 + GAP) + GAP, 3 * (8 + GAP) + GAP, 3)
    for i, row in enumerate(rows_):
        for j, tile in enumerate(row):
            y, x = GAP + i * (8 + GAP), GAP + j * (8 + GAP)
            assert np.array_equal(sheet[y:y + 8, x:x + 8], tile), (i, j)
    assert (sheet[GAP + 8:2 * GAP + 8] == 24).all()             # the gap between the rows
    labelled = np.asarray(Image.open(save_contact_sheet(rows_, tmp_path / "l.png", ["grade 0", "grade 4"])))
    assert labelled.shape[1] == LABEL_W + sheet.shape[1]
    assert np.array_equal(labelled[:, LABEL_W:][GAP:GAP + 8, GAP:GAP + 8], rows_[0][0])


def test_contact_sheet_tiles_take_the_first_tiles_size(tmp_path):
    from drgan.data.contact_sheet import GAP, save_contact_sheet

    big = np.zeros((16, 16, 3), np.uint8)
    big[8:] = 200                                   # dark top half, bright bottom half
    sheet = np.asarray(Image.open(save_contact_sheet([[_tile(50, 8), big]], tmp_path / "s.png")))
    assert sheet.shape == (8 + 2 * GAP, 2 * (8 + GAP) + GAP, 3)
    placed = sheet[GAP:GAP + 8, 2 * GAP + 8:2 * GAP + 16].astype(int)
    assert placed[:3].max() < 60 and placed[5:].min() > 140     # the whole tile, scaled down; not its corner


def test_only_this_programs_sheets_count_as_contact_sheets(tmp_path):
    """A rerun may replace its own sheet; a photograph saved as PNG at that path is not one."""
    from drgan.data.contact_sheet import is_contact_sheet, save_contact_sheet

    Image.fromarray(_tile(7)).save(tmp_path / "photo.png")
    (tmp_path / "notes.png").write_text("not an image")
    assert is_contact_sheet(save_contact_sheet([[_tile(7)]], tmp_path / "sheet.png"))
    assert not is_contact_sheet(tmp_path / "photo.png") and not is_contact_sheet(tmp_path / "notes.png")


@pytest.mark.parametrize("rows_, labels, message", [
    ([], None, r"^contact sheet: no images$"),
    ([[], []], None, r"^contact sheet: no images$"),
    ([[_tile(1)]], ["a", "b"], r"^contact sheet: 2 labels for 1 rows$"),
    ([[_tile(1), np.zeros((8, 8, 3), np.float32)]], None, r"^contact sheet: tile \(0, 1\) must be uint8 \(H, W, 3\), got float32"),
    ([[_tile(1), np.zeros((8, 8, 4), np.uint8)]], None, r"^contact sheet: tile \(0, 1\) must be uint8 \(H, W, 3\), got uint8 \(8, 8, 4\)"),
])
def test_a_contact_sheet_of_bad_tiles_is_refused_and_not_written(tmp_path, rows_, labels, message):
    from drgan.data.contact_sheet import save_contact_sheet

    with pytest.raises(DrganError, match=message):
        save_contact_sheet(rows_, tmp_path / "s.png", labels)
    assert not (tmp_path / "s.png").exists()


# --- phantoms -------------------------------------------------------------------------------------


def _vessels(root):
    return [(root / "masks" / sid / "vessel.png").read_bytes() for sid, *_ in rows(root)[1:]]


def test_phantom_datasets_draw_a_new_retina_per_item_and_per_seed(tmp_path):
    """Item i of a dataset depends on (seed, i): no two items, of one seed or of neighbouring
    seeds, share a vessel tree."""
    a = _vessels(write_phantom_dataset(tmp_path / "a", count=3, size=64, seed=3))
    b = _vessels(write_phantom_dataset(tmp_path / "b", count=3, size=64, seed=4))
    assert len(set(a + b)) == 6


def test_phantom_splits_give_every_grade_val_and_test_rows_early(tmp_path):
    """Of every ten phantoms of a grade: train, val, train, test, then train; so four of each grade
    already give each split."""
    root = write_phantom_dataset(tmp_path / "ph", count=20, size=64, seed=0)
    by_grade = {}
    for _, grade, split in rows(root)[1:]:
        by_grade.setdefault(grade, []).append(split)
    assert by_grade == {str(g): ["train", "val", "train", "test"] for g in range(5)}


def test_phantom_datasets_without_splits_have_no_split_column(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph", count=2, size=64, seed=0, split=False)
    assert rows(root) == [["id", "grade"], ["phantom_000000", "0"], ["phantom_000001", "1"]]


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 3, "grades": [0, 1]}, r"^got 2 grades for 3 samples$"),
    ({"count": 2, "grades": [0, 7]}, r"^grades \[7\] are outside 0..4$"),
    ({"count": 0}, r"count 0: outside 1\.\.1000000$"),
])
def test_phantom_datasets_refuse_bad_counts_and_grades_before_writing(tmp_path, kwargs, message):
    with pytest.raises(DrganError, match=message):
        write_phantom_dataset(tmp_path / "ph", size=64, seed=0, **kwargs)
    assert not (tmp_path / "ph").exists()


def test_phantom_size_limits():
    from drgan.data.phantom import MIN_SIZE, render_structure

    assert render_structure(MIN_SIZE, 0)["fov"].shape == (MIN_SIZE, MIN_SIZE)
    with pytest.raises(DrganError, match=f"phantom size {MIN_SIZE - 1} is below the minimum of {MIN_SIZE} px"):
        render_structure(MIN_SIZE - 1, 0)


def test_phantoms_are_black_outside_the_field_of_view():
    from drgan.data.phantom import render_phantom

    ph = render_phantom(64, 2, seed=1)
    yy, xx = np.mgrid[0:64, 0:64]
    outside = np.hypot(yy - 31.5, xx - 31.5) > 31.5 + 1
    assert outside.any() and (ph.image[outside] == 0).all()
    assert (ph.image[np.hypot(yy - 31.5, xx - 31.5) < 28].max(axis=1) > 0).all()


def test_phantom_eyes_are_left_and_right(tmp_path):
    """The disc lies right of the centre in some phantoms, left in others (mirrored eyes)."""
    from drgan.data.phantom import render_structure

    sides = {bool(np.nonzero(render_structure(64, s)["disc"])[1].mean() > 31.5) for s in range(12)}
    assert sides == {True, False}


# --- lesion statistics fit on a dataset's masks ---------------------------------------------------


def _square(mask: np.ndarray, row: int, col: int, half: int) -> None:
    mask[row - half:row + half + 1, col - half:col + half + 1] = 255


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Phantoms of grades 0, 1, 2, 3, 4, 4 whose lesion masks are replaced by known ones: grade 2
    has a 3x3 disc at (31, 11), a 3x3 and a 5x5 microaneurysm and one haemorrhage of three pixels
    touching at their corners; grade 3 has no disc mask and one 3x3 exudate; the second grade-4
    eye (a test row) alone has a laser scar."""
    from drgan.data.lesion_stats import LESION_TYPES

    root = write_phantom_dataset(tmp_path_factory.mktemp("drawn") / "ph", count=6, size=64, seed=8, grades=[0, 1, 2, 3, 4, 4])
    for folder in (root / "masks").iterdir():
        for t in LESION_TYPES:
            (folder / f"{t}.png").unlink(missing_ok=True)
    blank = np.zeros((64, 64), np.uint8)
    g2 = root / "masks" / "phantom_000002"
    disc, ma, he = blank.copy(), blank.copy(), blank.copy()
    _square(disc, 31, 11, 1)
    _square(ma, 31, 27, 1)
    _square(ma, 45, 40, 2)
    he[20, 20] = he[21, 21] = he[22, 22] = 255
    for name, m in (("disc", disc), ("ma", ma), ("he", he)):
        Image.fromarray(m).save(g2 / f"{name}.png")
    (root / "masks" / "phantom_000003" / "disc.png").unlink()
    write_rows(root, [r if r[0] != "phantom_000005" else [r[0], r[1], "test"] for r in rows(root)])
    laser = blank.copy()
    _square(laser, 40, 30, 2)
    Image.fromarray(laser).save(root / "masks" / "phantom_000005" / "laser.png")
    return root


def _fov_radius(root, sid):
    from drgan.data.preprocess import detect_fov

    fov = detect_fov(np.asarray(Image.open(root / "images" / f"{sid}.png").convert("RGB")))
    return fov, float(np.sqrt(fov.sum() / np.pi))


def test_fitted_counts_take_one_lesion_per_8_connected_component(drawn):
    from drgan.data.lesion_fit import fit_lesion_stats

    g2 = fit_lesion_stats(drawn).grades[2]
    assert g2["ma"].count_hist == [0.0, 0.0, 1.0]
    assert g2["he"].count_hist == [0.0, 1.0]
    assert g2["ex"].count_hist == [1.0]


def test_fitted_sizes_are_log_fractions_of_the_field_of_view(drawn):
    from drgan.data.lesion_fit import fit_lesion_stats

    fov, _ = _fov_radius(drawn, "phantom_000002")
    logs = np.log(np.array([9, 25]) / fov.sum())
    ma = fit_lesion_stats(drawn).grades[2]["ma"]
    assert ma.log_area_mean == pytest.approx(logs.mean(), abs=1e-9)
    assert ma.log_area_std == pytest.approx(logs.std(), abs=1e-9)     # that of the areas measured


def test_fitted_distances_are_from_the_disc_centre_in_fov_radii(drawn):
    from drgan.data.lesion_fit import fit_lesion_stats
    from drgan.data.lesion_stats import DIST_BINS, DIST_MAX

    _, R = _fov_radius(drawn, "phantom_000002")
    d = np.hypot([0, 14], [16, 29]) / R      # the two microaneurysms from the disc at (31, 11)
    want = np.histogram(d, bins=DIST_BINS, range=(0, DIST_MAX))[0] / 2
    assert fit_lesion_stats(drawn).grades[2]["ma"].dist_hist == pytest.approx(want.tolist())


def test_without_a_disc_mask_distances_are_from_where_the_disc_is_expected(drawn):
    """No disc mask: the disc is taken 0.4 FOV radii right of the FOV centre."""
    from drgan.data.lesion_fit import fit_lesion_stats

    folder = drawn.parent / "nodisc"
    copy_dataset(drawn, folder)
    fov, R = _fov_radius(folder, "phantom_000003")
    rows_, cols = np.nonzero(fov)
    cy, cx = rows_.mean(), cols.mean() + 0.4 * R
    ex = np.zeros((64, 64), np.uint8)
    _square(ex, round(cy), round(cx), 1)
    Image.fromarray(ex).save(folder / "masks" / "phantom_000003" / "ex.png")
    hist = fit_lesion_stats(folder).grades[3]["ex"].dist_hist
    assert hist[0] == 1.0, hist


def test_fitting_reads_the_train_rows_unless_told_otherwise(drawn):
    """The laser scar of the grade-4 test eye is not learnt by default, and is with split=None."""
    from drgan.data.lesion_fit import fit_lesion_stats

    assert fit_lesion_stats(drawn).grades[4]["laser"].count_hist == [1.0]
    assert fit_lesion_stats(drawn, split=None).grades[4]["laser"].count_hist == [0.5, 0.5]


# --- structural masks from a photograph -----------------------------------------------------------


def test_the_overlay_tints_vessels_cyan_and_outlines_disc_yellow_and_fov_green():
    from drgan.data.masks import overlay

    image = np.full((40, 40, 3), 100, np.uint8)
    vessel, disc, fov = (np.zeros((40, 40), np.uint8) for _ in range(3))
    vessel[5, 5:15] = 255
    disc[20:30, 20:30] = 255
    fov[2:38, 2:38] = 255
    out = overlay(image, {"vessel": vessel, "disc": disc, "fov": fov})
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out[5, 5:15] == [40, 193, 193]).all()                # 0.4 * 100 + 0.6 * (0, 255, 255)
    assert (out[20, 20:30] == [255, 255, 0]).all() and (out[25, 25] == 100).all()   # the disc's edge only
    assert (out[2, 2:38] == [0, 255, 0]).all() and (out[0, 0] == 100).all() and (out[10, 20] == 100).all()


def test_masks_extracted_from_a_phantom_lie_on_its_vessels_and_disc():
    """A phantom is a photograph whose structure is known: the extracted vessels lie on its drawn
    vessels and find most of them; the disc is found where it was drawn."""
    from drgan.data.masks import extract_structure
    from drgan.data.phantom import render_phantom

    ph = render_phantom(128, 0, seed=3)
    st = extract_structure(ph.image)
    found, drawn = st["vessel"] > 0, ph.masks["vessel"] > 0
    assert (found & drawn).sum() > 0.85 * found.sum() and (found & drawn).sum() > 0.6 * drawn.sum()
    centre = np.argwhere(ph.masks["disc"] > 0).mean(0)
    assert np.hypot(*(np.array(st["disc_center"]) - centre)) < 6
    disc = st["disc"] > 0
    assert (disc & (ph.masks["disc"] > 0)).sum() > 0.5 * disc.sum()
    assert not (disc & (st["fov"] == 0)).any() and not (found & (st["fov"] == 0)).any()


# --- the validation report ------------------------------------------------------------------------


def test_an_eye_without_a_split_is_apart_only_where_the_hash_puts_it_elsewhere(clean, tmp_path):
    """Readers split a row without one by its patient's hash: an eye given that same split and
    its fellow eye without one are together, not in two splits."""
    from drgan.data.labels import hash_split

    together = next(f"{n}_left" for n in range(100) if hash_split(f"{n}_left") == "train")
    apart = next(f"{n}_left" for n in range(100) if hash_split(f"{n}_left") == "val")
    names = [together, together.replace("_left", "_right"), apart, apart.replace("_left", "_right"), "solo"]
    splits = ["train", "", "train", "", ""]
    root = copy_dataset(clean, tmp_path / "eyes")
    header, *body = rows(root)
    for (sid, *_), name in zip(body, names):
        (root / "images" / f"{sid}.png").rename(root / "images" / f"{name}.png")
        (root / "masks" / sid).rename(root / "masks" / name)
    write_rows(root, [header] + [[n, r[1], sp] for n, r, sp in zip(names, body, splits)])
    report = validate_dataset(root)
    assert report.problems == [] and report.apart == [apart.removesuffix("_left")]


def _report(**kw):
    from drgan.data.validation import ValidationReport

    base = dict(root="d", checked=0, ok=0, problems=[], notes=[], grades={}, splits={}, masks={"vessel": 0}, apart=[])
    return ValidationReport(**{**base, **kw})


def test_the_report_names_five_patients_apart_and_says_there_are_more():
    text = _report(ok=7, checked=7, apart=[f"p{i}" for i in range(7)], masks={"vessel": 7}).render()
    assert "\npatients with images in more than one split (7): p0, p1, p2, p3, p4, ...\n" in text
    five = _report(ok=5, checked=5, apart=[f"p{i}" for i in range(5)], masks={"vessel": 5}).render()
    assert "\npatients with images in more than one split (5): p0, p1, p2, p3, p4\n" in five


def test_a_report_without_usable_samples_says_nothing_about_mask_files():
    text = _report(problems=["d: no usable samples"]).render()
    assert "mask files" not in text and text.endswith("problems (1):\n  d: no usable samples")
    assert "\nmask files: none (a grader trains without them" in _report(ok=1, checked=1).render()


def test_validate_refuses_a_set_still_being_written_though_its_files_look_whole(clean, tmp_path):
    """Not a dataset with one problem: one that is still being written (its labels.csv already there)."""
    root = copy_dataset(clean, tmp_path / "ds")
    (root / UNFINISHED).write_bytes(b"drgan synthesize\n")
    with pytest.raises(DrganError, match=r"ds: unfinished \(the command writing it stopped"):
        validate_dataset(root)
    with pytest.raises(DrganError, match=r"ds: unfinished \(the command writing it stopped"):
        open_dataset(root, skip_bad=True)


def test_masks_of_a_photograph_larger_than_the_working_size_keep_their_coverage():
    """The work happens at WORK_SIDE pixels; scaled back to a 768 px photograph, the vessels cover
    what they cover at the working size (thin vessels neither thickened nor lost)."""
    from drgan.data.masks import WORK_SIDE, extract_structure
    from drgan.data.phantom import render_phantom

    big = render_phantom(768, 0, seed=3).image
    small = np.asarray(Image.fromarray(big).resize((WORK_SIDE, WORK_SIDE), Image.Resampling.BILINEAR))
    a, b = extract_structure(big), extract_structure(small)
    assert a["vessel"].shape == (768, 768)
    for name in ("vessel", "disc", "fov"):
        ratio = (a[name] > 0).mean() / (b[name] > 0).mean()
        assert 0.9 < ratio < 1.15, (name, ratio)
    assert np.allclose(np.array(a["disc_center"]), np.array(b["disc_center"]) * 768 / WORK_SIDE, atol=3)


def test_vessels_are_found_in_the_green_channel_where_red_is_saturated():
    """Fundus photographs often saturate red; the vessels' contrast is in green."""
    from drgan.data.masks import extract_structure
    from drgan.data.phantom import render_phantom

    ph = render_phantom(128, 0, seed=3)
    image = ph.image.copy()
    image[..., 0] = np.where(ph.image.max(axis=2) > 0, 230, 0)
    found, drawn = extract_structure(image)["vessel"] > 0, ph.masks["vessel"] > 0
    assert (found & drawn).sum() > 0.85 * found.sum() and (found & drawn).sum() > 0.6 * drawn.sum()


def test_extracted_vessels_have_no_specks():
    """Components smaller than a vessel segment (10 px at the working size) are noise, not vessels."""
    from scipy import ndimage

    from drgan.data.masks import extract_structure
    from drgan.data.phantom import render_phantom

    image = render_phantom(128, 0, seed=3).image.copy()
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(30, 98, 40), rng.integers(30, 98, 40)
    image[ys, xs] = image[ys, xs] // 3                     # isolated dark pixels
    labels, n = ndimage.label(extract_structure(image)["vessel"] > 0, structure=np.ones((3, 3), bool))
    assert n > 0 and np.bincount(labels.ravel())[1:].min() >= 10


def test_fitted_counts_are_capped_at_the_most_lesions_statistics_allow(tmp_path):
    """A mask of 2304 separate dots fits counts that the statistics file can hold (saved and loaded)."""
    from drgan.data.lesion_fit import fit_lesion_stats
    from drgan.data.lesion_stats import MAX_LESIONS, LesionStats

    root = write_phantom_dataset(tmp_path / "ph", count=1, size=96, seed=0)
    dots = np.zeros((96, 96), np.uint8)
    dots[::2, ::2] = 255
    Image.fromarray(dots).save(root / "masks" / "phantom_000000" / "ma.png")
    stats = fit_lesion_stats(root)
    hist = stats.grades[0]["ma"].count_hist
    assert len(hist) == MAX_LESIONS + 1 and hist[-1] == 1.0
    stats.save(tmp_path / "stats.json")
    assert LesionStats.load(tmp_path / "stats.json").grades[0]["ma"].count_hist == hist


def test_a_bright_area_larger_than_a_disc_gives_a_disc_of_anatomical_size():
    """The disc circle is at most 0.16 FOV radii however far the bright area around it reaches."""
    import math

    from drgan.data.masks import extract_structure

    yy, xx = np.mgrid[0:128, 0:128]
    fov = np.hypot(yy - 63.5, xx - 63.5) <= 60
    image = np.zeros((128, 128, 3), np.uint8)
    image[fov] = np.clip(np.array([150, 70, 30]) + np.random.default_rng(0).normal(0, 3, (128, 128, 1)), 0, 255)[fov]
    image[fov & (np.hypot(yy - 63.5, xx - 103.5) <= 20)] = (250, 230, 150)   # a bright area of 0.33 FOV radii
    st = extract_structure(image)
    R = math.sqrt((st["fov"] > 0).sum() / math.pi)
    assert 0 < (st["disc"] > 0).sum() <= 1.1 * math.pi * (0.16 * R) ** 2
