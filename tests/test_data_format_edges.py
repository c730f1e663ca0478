"""The dataset format at its edges: labels.csv headers, ids, rows and the hash split; stray, hidden and
unknown files; header-only checks; what validation reports and counts."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from drgan.config import MIN_SIDE
from drgan.data.format import open_dataset
from drgan.data.labels import MAX_ID_BYTES, hash_split, id_problem, moved_by_patient, patient_id, read_labels
from drgan.data.phantom import write_phantom_dataset
from drgan.data.validation import validate_dataset
from drgan.errors import DrganError
from helpers import copy_dataset, rows, write_rows


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("format_edges") / "clean", count=5, size=64, seed=2)


def test_validate_reports_a_bad_labels_header_as_the_one_problem(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    write_rows(root, [["name", "grade"]] + rows(clean)[1:])
    report = validate_dataset(root)
    assert report.ok == 0 and report.checked == 0
    assert report.problems == [f"{root / 'labels.csv'}: header must be id,grade[,split], got name,grade"]


def test_validate_raises_for_a_folder_without_labels_csv(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    (root / "labels.csv").unlink()
    with pytest.raises(DrganError, match="labels.csv: labels file not found"):
        validate_dataset(root)


# --- labels.csv -----------------------------------------------------------------------------------




def test_hash_split_sends_the_first_tenth_of_the_sha256_range_to_val():
    ids = [f"img{i}" for i in range(2000)]
    fractions = [int(hashlib.sha256(s.encode()).hexdigest()[:16], 16) / 2**64 for s in ids]
    assert [hash_split(s) for s in ids] == ["val" if f < 0.1 else "train" for f in fractions]
    assert 150 < sum(hash_split(s) == "val" for s in ids) < 250


def test_hash_split_gives_a_patients_eyes_one_part_and_names_the_rows_earlier_versions_put_elsewhere(tmp_path):
    patients = [str(n) for n in range(300)]
    fractions = [int(hashlib.sha256(p.encode()).hexdigest()[:16], 16) / 2**64 for p in patients]
    assert [hash_split(f"{p}_left") for p in patients] == ["val" if f < 0.1 else "train" for f in fractions]
    assert all(hash_split(f"{p}_left") == hash_split(f"{p}_Right") for p in patients)
    assert [patient_id(s) for s in ("7_left", "7_RIGHT", "_left", "left", "7_lefty")] == ["7", "7", "_left", "left", "7_lefty"]
    root = tmp_path / "d"
    root.mkdir()
    (root / "labels.csv").write_text("id,grade,split\n2_left,0,\n2_right,0,train\n0_left,0,\nimg5,0,\n")
    assert moved_by_patient(root) == ["2_left"]  # 2_left's own hash and its patient's differ; 0_left's agree


@pytest.mark.parametrize("sid", ["", "a/b", "a\\b", ".hidden", " padded", "padded "])
def test_ids_that_cannot_name_a_file_have_a_problem(sid):
    assert id_problem(sid) is not None


def test_an_id_of_exactly_max_bytes_is_allowed_one_more_is_not():
    assert id_problem("x" * MAX_ID_BYTES) is None
    assert id_problem("é" * (MAX_ID_BYTES // 2)) is None
    assert "201 bytes long" in id_problem("x" * (MAX_ID_BYTES + 1))
    assert id_problem("plain_id-01.a") is None


@pytest.mark.parametrize("header", ["id,label", "id,grade,split,extra", "id,grade,fold", "grade,id"])
def test_a_labels_header_other_than_id_grade_split_is_refused(tmp_path, header):
    (tmp_path / "labels.csv").write_text(header + "\na,1\n")
    with pytest.raises(DrganError, match="header must be id,grade\\[,split\\]"):
        read_labels(tmp_path)


def test_a_labels_header_is_case_and_space_insensitive(tmp_path):
    (tmp_path / "labels.csv").write_text(" ID , Grade ,SPLIT\na,1,val\n")
    assert read_labels(tmp_path) == ([("a", 1, "val")], [])


def test_a_labels_file_not_in_utf8_is_one_clear_error(tmp_path):
    (tmp_path / "labels.csv").write_bytes("id,grade\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DrganError, match="labels.csv: unreadable labels file"):
        read_labels(tmp_path)


def test_blank_and_whitespace_rows_are_skipped_not_problems(tmp_path):
    (tmp_path / "labels.csv").write_text("id,grade,split\n\na,1,train\n  ,  ,  \n,,\nb,2,\n")
    assert read_labels(tmp_path) == ([("a", 1, "train"), ("b", 2, None)], [])


def test_a_row_with_the_wrong_column_count_is_one_problem_and_no_row(tmp_path):
    (tmp_path / "labels.csv").write_text("id,grade,split\na,1,train,x\nb,2\nc,3,val\n")
    rows_, problems = read_labels(tmp_path)
    assert rows_ == [("c", 3, "val")]
    assert [p[0] for p in problems] == ["a", "b"]
    assert problems[0][1].endswith("labels.csv:2: expected 3 columns, got 4")


def test_a_row_with_the_wrong_column_count_is_counted_once(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    write_rows(root, rows(clean) + [["phantom_000001x", "1", "train", "extra"]])
    report = validate_dataset(root)
    assert report.checked == 6 and report.ok == 5 and len(report.problems) == 1
    assert "expected 3 columns, got 4" in report.problems[0]


def test_a_duplicate_id_keeps_the_first_row_only(tmp_path):
    (tmp_path / "labels.csv").write_text("id,grade\na,1\na,2\nb,0\n")
    rows_, problems = read_labels(tmp_path)
    assert rows_ == [("a", 1, None), ("b", 0, None)]
    assert len(problems) == 1 and problems[0][0] == "a" and "labels.csv:3: duplicate id 'a'" in problems[0][1]


def test_a_row_whose_grade_is_not_an_integer_is_left_out(tmp_path):
    (tmp_path / "labels.csv").write_text("id,grade,split\na,1,train\nb,two,train\nc,1.0,val\n")
    rows_, problems = read_labels(tmp_path)
    assert rows_ == [("a", 1, "train")]
    assert [sid for sid, _ in problems] == ["b", "c"] and "grade 'two' of 'b' is not an integer" in problems[0][1]


def test_a_row_whose_grade_is_outside_0_to_4_is_left_out(tmp_path):
    (tmp_path / "labels.csv").write_text("id,grade\na,4\nb,5\nc,-1\nd,0\n")
    rows_, problems = read_labels(tmp_path)
    assert rows_ == [("a", 4, None), ("d", 0, None)]
    assert [sid for sid, _ in problems] == ["b", "c"] and "grade 5 of 'b' is outside 0..4" in problems[0][1]


def test_a_row_with_an_unknown_split_is_left_out(tmp_path):
    (tmp_path / "labels.csv").write_text("id,grade,split\na,1,train\nb,2,Train\nc,3,holdout\nd,0,test\n")
    rows_, problems = read_labels(tmp_path)
    assert rows_ == [("a", 1, "train"), ("d", 0, "test")]
    assert [sid for sid, _ in problems] == ["b", "c"] and "split 'Train' of 'b' is not one of train, val, test" in problems[0][1]


@pytest.mark.parametrize("sid", ["a\x1fb", "a\x7fb", "\x00", "a\tb"])
def test_ids_with_control_characters_have_a_problem(sid):
    assert "holds a control character" in id_problem(sid)


def test_ids_with_inner_spaces_and_unicode_are_allowed():
    assert id_problem("left eye 01") is None and id_problem("oeil-\u00e9~1") is None


# --- dataset index (drgan.data.format) ------------------------------------------------------------




def test_a_file_or_a_missing_folder_given_as_a_dataset_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DrganError, match="f: is a file, expected a dataset folder"):
        open_dataset(tmp_path / "f")
    with pytest.raises(DrganError, match="nowhere: dataset folder not found"):
        open_dataset(tmp_path / "nowhere")


def test_an_unknown_split_is_refused_by_name(clean):
    with pytest.raises(DrganError, match="split 'tset' is not one of train, val, test"):
        open_dataset(clean, split="tset")


def test_hidden_files_are_ignored_in_images_and_masks(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    for folder in (root / "images", root / "masks", root / "masks" / "phantom_000001"):
        (folder / ".DS_Store").write_bytes(b"\0")
    assert validate_dataset(root).problems == []
    assert len(open_dataset(root).samples) == 5


def test_stray_files_in_images_and_masks_are_one_problem_each(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    (root / "images" / "notes.txt").write_text("x")
    (root / "masks" / "readme.txt").write_text("x")
    report = validate_dataset(root)
    assert report.ok == 5 and len(report.problems) == 2
    assert report.problems[0] == f"{root / 'images' / 'notes.txt'}: not a .png/.jpg image file"
    assert report.problems[1] == f"{root / 'masks' / 'readme.txt'}: masks without an image"
    index = open_dataset(root, skip_bad=True)
    assert len(index.samples) == 5 and index.skipped == 2


def test_skipped_counts_each_bad_sample_once_and_each_stray_file(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    (root / "images" / "notes.txt").write_text("x")
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(root / "masks" / "phantom_000002" / "he.png")
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(root / "masks" / "phantom_000003" / "he.png")
    index = open_dataset(root, skip_bad=True)
    assert index.skipped == 3 and sorted(s.id for s in index.samples) == ["phantom_000000", "phantom_000001", "phantom_000004"]


def _with_image(clean, root, side):
    root = copy_dataset(clean, root)
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(root / "images" / "edge.png")
    write_rows(root, rows(root) + [["edge", "0", "train"]])
    return root


def test_open_refuses_an_image_under_min_side_from_its_header(clean, tmp_path):
    assert len(open_dataset(_with_image(clean, tmp_path / "ok", MIN_SIDE)).samples) == 6
    with pytest.raises(DrganError, match=f"edge.png: too small \\({MIN_SIDE - 1}x{MIN_SIDE - 1} px"):
        open_dataset(_with_image(clean, tmp_path / "small", MIN_SIDE - 1))


def test_open_refuses_a_mask_of_another_size_from_its_header(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(root / "masks" / "phantom_000002" / "he.png")
    with pytest.raises(DrganError, match="he.png: mask is 80x64 px but its image is 64x64"):
        open_dataset(root)


def test_a_file_in_place_of_a_sample_mask_folder_is_a_problem(clean, tmp_path):
    import shutil

    root = copy_dataset(clean, tmp_path / "ds")
    shutil.rmtree(root / "masks" / "phantom_000001")
    (root / "masks" / "phantom_000001").write_bytes(b"x")
    report = validate_dataset(root)
    assert report.ok == 4 and report.problems == [f"{root / 'masks' / 'phantom_000001'}: expected a folder of mask PNGs"]


def test_unknown_mask_files_are_problems_and_skip_their_sample(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    folder = root / "masks" / "phantom_000001"
    (folder / "foo.png").write_bytes((folder / "ma.png").read_bytes())
    (folder / "ma.png").rename(folder / "ma.tif")
    (folder / ".hidden.png").write_bytes(b"x")
    report = validate_dataset(root)
    assert report.ok == 4 and len(report.problems) == 2
    assert all("unknown mask (expected vessel.png, disc.png" in p for p in report.problems)
    index = open_dataset(root, skip_bad=True)
    assert [s.id for s in index.samples] == ["phantom_000000", "phantom_000002", "phantom_000003", "phantom_000004"]


def test_given_splits_are_kept_and_only_rows_without_one_are_hashed(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    header, *body = rows(clean)
    for row, split in zip(body, ["val", "train", "test", "", ""]):
        row[2] = split
    write_rows(root, [header] + body)
    hashed = [row[0] for row in body[3:]]
    assert [s.id for s in open_dataset(root, split="test").samples] == ["phantom_000002"]
    val = [s.id for s in open_dataset(root, split="val").samples]
    assert val == ["phantom_000000"] + [sid for sid in hashed if hash_split(sid) == "val"]
    train = [s.id for s in open_dataset(root, split="train").samples]
    assert train == ["phantom_000001"] + [sid for sid in hashed if hash_split(sid) == "train"]


def test_the_first_problem_says_how_many_more_there_are(clean, tmp_path):
    one = copy_dataset(clean, tmp_path / "one")
    (one / "images" / "notes.txt").write_text("x")
    with pytest.raises(DrganError) as err:
        open_dataset(one)
    assert str(err.value) == f"{one / 'images' / 'notes.txt'}: not a .png/.jpg image file"
    (one / "images" / "more.txt").write_text("x")
    with pytest.raises(DrganError) as err:
        open_dataset(one)
    assert str(err.value).endswith("image file (and at least 1 more problem; `drgan data validate` lists them all)")


def test_an_image_without_a_row_is_reported_beside_another_rows_label_problem(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    header, *body = rows(clean)
    body[0][1] = "7"                                    # phantom_000000: a label problem, not "no row"
    write_rows(root, [header] + body[:4])               # phantom_000004: no row
    problems = validate_dataset(root).problems
    assert len(problems) == 2
    assert any("grade 7 of 'phantom_000000'" in p for p in problems)
    assert any(p.endswith("phantom_000004.png: no row in labels.csv") for p in problems)


def test_a_0_1_mask_with_one_solid_3x3_area_is_a_problem(clean, tmp_path):
    root = copy_dataset(clean, tmp_path / "ds")
    path = root / "masks" / "phantom_000000" / "ex.png"
    label = np.zeros((64, 64), np.uint8)
    label[20:23, 30:33] = 1
    Image.fromarray(label).save(path)
    assert validate_dataset(root).problems == [f"{path}: a 0/1 mask (its largest value is 1), which reads as nearly empty: "
                                               "store covered pixels as 255 (drgan data import does)"]


def test_no_labels_file_moves_no_row(tmp_path):
    assert moved_by_patient(tmp_path) == []
