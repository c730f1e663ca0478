"""drgan synthesize at its edges: refusals that leave a folder as it was, failed and cut writes,
shards, --verify, and what the fingerprint counts as another setup."""
import csv
import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from drgan import locks
from drgan.config import COND_CHANNELS
from drgan.errors import DrganError, ParameterError
from drgan.io import HOST, TEMP_MARK
from drgan.locks import LOCK_FILE
from drgan.synthesis import runner
from drgan.synthesis.plan import Plan
from drgan.synthesis.runner import synthesize
from drgan.synthesis.writer import MANIFEST_FIELDS
from helpers import dead_pid
from synthesis_fixtures import make_run
from test_synthesis import image_bytes, manifest, opts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "tiny")


def _interrupted(self, shard):
    raise KeyboardInterrupt


def _failing(self, shard):
    raise DrganError("the generator failed")


def test_an_unknown_format_is_one_error_before_the_folder_is_made(run, tmp_path):
    with pytest.raises(ParameterError, match="^format 'gif': choose one of png, jpeg"):
        synthesize(opts(run, tmp_path / "o", format="gif"))
    assert not (tmp_path / "o").exists()


def test_a_refused_folder_gets_no_lock_files(run, tmp_path):
    legacy = tmp_path / "legacy"
    (legacy / "images").mkdir(parents=True)
    with pytest.raises(DrganError, match="not a synthesized set"):
        synthesize(opts(run, legacy, count=2))
    assert [p.name for p in legacy.iterdir()] == ["images"]


def test_temp_files_beside_the_locks_make_no_set_of_their_own(run, tmp_path):
    """A folder holding only locks and temp files is a set not yet begun: a shard starting beside
    another sees that one's write probe and fingerprint temp, and a killed writer can leave them.
    A dead writer's are removed; a live one's stay for it."""
    out = tmp_path / "o"
    out.mkdir()
    (out / ".drgan.lock").write_text("")
    dead = [out / f".write-probe{TEMP_MARK}{dead_pid()}", out / f".fingerprint.json{TEMP_MARK}{dead_pid()}-1@{HOST}"]
    live = out / f".fingerprint.json{TEMP_MARK}{os.getppid()}-1@{HOST}"
    for path in (*dead, live):
        path.write_text("")
    assert synthesize(opts(run, out, count=2)).total == 2
    assert not any(p.exists() for p in dead) and live.exists()


def test_a_failure_to_record_the_fingerprint_releases_the_lock(run, tmp_path, monkeypatch):
    from drgan.synthesis import fingerprint

    def failing(*args):
        raise DrganError("disk full")

    monkeypatch.setattr(fingerprint, "record", failing)
    with pytest.raises(DrganError, match="disk full"):
        synthesize(opts(run, tmp_path / "o", count=2))
    assert not locks.holds(tmp_path / "o")


def test_a_failed_rerun_keeps_the_fingerprint_of_a_set_begun_before(run, tmp_path, monkeypatch):
    out = tmp_path / "a"
    synthesize(opts(run, out, count=2))
    for path in [*(out / "images").iterdir(), *out.glob(".journal-*"), out / "manifest.csv", out / "labels.csv"]:
        path.unlink()   # as if killed before its first image
    monkeypatch.setattr(runner._Pipeline, "run", _failing)
    with pytest.raises(DrganError, match="the generator failed"):
        synthesize(opts(run, out, count=2))
    monkeypatch.undo()
    assert (out / "fingerprint.json").is_file()
    with pytest.raises(DrganError, match="another setup"):
        synthesize(opts(run, out, count=2, seed=1))


def test_an_item_whose_mask_write_fails_is_made_again_with_its_masks(run, tmp_path, monkeypatch):
    from drgan.synthesis import writer

    real = writer.atomic_write_bytes

    def failing(path, data):
        if Path(path).parent.name == "syn_0_0000000" and Path(path).name == "disc.png":
            raise DrganError(f"{path}: disk full")
        real(path, data)

    out = tmp_path / "m"
    monkeypatch.setattr(writer, "atomic_write_bytes", failing)
    with pytest.raises(DrganError, match="disk full"):
        synthesize(opts(run, out, count=4, save_masks=True))
    monkeypatch.undo()
    synthesize(opts(run, out, count=4, save_masks=True))
    for row in manifest(out):
        assert all((out / "masks" / row["id"] / f"{c}.png").is_file() for c in COND_CHANNELS), row["id"]


