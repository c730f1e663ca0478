import csv
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drgan.config import COND_CHANNELS
from drgan.errors import DrganError
from drgan.synthesis.plan import Plan, Shard
from drgan.synthesis.runner import SynthesisOptions, format_summary, synthesize
from drgan.synthesis.structures import StructurePool
from synthesis_fixtures import make_run
from helpers import dead_pid


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "tiny")


def opts(run, out, **kw):
    return SynthesisOptions(run=str(run), out=str(out), count=kw.pop("count", 10), batch=kw.pop("batch", 4),
                            progress=False, threads=2, device="cpu", **kw)


def manifest(out):
    with open(Path(out) / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def image_bytes(out):
    return {p.name: p.read_bytes() for p in sorted((Path(out) / "images").iterdir())}


def test_balanced_set_with_consistent_manifest(run, tmp_path):
    summary = synthesize(opts(run, tmp_path / "a", count=10, save_masks=True))
    assert summary.generated == 10 and summary.per_grade == {g: 2 for g in range(5)}
    # The CPU has no queueing or nvjpeg stage: the summary's line leaves them out, its JSON keeps every key.
    line = format_summary(summary).splitlines()[-1]
    assert line.startswith("ms per image: placement ") and "queueing" not in line and "nvjpeg" not in line
    assert "generation" in line and "nvjpeg" in summary.to_dict()["stage_seconds"]
    rows = manifest(tmp_path / "a")
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10 and len({r["structure_id"] for r in rows}) > 3
    pool = StructurePool.phantom(64, 0)
    for row in rows:
        path = tmp_path / "a" / row["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
        img = np.asarray(Image.open(path))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        # Imitated lesions follow the DR scale: nothing at grade 0, microaneurysms only at grade 1.
        counts = {t: int(row[t]) for t in ("ma", "he", "ex", "se", "laser", "membrane")}
        if row["grade"] == "0":
            assert sum(counts.values()) == 0
        if row["grade"] == "1":
            assert counts["ma"] > 0 and sum(counts.values()) == counts["ma"]
        ma = np.asarray(Image.open(tmp_path / "a" / "masks" / row["id"] / "ma.png"))
        assert (ma.any()) == (counts["ma"] > 0)
        # Each item's own masks (three batches: the host buffers are reused): its structure's vessels.
        vessel = np.asarray(Image.open(tmp_path / "a" / "masks" / row["id"] / "vessel.png"))
        assert np.array_equal(vessel, pool.get(pool.ids.index(row["structure_id"]))["vessel"]), row["id"]
    with open(tmp_path / "a" / "labels.csv") as f:
        assert f.readline().strip() == "id,grade" and len(f.readlines()) == 10


def test_same_seed_same_bytes_and_other_seed_differs(run, tmp_path):
    synthesize(opts(run, tmp_path / "a", count=5))
    synthesize(opts(run, tmp_path / "b", count=5))
    synthesize(opts(run, tmp_path / "c", count=5, seed=1))
    assert image_bytes(tmp_path / "a") == image_bytes(tmp_path / "b")
    first_a = next(iter(image_bytes(tmp_path / "a").values()))
    first_c = next(iter(image_bytes(tmp_path / "c").values()))
    assert first_a != first_c


def test_two_shards_equal_one_run(run, tmp_path):
    from drgan.data.validation import validate_dataset
    from drgan.metrics.images import open_image_set

    synthesize(opts(run, tmp_path / "one", count=10))
    half = synthesize(opts(run, tmp_path / "two", count=10, shard="0/2"))
    assert half.total < half.planned == 10 and "unfinished: " in format_summary(half)
    for read in (open_image_set, validate_dataset):  # half a set is not taken for the whole
        with pytest.raises(DrganError, match="shards of it are still to run"):
            read(tmp_path / "two")
    partial = synthesize(opts(run, tmp_path / "two", count=10, shard="1/2"))
    assert partial.total == 10 and "unfinished" not in format_summary(partial)
    assert len(open_image_set(tmp_path / "two")) == 10
    assert image_bytes(tmp_path / "one") == image_bytes(tmp_path / "two")
    assert manifest(tmp_path / "one") == manifest(tmp_path / "two")


def test_resume_after_sigkill(run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "drgan.cli", "synthesize", "--checkpoint", str(run), "--out", str(out),
           "--count", "40", "--batch", "2", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "images").glob("*.png")) if (out / "images").exists() else []) < 3:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(list((out / "images").glob("*.png")))
    assert 0 < before < 40, "the run must be killed midway"
    from drgan.metrics.images import open_image_set
    with pytest.raises(DrganError, match="unfinished"):  # no labels.csv yet: not to be scored as a folder of images
        open_image_set(out)
    summary = synthesize(opts(run, out, count=40, batch=2))
    assert summary.skipped == before and summary.generated == 40 - before
    names = sorted(p.name for p in (out / "images").iterdir())
    assert len(names) == 40 and not any(".tmp-" in p.name for p in out.rglob("*"))
    rows = manifest(out)
    assert sorted(r["id"] + ".png" for r in rows) == names
    # Resumed images equal an uninterrupted run's, byte for byte.
    synthesize(opts(run, tmp_path / "whole", count=40, batch=2))
    assert image_bytes(out) == image_bytes(tmp_path / "whole")


