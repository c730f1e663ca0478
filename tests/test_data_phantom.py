"""Phantom retinas: determinism, masks that match the drawing, lesion burden per grade, CLI."""
import hashlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from drgan.cli import cli
from drgan.config import COND_CHANNELS
from drgan.data.validation import validate_dataset
from drgan.data.phantom import render_phantom, render_structure, write_phantom_dataset
from drgan.errors import DrganError


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    a = write_phantom_dataset(tmp_path / "a", count=5, size=64, seed=3)
    b = write_phantom_dataset(tmp_path / "b", count=5, size=64, seed=3)
    c = write_phantom_dataset(tmp_path / "c", count=5, size=64, seed=4)
    d = write_phantom_dataset(tmp_path / "d", count=5, size=64, seed=3, workers=2)
    assert digest(a) == digest(b) == digest(d) != digest(c)


def test_phantom_contract():
    ph = render_phantom(128, 4, seed=7)
    assert ph.image.dtype == np.uint8 and ph.image.shape == (128, 128, 3)
    assert list(ph.masks) == list(COND_CHANNELS)
    for m in ph.masks.values():
        assert m.dtype == np.uint8 and m.shape == (128, 128) and set(np.unique(m)) <= {0, 255}
    assert ph.grade == 4 and set(ph.lesion_counts) == {"ma", "he", "ex", "se", "laser", "membrane"}
    st = render_structure(128, seed=7)
    assert set(st) == {"vessel", "disc", "fov"}
    assert np.array_equal(st["vessel"], ph.masks["vessel"]) and np.array_equal(st["disc"], ph.masks["disc"])
    with pytest.raises(DrganError, match="grade 7"):
        render_phantom(64, 7, 0)


def test_structure_is_anatomical():
    st = render_structure(256, seed=11)
    fov, disc, vessel = (st[k] > 0 for k in ("fov", "disc", "vessel"))
    frac = vessel[fov].mean()
    assert 0.04 < frac < 0.25                                  # a vessel tree, not specks or a flood
    labels, n = ndimage.label(vessel, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.max() > 0.5 * vessel.sum()                    # one tree, connected through the disc
    assert np.any(vessel & ndimage.binary_dilation(disc, iterations=2))   # rooted at the disc
    assert not np.any(vessel & ~fov)


@pytest.mark.parametrize("seed", range(4))
def test_masks_match_what_is_drawn(seed):
    ph = render_phantom(192, 3 + seed % 2, seed)
    img = ph.image.astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    he = ph.masks["he"] > 0
    assert he.sum() > 0
    # Every haemorrhage pixel is reddish-dark: red dominates, and it is darker than the fundus.
    fundus = (ph.masks["vessel"] == 0) & (sum(ph.masks[k] for k in ph.masks if k != "vessel") == 0)
    fundus &= ndimage.binary_erosion(img.max(axis=2) > 20, iterations=3)
    assert np.all(r[he] > g[he] + 20) and np.all(r[he] > b[he] + 20)
    assert np.median(img[he].sum(1)) < 0.8 * np.median(img[fundus].sum(1))
    # Exudates are yellowish-bright: green well above the fundus's green.
    ex = (ph.masks["ex"] > 0) & (ph.masks["he"] == 0)
    if ex.any():
        assert np.all(g[ex] > np.median(g[fundus]) + 25)
    # Each lesion is one connected component, and the counts say how many were drawn.
    for t, n in ph.lesion_counts.items():
        assert ndimage.label(ph.masks[t] > 0, structure=np.ones((3, 3)))[1] == n, t
    # The disc (between its vessels) is the brightest structure.
    disc = (ph.masks["disc"] > 0) & (ph.masks["vessel"] == 0)
    assert np.median(img[disc].sum(1)) > 1.5 * np.median(img[fundus].sum(1))


def test_lesion_burden_grows_with_grade():
    area = np.zeros(5)
    for g in range(5):
        for s in range(6):
            ph = render_phantom(128, g, 100 + s)
            area[g] += sum((ph.masks[t] > 0).sum() for t in ("ma", "he", "ex", "se", "laser", "membrane"))
    assert area[0] == 0
    assert np.all(np.diff(area) > 0), area


def test_cli_phantom_and_contact_sheet(tmp_path):
    out, sheet = tmp_path / "ph", tmp_path / "sheet.png"
    res = CliRunner().invoke(cli, ["phantom", "--out", str(out), "--count", "10", "--size", "64", "--seed", "2",
                                   "--contact-sheet", str(sheet)])
    assert res.exit_code == 0, res.output
    report = validate_dataset(out)
    assert report.ok == 10 and report.problems == [] and report.grades == {g: 2 for g in range(5)}
    img = Image.open(sheet)
    assert img.size[1] > 5 * 64     # five rows of grades
    res = CliRunner().invoke(cli, ["data", "contact-sheet", str(out), "--out", str(tmp_path / "s2.png"), "--size", "48"])
    assert res.exit_code == 0 and (tmp_path / "s2.png").is_file()
    res = CliRunner().invoke(cli, ["phantom", "--out", str(out), "--count", "3"])
    assert res.exit_code != 0 and "not empty" in str(res.exception or res.output)


def test_folder_of_a_killed_writer_is_written_again(tmp_path):
    """A writer killed mid-way leaves a folder no reader takes and that the same command, rerun,
    clears and writes again; while the writer lives, a second one is refused."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "data"
    code = ("import sys, time\nfrom drgan.data.dataset_writer import DatasetWriter\nimport numpy as np\n"
            f"w = DatasetWriter({str(out)!r})\nw.add('a', np.zeros((64, 64, 3), np.uint8), {{}}, 0)\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(DrganError, match="in use by another drgan process"):
            write_phantom_dataset(out, count=5, size=64, seed=3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "images" / "a.png").is_file()
    with pytest.raises(DrganError, match=r"unfinished \(the command writing it stopped"):
        validate_dataset(out)
    write_phantom_dataset(out, count=5, size=64, seed=3)
    assert digest(out) == digest(write_phantom_dataset(tmp_path / "fresh", count=5, size=64, seed=3))
    with pytest.raises(DrganError, match="output folder exists and is not empty"):  # a finished dataset is kept
        write_phantom_dataset(out, count=5, size=64, seed=3)


def test_pool_workers_leave_ctrl_c_to_the_main_process():
    """Ctrl-C reaches every process of the group: workers that took it printed a traceback each."""
    import signal

    from drgan.workers import process_pool

    pool = process_pool(2, jobs=10)
    try:
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
    finally:
        pool.terminate()


def test_pool_starts_no_more_workers_than_jobs(monkeypatch):
    """Each worker starts a Python with torch: 1000 asked for 2 images would take minutes."""
    import multiprocessing.context

    from drgan.workers import process_pool

    started = []
    monkeypatch.setattr(multiprocessing.context.SpawnContext, "Pool", lambda self, n, **kwargs: started.append(n))
    process_pool(1000, jobs=2)
    process_pool(3, jobs=0)
    assert started == [2, 1]