def test_an_image_write_failing_after_its_masks_leaves_no_debris(run, tmp_path, monkeypatch):
    from drgan.synthesis import writer

    real = writer.atomic_write_bytes

    def failing(path, data):
        if Path(path).parent.name == "images":
            raise DrganError(f"{path}: disk full")
        real(path, data)

    monkeypatch.setattr(writer, "atomic_write_bytes", failing)
    with pytest.raises(DrganError, match="disk full"):
        synthesize(opts(run, tmp_path / "new", count=4, save_masks=True))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["fingerprint.json", "syn_0_0000002.png", "manifest.csv"])
def test_a_write_cut_short_by_a_full_disk_leaves_no_file_under_its_name(run, tmp_path, monkeypatch, name):
    synthesize(opts(run, tmp_path / "whole", count=5))
    real = Path.write_bytes

    def full(self, data):
        if name in self.name:
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    out = tmp_path / "out"
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DrganError, match="disk full"):
        synthesize(opts(run, out, count=5))
    monkeypatch.undo()
    assert not [p for p in out.rglob("*") if p.name == name]
    synthesize(opts(run, out, count=5))
    assert image_bytes(out) == image_bytes(tmp_path / "whole") and manifest(out) == manifest(tmp_path / "whole")


def test_a_file_lost_from_another_shard_is_not_listed(run, tmp_path):
    out = tmp_path / "s"
    for shard in ("0/2", "1/2"):
        synthesize(opts(run, out, count=4, batch=2, shard=shard))
    (out / "images" / "syn_0_0000000.png").unlink()
    again = synthesize(opts(run, out, count=4, batch=2, shard="1/2"))
    assert again.total == 3 and "syn_0_0000000" not in {r["id"] for r in manifest(out)}
    assert (out / ".drgan-unfinished").is_file()


def test_a_row_cut_short_in_another_shards_journal_is_not_taken(run, tmp_path):
    out = tmp_path / "s"
    synthesize(opts(run, out, count=4, batch=2, shard="0/2"))
    journal = out / ".journal-0-of-2.csv"
    journal.write_bytes(journal.read_bytes()[:-20])   # a full disk cut shard 0's last row in its sha256
    synthesize(opts(run, out, count=4, batch=2, shard="1/2"))
    for row in manifest(out):
        assert hashlib.sha256((out / row["file"]).read_bytes()).hexdigest() == row["sha256"], row["id"]


def test_rows_appended_after_a_cut_line_are_whole_rows(run, tmp_path):
    out = tmp_path / "cut"
    synthesize(opts(run, out, count=5))
    journal = out / ".journal-0-of-1.csv"
    journal.write_bytes(journal.read_bytes()[:-20])
    (out / "images" / "syn_0_0000000.png").unlink()
    synthesize(opts(run, out, count=5))
    with open(journal, newline="") as f:
        rows = list(csv.reader(f))
    assert [len(r) for r in rows] == [len(MANIFEST_FIELDS)] * 5 and rows[-1][0] == "syn_0_0000000"


def test_labels_hold_the_planned_grade_under_predicted_labels(run, tmp_path):
    synthesize(opts(run, tmp_path / "p", count=5, label="predicted"))
    rows = manifest(tmp_path / "p")
    assert any(r["grade"] != r["predicted_grade"] for r in rows)
    with open(tmp_path / "p" / "labels.csv", newline="") as f:
        assert {r["id"]: r["grade"] for r in csv.DictReader(f)} == {r["id"]: r["grade"] for r in rows}


@pytest.mark.parametrize("grades", [(0, 5), (-1, 0)])
def test_plan_refuses_grades_just_outside_the_scale(grades):
    with pytest.raises(ParameterError, match="grades must lie in 0..4"):
        Plan(count=5, grades=grades, seed=0, batch=1)


def test_item_seeds_are_pinned():
    """A set resumed by a later version must draw the same items: the seeds are part of the format."""
    assert Plan(count=2, grades=(0,), seed=0, batch=1).item_seeds(1) == (
        2918264622725855778, 4405800739349447345, 2161674727206622604)


def test_a_value_of_24_characters_is_shown_whole():
    from drgan.synthesis.fingerprint import _show

    assert _show("a" * 22) == '"' + "a" * 22 + '"'


def test_a_key_recorded_but_absent_now_is_a_difference(tmp_path):
    from drgan.synthesis import fingerprint as fp

    fp.record(tmp_path, {"seed": 0, "fp8_attention": True}, lambda path, data: path.write_bytes(data))
    with pytest.raises(DrganError, match=r"\(fp8_attention true there, not set now\)"):
        fp.check(tmp_path, {"seed": 0})