def test_rerun_is_a_no_op(run, tmp_path):
    synthesize(opts(run, tmp_path / "a", count=5))
    again = synthesize(opts(run, tmp_path / "a", count=5))
    assert (again.generated, again.skipped, again.total) == (0, 5, 5)


def test_an_interrupted_rerun_of_a_whole_set_leaves_it_readable(run, tmp_path, monkeypatch):
    from drgan.metrics.images import open_image_set
    from drgan.synthesis import runner

    synthesize(opts(run, tmp_path / "a", count=5))

    def interrupted(self, shard):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner._Pipeline, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(opts(run, tmp_path / "a", count=5))
    assert len(open_image_set(tmp_path / "a")) == 5  # it was marked unfinished and refused


def test_verify_makes_damaged_files_again(run, tmp_path):
    """A file that no longer matches its journal row, and one without a row that does not decode:
    --verify finds both and writes them again, byte for byte; a plain rerun trusts what is there."""
    out = tmp_path / "a"
    synthesize(opts(run, out, count=6))
    whole = image_bytes(out)
    images = sorted((out / "images").iterdir())
    images[1].write_bytes(images[1].read_bytes()[:-10] + bytes(10))  # same size, other bytes
    journal = next(out.glob(".journal-*.csv"))
    journal.write_text("".join(line for line in journal.read_text().splitlines(keepends=True) if images[4].stem not in line))
    images[4].write_bytes(images[4].read_bytes()[:200])  # cut short, and its row gone
    assert synthesize(opts(run, out, count=6)).generated == 0
    summary = synthesize(opts(run, out, count=6, verify=True))
    assert summary.damaged == [images[1].stem, images[4].stem] and summary.generated == 2
    assert f"\nverified the files already present: 2 damaged ({images[1].stem}, {images[4].stem}), written again" \
        in format_summary(summary)
    many = dataclasses.replace(summary, damaged=[p.stem for p in images])
    assert f"6 damaged ({images[0].stem}, {images[1].stem}, {images[2].stem}, ...), written again" in format_summary(many)
    assert image_bytes(out) == whole
    assert {r["id"]: r["sha256"] for r in manifest(out)}[images[1].stem] == hashlib.sha256(whole[images[1].name]).hexdigest()
    assert synthesize(opts(run, out, count=6, verify=True)).damaged == []


def test_verify_makes_items_with_damaged_masks_again(run, tmp_path):
    """With --save-masks, an item whose mask file is missing or cut short is written again, masks and all."""
    out = tmp_path / "a"
    synthesize(opts(run, out, count=4, save_masks=True))
    whole = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.png"))}
    first, second = sorted((out / "masks").iterdir())[:2]
    (first / "vessel.png").unlink()
    lesion = sorted(second.iterdir())[-1]
    lesion.write_bytes(lesion.read_bytes()[:40])
    summary = synthesize(opts(run, out, count=4, save_masks=True, verify=True))
    assert summary.damaged == [first.name, second.name] and summary.generated == 2
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.png"))} == whole


def test_a_rerun_makes_items_with_empty_or_missing_files_again(run, tmp_path):
    """What a power loss leaves of files renamed into place without fsync (an empty image, a mask
    empty or gone) is found by a plain rerun, named, and written again byte for byte."""
    out = tmp_path / "a"
    synthesize(opts(run, out, count=5, save_masks=True))
    whole = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.png"))}
    images = sorted((out / "images").iterdir())
    images[0].write_bytes(b"")
    (out / "masks" / images[2].stem / "vessel.png").write_bytes(b"")
    (out / "masks" / images[3].stem / "disc.png").unlink()
    summary = synthesize(opts(run, out, count=5, save_masks=True))
    stems = [images[i].stem for i in (0, 2, 3)]
    assert summary.empty == stems and (summary.generated, summary.skipped) == (3, 2)
    assert f"\n3 items found with an empty or missing file ({', '.join(stems)}), as a power loss leaves them: " \
           "written again; --verify reads every file" in format_summary(summary)
    assert summary.to_dict()["empty"] == stems
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.png"))} == whole
    again = synthesize(opts(run, out, count=5, save_masks=True))
    assert (again.empty, again.generated) == ([], 0) and "empty or missing" not in format_summary(again)


def test_predicted_label_takes_the_grading_vector_of_the_encoders_grade(run, tmp_path):
    import torch

    from drgan.checkpoint import load_generator
    from drgan.config import COND_CHANNELS

    planned = synthesize(opts(run, tmp_path / "planned", count=10))
    summary = synthesize(opts(run, tmp_path / "pred", count=10, label="predicted", save_masks=True))
    rows = manifest(tmp_path / "pred")
    cond = torch.stack([torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / "pred" / "masks" / r["id"] / f"{c}.png")))
                                     for c in COND_CHANNELS]) for r in rows]).float() / 255
    expected = load_generator(run).predict_grade(cond).tolist()
    assert [int(r["predicted_grade"]) for r in rows] == expected
    agree = [r["grade"] == r["predicted_grade"] for r in rows]
    assert summary.agreement == pytest.approx(np.mean(agree)) and planned.agreement is None
    assert "predicted grade is the planned grade" in format_summary(summary)
    assert all(r["predicted_grade"] == "" for r in manifest(tmp_path / "planned"))
    # Same lesions, noise and standard-normal draws: the image changes exactly where the grade does.
    a, b = image_bytes(tmp_path / "planned"), image_bytes(tmp_path / "pred")
    assert [a[r["id"] + ".png"] == b[r["id"] + ".png"] for r in rows] == agree and 0 < sum(agree) < 10
    # Rows lost to a kill are rebuilt with the grade the run predicted.
    for journal in (tmp_path / "pred").glob(".journal-*.csv"):
        journal.unlink()
    again = synthesize(opts(run, tmp_path / "pred", count=10, label="predicted", save_masks=True))
    assert again.generated == 0 and manifest(tmp_path / "pred") == rows
    with pytest.raises(DrganError, match="^label predicted needs"):
        synthesize(SynthesisOptions(run=None, preset="tiny-64", backend="null", out=str(tmp_path / "n"), count=2, label="predicted"))