def test_an_interrupted_verify_leaves_the_set_unfinished(run, tmp_path, monkeypatch):
    from drgan.metrics.images import open_image_set

    out = tmp_path / "a"
    synthesize(opts(run, out, count=5))
    image = sorted((out / "images").iterdir())[2]
    image.write_bytes(image.read_bytes()[:100])
    monkeypatch.setattr(runner._Pipeline, "run", _interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(opts(run, out, count=5, verify=True))
    assert not image.exists()
    with pytest.raises(DrganError, match="unfinished"):
        open_image_set(out)


def test_a_rerun_stopped_after_finding_an_empty_image_leaves_the_set_unfinished(run, tmp_path, monkeypatch):
    from drgan.metrics.images import open_image_set

    out = tmp_path / "a"
    synthesize(opts(run, out, count=5))
    image = sorted((out / "images").iterdir())[1]
    image.write_bytes(b"")
    monkeypatch.setattr(runner._Pipeline, "run", _interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(opts(run, out, count=5))
    assert not image.exists()
    with pytest.raises(DrganError, match="unfinished"):
        open_image_set(out)


def test_a_rerun_looks_for_empty_files_among_its_own_shards_only(run, tmp_path):
    out = tmp_path / "s"
    synthesize(opts(run, out, count=4, batch=2, shard="0/2"))
    synthesize(opts(run, out, count=4, batch=2, shard="1/2"))
    other = out / "images" / "syn_0_0000002.png"   # batch 1: shard 1/2's
    other.write_bytes(b"")
    summary = synthesize(opts(run, out, count=4, batch=2, shard="0/2"))
    assert summary.empty == [] and summary.generated == 0 and other.stat().st_size == 0
    assert synthesize(opts(run, out, count=4, batch=2, shard="1/2")).empty == [other.stem]


def test_verify_checks_and_counts_only_its_own_shards_files(run, tmp_path):
    out = tmp_path / "s"
    synthesize(opts(run, out, count=4, batch=2, shard="0/2"))
    second = synthesize(opts(run, out, count=4, batch=2, shard="1/2"))
    assert (second.generated, second.skipped) == (2, 0)
    other = out / "images" / "syn_0_0000002.png"   # batch 1: shard 1/2's
    other.write_bytes(other.read_bytes()[:100])
    summary = synthesize(opts(run, out, count=4, batch=2, shard="0/2", verify=True))
    assert summary.damaged == [] and summary.skipped == 2 and other.exists()


def test_rebuilt_rows_take_each_items_own_predicted_grade(run, tmp_path, monkeypatch):
    real = runner.make_backend

    def varied(*args, **kwargs):
        loaded = real(*args, **kwargs)
        loaded.predict_grade = lambda cond: cond.double().sum(dim=(1, 2, 3)).round().long() % 5
        return loaded

    monkeypatch.setattr(runner, "make_backend", varied)
    out = tmp_path / "pred"
    synthesize(opts(run, out, count=8, label="predicted"))
    rows = manifest(out)
    assert len({r["predicted_grade"] for r in rows[:4]}) > 1
    for journal in out.glob(".journal-*.csv"):
        journal.unlink()
    synthesize(opts(run, out, count=8, label="predicted"))
    assert manifest(out) == rows


def test_a_run_drawing_lesions_at_another_side_is_another_setup(tmp_path):
    from drgan.runs import RUN_FILE

    run, out = make_run(tmp_path / "run"), tmp_path / "set"
    synthesize(opts(run, out, count=2))
    record = json.loads((run / RUN_FILE).read_text())
    (run / RUN_FILE).write_text(json.dumps({**record, "dataset": {"image_side": 256}}))
    with pytest.raises(DrganError, match=r"another setup \(lesions_drawn_at not set there, 256 now"):
        synthesize(opts(run, out, count=2))


def test_another_jpeg_quality_is_another_setup(run, tmp_path):
    out = tmp_path / "j"
    synthesize(opts(run, out, count=2, format="jpeg"))
    with pytest.raises(DrganError, match=r"another setup \(quality 95 there, 50 now\)"):
        synthesize(opts(run, out, count=2, format="jpeg", quality=50))


def test_a_failure_after_the_lock_is_taken_releases_it(run, tmp_path, monkeypatch):
    """A journal the set cannot read back (an I/O error) is the file's error, and the lock goes."""
    from drgan.synthesis import writer

    def unreadable(path):
        raise OSError(errno.EIO, "Input/output error", str(path))

    out = tmp_path / "o"
    synthesize(opts(run, out, count=2))
    monkeypatch.setattr(writer, "_drop_cut_line", unreadable)
    with pytest.raises(OSError, match="Input/output error"):
        synthesize(opts(run, out, count=2))
    assert not locks.holds(out)


def _section_taken(root: Path) -> bool:
    return locks.held_elsewhere(root / f"{LOCK_FILE}-section")


def test_shards_write_the_files_they_share_one_at_a_time(run, tmp_path, monkeypatch):
    """The fingerprint and the manifest, which every shard of a set writes, are written inside the
    set's section lock: two shards finishing together cannot interleave them."""
    from drgan.synthesis import fingerprint, writer

    seen = []
    record, write_manifest = fingerprint.record, writer.OutputFolder.write_manifest

    def recording(root, *args):
        seen.append(("fingerprint", _section_taken(root)))
        return record(root, *args)

    def manifest_writing(self, *args, **kwargs):
        seen.append(("manifest", _section_taken(self.root)))
        return write_manifest(self, *args, **kwargs)

    monkeypatch.setattr(fingerprint, "record", recording)
    monkeypatch.setattr(writer.OutputFolder, "write_manifest", manifest_writing)
    for shard in ("0/2", "1/2"):
        synthesize(opts(run, tmp_path / "o", count=4, batch=2, shard=shard))
    assert seen == [("fingerprint", True), ("manifest", True), ("manifest", True)]


def test_the_files_a_set_hangs_on_are_on_disk_before_they_are_used(run, tmp_path, monkeypatch):
    """fingerprint.json, manifest.csv and labels.csv are flushed before their rename and their
    folder after it: a power loss cannot leave one of them empty, which would refuse or unread
    every image of the set. Images are not (a rerun finds an empty one)."""
    from helpers import record_fsyncs

    synced = record_fsyncs(monkeypatch)
    out = tmp_path / "a"
    synthesize(opts(run, out, count=3))
    for name in ("fingerprint.json", "manifest.csv", "labels.csv"):
        assert name in synced, name
        assert synced[synced.index(name) + 1] == str(out.resolve())  # then the folder, after the rename
    assert not any(name.endswith(".png") for name in synced)


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EIO])
def test_a_file_system_that_cannot_fsync_is_no_error_but_a_failed_flush_is(run, tmp_path, monkeypatch, capsys, code):
    """EINVAL (some network and FUSE file systems cannot flush a folder) leaves the write as durable
    as the file system allows; EIO is lost data: one error line naming the file."""
    from drgan import io
    from drgan.cli import cli
    from drgan.cli.common import run_command

    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(io.os, "fsync", fsync)
    out = tmp_path / "a"
    if code == errno.EINVAL:
        assert synthesize(opts(run, out, count=2)).total == 2
        return
    args = ["synthesize", "--run", str(run), "--out", str(out), "--count", "2", "--device", "cpu"]
    assert run_command(cli, args=args, prog_name="drgan") == 1
    assert capsys.readouterr().err.endswith(f"error: {out / 'fingerprint.json'}: cannot write (Input/output error)\n")


def test_a_failed_write_surfaces_at_the_next_item_even_behind_a_slow_one(tmp_path):
    """A write that failed (a full disk) stops the run at the next item queued, not only once
    every write queued before it has finished (at worst at the end, after every batch was made)."""
    import threading
    import time

    import numpy as np

    from drgan.synthesis.stages import StageTimes
    from drgan.synthesis.writer import OutputFolder

    out = OutputFolder(tmp_path / "s", "png", 95, 1, False, journal_name=".journal-0-of-1.csv", shard="0/1", threads=2,
                       fingerprint={"seed": 0}, times=StageTimes({"output": 2}))
    release = threading.Event()

    def slow():
        release.wait(10)
        return np.zeros((8, 8, 3), np.uint8)

    def full():
        raise DrganError("disk full")

    row = {field: "0" for field in MANIFEST_FIELDS}
    try:
        slow_write = out.submit({**row, "id": "a"}, slow, None)
        with pytest.raises(DrganError, match="disk full"):  # at b's own submit or at c's
            failed = out.submit({**row, "id": "b"}, full, None)
            while not failed.done():
                time.sleep(0.01)
            out.submit({**row, "id": "c"}, lambda: np.zeros((8, 8, 3), np.uint8), None)
        assert not slow_write.done()  # surfaced while the write queued before it still runs
    finally:
        release.set()
        out.abort()