def test_a_huge_count_streams_its_plan(tmp_path, monkeypatch):
    """Nothing is listed per item or per batch before the first batch: memory is flat in the count."""
    import tracemalloc

    from drgan.synthesis import runner

    class FirstBatch(Exception):
        pass

    def first_batch(self, items, slot):
        raise FirstBatch

    monkeypatch.setattr(runner._Pipeline, "_device_batch", first_batch)
    options = SynthesisOptions(run=None, preset="tiny-64", backend="null", out=str(tmp_path / "set"), count=3_000_000,
                               batch=1, device="cpu", progress=False, threads=1)
    tracemalloc.start()
    try:
        with pytest.raises(FirstBatch):
            synthesize(options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"{peak / 2**20:.0f} MiB"
    assert not (tmp_path / "set" / "images").exists()


def test_plan_is_balanced_and_sharded():
    plan = Plan(count=23, grades=(0, 1, 2, 3, 4), seed=3, batch=4)
    assert [plan.grade(i) for i in range(7)] == [0, 1, 2, 3, 4, 0, 1]
    batches = [plan.shard_batches(Shard(i, 3)) for i in range(3)]
    assert sorted(k for b in batches for k in b) == list(range(plan.num_batches))
    assert [plan.shard_size(Shard(i, 3)) for i in range(3)] == [sum(len(plan.batch_items(k)) for k in b) for b in batches]
    assert sum(plan.shard_size(Shard(i, 3)) for i in range(3)) == 23
    assert [plan.item_index(plan.item_id(i)) for i in range(23)] == list(range(23))
    assert [plan.item_index(x) for x in ("syn_3_0000023", "syn_4_0000001", "syn_3_00000001", "syn_3_x")] == [None] * 4
    assert plan.item_seeds(5) == Plan(count=9, grades=(0, 1, 2, 3, 4), seed=3, batch=1).item_seeds(5)
    assert plan.item_seeds(5) != plan.item_seeds(6)
    with pytest.raises(DrganError, match="^shard '2/2'"):
        Shard.parse("2/2")
    with pytest.raises(DrganError, match="grades must lie in 0..4"):
        Plan(count=5, grades=(1, 7), seed=0, batch=1)


def test_missing_grading_space(run, tmp_path):
    broken = make_run(tmp_path / "nogs")
    (broken / "grading_space.safetensors").unlink()
    with pytest.raises(DrganError, match="no grading_space.safetensors"):
        synthesize(opts(broken, tmp_path / "out"))


def test_checkpoint_of_another_preset(tmp_path):
    import json

    run = make_run(tmp_path / "r")
    data = json.loads((run / "run.json").read_text())
    data["model"]["n_res_blocks"] = 3  # the weights hold two
    (run / "run.json").write_text(json.dumps(data))
    with pytest.raises(DrganError, match="weights do not match the model"):
        synthesize(opts(run, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unwritable_output(run, tmp_path):
    # A path below a regular file cannot be created, whoever runs the test (root included).
    (tmp_path / "file").write_text("")
    with pytest.raises(DrganError, match=r"out: cannot write \(.*file is a file, not a folder\)$"):
        synthesize(opts(run, tmp_path / "file" / "out"))


def test_a_set_whose_images_folder_cannot_be_written_is_refused_before_any_image(run, tmp_path, monkeypatch):
    """The set's own folder was checked, not images/: a batch was generated, then the write failed."""
    import os

    out = tmp_path / "s"
    synthesize(opts(run, out, count=8))
    access, images = os.access, out / "images"
    for path in sorted(images.iterdir())[4:]:  # as if killed after 4 images
        path.unlink()
    monkeypatch.setattr("drgan.io.os.access", lambda p, mode: Path(p) != images and access(p, mode))
    with pytest.raises(DrganError, match=f"^{images}: cannot write \\({images} is not writable\\)$"):
        synthesize(opts(run, out, count=8))
    assert len(list(images.iterdir())) == 4


def test_cli_bad_input_is_one_line(run, tmp_path):
    cmd = [sys.executable, "-m", "drgan.cli", "synthesize", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--count", "5"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"error: {tmp_path / 'nothing'}: run folder not found"]


@pytest.fixture(scope="module")
def structures(tmp_path_factory):
    from drgan.data.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("structures") / "ds", count=6, size=80, seed=5)


def test_dataset_structures_with_dali_equal_torch(run, structures, tmp_path):
    torch_run = synthesize(opts(run, tmp_path / "t", count=5, structures=str(structures), loader="torch", save_masks=True))
    dali_run = synthesize(opts(run, tmp_path / "d", count=5, structures=str(structures), loader="dali", save_masks=True))
    assert torch_run.total == dali_run.total == 5
    # The loaders' antialiased filters round differently: vessel coverage by a level of 255, and a
    # disc pixel whose filtered mask lies at the 0.5 threshold may fall either way.
    for name, levels in (("vessel", 1), ("disc", 0)):
        t, d = ([np.asarray(Image.open(p)).astype(int) for p in sorted((tmp_path / k / "masks").glob(f"*/{name}.png"))] for k in "td")
        assert len(t) == len(d) == 5
        assert np.mean([np.mean(np.abs(a - b) > levels) for a, b in zip(t, d)]) < 0.01, name
    assert {r["structure_id"] for r in manifest(tmp_path / "t")} <= {f"phantom_{i:06d}" for i in range(6)}


def test_dataset_vessels_keep_the_coverage_training_sees(run, structures, tmp_path):
    """Structures resized from another resolution (80 px for a 64 px run) keep the antialiased
    vessel coverage the training loader gives, not a thresholded, broken-up mask."""
    from drgan.data.dataset import FundusDataset

    synthesize(opts(run, tmp_path / "s", count=5, structures=str(structures), save_masks=True))
    data = FundusDataset(structures, 64)
    for row in manifest(tmp_path / "s"):
        saved = np.asarray(Image.open(tmp_path / "s" / "masks" / row["id"] / "vessel.png"))
        trained = data.load(data.ids.index(row["structure_id"]))[1][..., COND_CHANNELS.index("vessel")]
        assert ((0 < saved) & (saved < 255)).any()   # partial coverage survives
        np.testing.assert_array_equal(saved, trained)


def test_structures_without_usable_masks(run, tmp_path):
    from drgan.data.dataset_writer import DatasetWriter

    writer = DatasetWriter(tmp_path / "empty")
    writer.add("a", np.full((64, 64, 3), 120, np.uint8), {}, 0, "train")
    writer.close()
    with pytest.raises(DrganError, match="no usable structure masks"):
        synthesize(opts(run, tmp_path / "out", structures=str(tmp_path / "empty")))


def test_onnxruntime_backend_matches_torch(run, tmp_path):
    from drgan.cli import cli
    from drgan.cli.common import run_command

    assert run_command(cli, args=["export", "--checkpoint", str(run), "--onnx"]) == 0
    synthesize(opts(run, tmp_path / "torch", count=5, batch=5))
    synthesize(opts(run, tmp_path / "ort", count=5, batch=5, backend="onnxruntime"))
    for name in image_bytes(tmp_path / "torch"):
        a = np.asarray(Image.open(tmp_path / "torch" / "images" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "ort" / "images" / name)).astype(int)
        assert np.abs(a - b).max() <= 1  # fp32 rounding may move a pixel across a quantization step


def test_lesion_stats_fit_on_a_dataset_drive_synthesis(run, structures, tmp_path):
    from drgan.cli import cli
    from drgan.cli.common import run_command

    stats = tmp_path / "stats.json"
    assert run_command(cli, args=["data", "fit-lesions", str(structures), "--out", str(stats)]) == 0
    summary = synthesize(opts(run, tmp_path / "out", count=5, lesion_stats=str(stats)))
    assert summary.total == 5
    assert all(int(r["ma"]) == 0 for r in manifest(tmp_path / "out") if r["grade"] == "0")


def test_journal_line_cut_short_is_dropped_on_resume(run, tmp_path):
    """A full disk mid-line left the journal's last row without its end; the rerun appends rows
    after it (an image is regenerated here) and still writes the manifest and labels."""
    out = tmp_path / "cut"
    synthesize(opts(run, out, count=5))
    before = manifest(out)
    journal = out / ".journal-0-of-1.csv"
    journal.write_bytes(journal.read_bytes()[:-20])  # the last row's sha256 and newline cut
    (out / before[0]["file"]).unlink()
    for name in ("manifest.csv", "labels.csv"):
        (out / name).unlink()
    again = synthesize(opts(run, out, count=5))
    assert (again.generated, again.total) == (1, 5)
    assert manifest(out) == before and (out / "labels.csv").is_file()
    assert journal.read_bytes().endswith(b"\n") and len(journal.read_text().splitlines()) == 4 + 1


def test_full_disk_while_appending_to_the_journal_is_one_error_and_resumes(run, tmp_path, monkeypatch):
    import builtins
    import errno

    from drgan.synthesis import writer

    def full_journal(path, mode="r", *args, **kwargs):
        if ".journal-" in str(path) and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return builtins.open(path, mode, *args, **kwargs)

    out = tmp_path / "full"
    monkeypatch.setattr(writer, "open", full_journal, raising=False)
    with pytest.raises(DrganError, match=f"^{out}: disk full while writing .journal-0-of-1.csv$"):
        synthesize(opts(run, out, count=5))
    monkeypatch.undo()
    summary = synthesize(opts(run, out, count=5))
    assert summary.total == 5 and len(manifest(out)) == 5


def test_rerun_removes_only_temp_files_whose_writer_is_gone(run, tmp_path):
    """Shard 1/2 starting beside a running shard 0/2 must not delete the file it is writing."""
    out = tmp_path / "shared"
    synthesize(opts(run, out, count=4, shard="0/2"))
    stale, writing = out / "images" / f".x.png.tmp-{dead_pid()}-1", out / "images" / f".y.png.tmp-{os.getppid()}-1"
    for path in (stale, writing):
        path.write_bytes(b"partial")
    synthesize(opts(run, out, count=4, shard="1/2"))
    assert not stale.exists() and writing.exists()


def test_a_shard_already_being_written_is_refused_and_other_shards_run(run, tmp_path, lock_holder, capsys):
    from drgan.cli.common import run_command
    from drgan.cli.synthesize import synthesize as synthesize_command

    out = tmp_path / "busy"
    pid = lock_holder(out, "0/2")
    args = ["--run", str(run), "--out", str(out), "--count", "5", "--batch", "2", "--device", "cpu"]
    assert run_command(synthesize_command, args=[*args, "--shard", "0/2"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {out} is in use by another drgan process writing shard 0/2 (pid {pid})"]
    assert not (out / "images").exists()
    assert synthesize(opts(run, out, count=5, batch=2, shard="1/2")).generated == 2  # batch 1 of 0..2


def test_shard_failing_beside_a_running_one_leaves_the_set_to_it(run, tmp_path, lock_holder, monkeypatch):
    """A shard that fails before its first image tidies the folder only when it is alone in it."""
    from drgan import locks
    from drgan.synthesis import runner

    out = tmp_path / "shared"
    lock_holder(out, "0/2")

    def failing(*args, **kwargs):
        raise DrganError("the generator failed")

    monkeypatch.setattr(runner._Pipeline, "run", failing)
    with pytest.raises(DrganError, match="the generator failed"):
        synthesize(opts(run, out, count=4, shard="1/2"))
    assert (out / "fingerprint.json").is_file() and (out / "images").is_dir()
    locks.hold(out, "1/2")  # the shared lock is still compatible with the other shard's
    assert not locks.alone(out)
    locks.release(out)


@pytest.mark.parametrize("given", ["auto", "cuda"])
def test_under_torchrun_each_rank_synthesizes_on_its_own_gpu(monkeypatch, given):
    """`--device auto` (the default) gave every rank cuda, that is GPU 0."""
    from drgan.synthesis import runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert runner._device(given) == torch.device("cuda", 2)
    assert runner._device("cuda:1") == torch.device("cuda", 1)  # named by the user: kept
    assert runner._device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(DrganError, match=r"^LOCAL_RANK=5 \(torchrun's environment\): this process sees 4 GPUs"):
        runner._device(given)  # it named cuda:5, a device the user never typed
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a scheduler gave each rank its own GPU
    assert runner._device(given) == torch.device("cuda", 0)
    monkeypatch.delenv("LOCAL_RANK")
    assert runner._device(given) == torch.device("cuda")


def test_a_dataset_structure_pool_takes_the_train_split_unless_told(tmp_path):
    """Every split's masks were taken: a set meant to augment a grader was drawn on its test eyes too."""
    import csv

    from drgan.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "d", 20, 64, seed=0)
    with open(data / "labels.csv") as f:
        splits = {r["id"]: r["split"] for r in csv.DictReader(f)}
    train = StructurePool.from_dataset(data, 64)
    assert sorted(train.ids) == sorted(i for i, s in splits.items() if s == "train")
    assert sorted(StructurePool.from_dataset(data, 64, split=None).ids) == sorted(splits)
    test = StructurePool.from_dataset(data, 64, split="test")
    assert set(test.ids) == {i for i, s in splits.items() if s == "test"} and train.identity != test.identity


def test_a_dataset_structures_field_of_view_leaves_out_black_bands_inside_the_circle(tmp_path):
    """A fundus circle cut at top and bottom (EyePACS) is padded square with black bands inside the
    inscribed disc, which the pool took as field of view: lesions were placed on black."""
    from drgan.data.phantom import write_phantom_dataset
    from drgan.synthesis.structures import StructurePool

    data = write_phantom_dataset(tmp_path / "d", 10, 64, seed=0)
    for path in (data / "images").iterdir():
        pixels = np.asarray(Image.open(path).convert("RGB")).copy()
        pixels[:12] = pixels[-12:] = 0  # the bands a cut circle leaves
        Image.fromarray(pixels).save(path)
    pool = StructurePool.from_dataset(data, 64, split=None)
    fov = pool.get(0)["fov"]
    assert not fov[:12].any() and not fov[-12:].any()
    assert fov[32, 32] and fov[20, 32] and fov[32, 1]  # the rest of the circle stays


def test_rebuilt_predictions_draw_lesions_as_the_run_did(tmp_path, monkeypatch):
    """Manifest rows rebuilt after a kill (--label predicted) recompute the encoder's grades from the
    conditions: drawn at the run's data side, as the run drew them."""
    from drgan.runs import RUN_FILE
    from drgan.synthesis import runner

    run = make_run(tmp_path / "run")
    record = json.loads((run / RUN_FILE).read_text())
    (run / RUN_FILE).write_text(json.dumps({**record, "dataset": {"image_side": 256}}))
    synthesize(opts(run, tmp_path / "pred", count=8, label="predicted"))
    rows = manifest(tmp_path / "pred")
    for journal in (tmp_path / "pred").glob(".journal-*.csv"):
        journal.unlink()   # killed between the images and their journal rows
    seen, draw = [], runner.condition_masks
    monkeypatch.setattr(runner, "condition_masks", lambda *a, **k: seen.append(k.get("drawn_at")) or draw(*a, **k))
    synthesize(opts(run, tmp_path / "pred", count=8, label="predicted"))
    assert seen and set(seen) == {256} and manifest(tmp_path / "pred") == rows


@pytest.mark.parametrize("count, word", [(1, "image"), (0, "images"), (2, "images")])
def test_the_summary_counts_in_words(tmp_path, count, word):
    from drgan.synthesis.runner import Summary

    assert format_summary(Summary(tmp_path, count, 0, count, count, {0: count}, 1.0)).startswith(f"wrote {count} {word} in")


def test_a_dataset_structure_keeps_vessel_coverage_cuts_the_disc_at_one_half_and_bounds_the_fov_by_the_circle(tmp_path):
    """Vessels keep their partial coverage, the disc is a disc where its mask is above one half, and
    the field of view never reaches past the inscribed circle, even where the photograph is bright."""
    from drgan.data.phantom import write_phantom_dataset
    from drgan.synthesis.structures import StructurePool

    data = write_phantom_dataset(tmp_path / "d", 1, 64, seed=0)
    sid = next((data / "masks").iterdir()).name
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(next((data / "images").iterdir()))  # bright to the corners
    disc = np.zeros((64, 64), np.uint8)
    disc[20:30, 20:30], disc[40:50, 40:50] = 120, 140  # either side of one half (127.5)
    Image.fromarray(disc).save(data / "masks" / sid / "disc.png")
    vessel = np.zeros((64, 64), np.uint8)
    vessel[32, 8:56] = 100
    Image.fromarray(vessel).save(data / "masks" / sid / "vessel.png")
    st = StructurePool.from_dataset(data, 64, split=None).get(0)
    assert (st["vessel"][32, 8:56] == 100).all() and st["vessel"].sum() == 100 * 48
    assert not st["disc"][20:30, 20:30].any() and (st["disc"][40:50, 40:50] == 255).all() and st["disc"].sum() == 255 * 100
    yy, xx = np.mgrid[:64, :64] + 0.5 - 32
    assert np.array_equal(st["fov"] > 0, np.hypot(yy, xx) <= 32)
