"""Checkpoint files, run folders and folder locks at the library level: reading and refusing weights, run
configs and output folders, and the flock semantics of exclusive, shared and shard holds."""
from __future__ import annotations

import json

import pytest
import torch

from drgan import checkpoint
from drgan.errors import DrganError


@pytest.mark.parametrize("read", [checkpoint.load_tensors, checkpoint.load_metadata, checkpoint.weight_shapes])
def test_a_missing_or_damaged_weights_file_is_one_named_error(tmp_path, read):
    with pytest.raises(DrganError, match=r"missing.safetensors: file not found$"):
        read(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}   ")
    with pytest.raises(DrganError, match=r"bad.safetensors: not a readable safetensors file \("):
        read(bad)


def test_metadata_is_read_back_and_empty_when_none_was_saved(tmp_path):
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    checkpoint.save_tensors(tensors, tmp_path / "meta.safetensors", metadata={"grader_accuracy": "0.75"})
    checkpoint.save_tensors(tensors, tmp_path / "plain.safetensors")
    assert checkpoint.load_metadata(tmp_path / "meta.safetensors") == {"grader_accuracy": "0.75"}
    assert checkpoint.load_metadata(tmp_path / "plain.safetensors") == {}
    assert checkpoint.weight_shapes(tmp_path / "plain.safetensors") == {"w": (2, 3)}
    assert torch.equal(checkpoint.load_tensors(tmp_path / "meta.safetensors")["w"], tensors["w"])


def _linear_file(tmp_path, **tensors):
    path = tmp_path / "w.safetensors"
    checkpoint.save_tensors(tensors, path)
    return path


def test_load_module_is_strict_by_default_and_names_only_what_is_wrong(tmp_path):
    weight = torch.ones(3, 2)
    path = _linear_file(tmp_path, weight=weight)  # no bias
    with pytest.raises(DrganError, match=r"w.safetensors: weights do not match the model \(wrong preset or stage\?\): "
                                         r"missing: bias$"):
        checkpoint.load_module(torch.nn.Linear(2, 3), path)
    path = _linear_file(tmp_path, weight=torch.ones(2, 2), bias=torch.zeros(3))
    with pytest.raises(DrganError) as err:
        checkpoint.load_module(torch.nn.Linear(2, 3), path)
    assert str(err.value).endswith("): shape mismatch: weight (2, 2) vs (3, 2)")  # nothing is missing or unexpected


def test_load_module_not_strict_takes_the_weights_present_and_ignores_others(tmp_path):
    path = _linear_file(tmp_path, weight=torch.ones(3, 2), extra=torch.zeros(1))
    module = torch.nn.Linear(2, 3)
    bias = module.bias.detach().clone()
    assert checkpoint.load_module(module, path, strict=False) is module
    assert torch.equal(module.weight, torch.ones(3, 2)) and torch.equal(module.bias, bias)
    path = _linear_file(tmp_path, weight=torch.ones(2, 2))
    with pytest.raises(DrganError, match=r"shape mismatch: weight \(2, 2\) vs \(3, 2\)$"):  # shapes count even so
        checkpoint.load_module(torch.nn.Linear(2, 3), path, strict=False)


def _write_run(folder, **changes):
    import json

    from drgan.config import preset
    from drgan.runs import RUN_FILE, write_run_config

    write_run_config(folder, preset("tiny-64"), "local", {"trainer": "gan"})
    data = json.loads((folder / RUN_FILE).read_text())
    data.update(changes)
    (folder / RUN_FILE).write_text(json.dumps(data))
    return folder


def test_write_run_config_creates_missing_parent_folders(tmp_path):
    from drgan.runs import read_run

    run = _write_run(tmp_path / "a" / "b" / "run")
    info = read_run(run)
    assert (info.stage, info.kind, info.extra) == ("local", "gan", {})


@pytest.mark.parametrize("make, message", [
    (lambda p: None, r"run: run folder not found$"),
    (lambda p: p.mkdir(), r"run: not a drgan run folder \(no run.json\)$"),
    (lambda p: (p.mkdir(), (p / "run.json").write_text("{")), r"run.json: malformed run config \("),
    (lambda p: (p.mkdir(), (p / "run.json").write_text('{"stage": "local"}')), r"run.json: malformed run config \("),
    (lambda p: _write_run(p, model={"resolution": 64, "colour": 1}), r"run.json: invalid model config: unknown field"),
    (lambda p: _write_run(p, stage="middle"), r"run.json: unknown stage 'middle'$"),
])
def test_read_run_refuses_what_is_not_a_run_in_one_error_naming_the_file(tmp_path, make, message):
    from drgan.runs import read_run, run_kind

    make(tmp_path / "run")
    with pytest.raises(DrganError, match=message):
        read_run(tmp_path / "run")
    assert run_kind(tmp_path / "run") is None


# ---- drgan.locks (fixtures other_holder and folder: conftest.py)

def test_only_lock_files_count_as_an_empty_folder(tmp_path):
    from drgan.locks import only_locks

    assert only_locks(tmp_path)
    (tmp_path / ".drgan.lock").write_text("")
    (tmp_path / ".drgan.lock-shard-0-of-2").write_text("")
    assert only_locks(tmp_path)
    (tmp_path / "x.png").write_text("")
    assert not only_locks(tmp_path)


def test_an_exclusive_hold_records_this_pid_and_is_taken_again_without_error(folder, other_holder):
    import fcntl
    import os

    from drgan import locks

    assert not locks.holds(folder)
    locks.hold(folder)
    locks.hold(folder)  # this process's own lock
    assert locks.holds(folder) and (folder / ".drgan.lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(BlockingIOError):
        other_holder(folder / ".drgan.lock", fcntl.LOCK_SH)
    locks.release(folder)
    assert not locks.holds(folder) and (folder / ".drgan.lock").exists()  # kept without remove
    other_holder(folder / ".drgan.lock", fcntl.LOCK_SH)  # released


def test_a_folder_held_by_another_process_is_refused_naming_its_pid(folder, other_holder):
    import fcntl

    from drgan import locks

    folder.mkdir()
    other_holder(folder / ".drgan.lock", fcntl.LOCK_EX, "4242\n")
    with pytest.raises(DrganError, match=r"f is in use by another drgan process \(pid 4242\)$"):
        locks.hold(folder)
    with pytest.raises(DrganError, match=r"\(pid 4242\)$"):
        locks.hold(folder, "0/2")
    assert not locks.holds(folder)


def test_shards_share_the_folder_and_each_shard_is_held_once(folder, other_holder):
    import fcntl

    from drgan import locks

    folder.mkdir()
    other_holder(folder / ".drgan.lock", fcntl.LOCK_SH)  # another shard's
    other_holder(folder / ".drgan.lock-shard-1-of-2", fcntl.LOCK_EX, "77\n")
    with pytest.raises(DrganError, match=r"writing shard 1/2 \(pid 77\)$"):
        locks.hold(folder, "1/2")
    locks.hold(folder, "0/2")
    assert locks.holds(folder) and not locks.alone(folder)  # the other shard holds it too
    assert locks.holds(folder)  # still held, shared, after asking
    other_holder(folder / ".drgan.lock", fcntl.LOCK_SH)  # a third shard may join
    with pytest.raises(BlockingIOError):
        other_holder(folder / ".drgan.lock-shard-0-of-2", fcntl.LOCK_EX)


def test_shards_of_one_set_under_another_count_are_refused_while_its_writer_lives(folder, other_holder):
    """A writer of shard 0/1 makes every item: a writer of 0/2 beside it would make half of them
    again. Shards of the same count join; a count whose writers are gone is no obstacle; a refused
    writer leaves no count lock of its own behind."""
    import fcntl

    from drgan import locks

    folder.mkdir()
    (folder / ".drgan.lock-shards-4").write_text("")  # left by writers that have ended
    other_holder(folder / ".drgan.lock", fcntl.LOCK_SH)
    other_holder(folder / ".drgan.lock-shards-1", fcntl.LOCK_SH)
    with pytest.raises(DrganError, match=r"/f is in use by another drgan process writing its shards i/1; "
                                         r"shard 0/2 is one of 2: give the shards of one set the same count$"):
        locks.hold(folder, "0/2")
    assert not (folder / ".drgan.lock-shards-2").exists() and not (folder / ".drgan.lock-shard-0-of-2").exists()
    other = other_holder(folder / ".drgan.lock-shards-2", fcntl.LOCK_SH)  # a writer of 1/2 starting beside it
    with pytest.raises(DrganError, match=r"writing its shards i/1; shard 0/2 is one of 2"):
        locks.hold(folder, "0/2")
    assert (folder / ".drgan.lock-shards-2").exists()  # that writer's count lock stays
    fcntl.flock(other, fcntl.LOCK_UN)  # and it ends
    other_holder(folder / ".drgan.lock-shard-1-of-1", fcntl.LOCK_EX)  # another writer of the same count
    locks.hold(folder, "0/1")
    with pytest.raises(BlockingIOError):  # held shared while this process writes
        other_holder(folder / ".drgan.lock-shards-1", fcntl.LOCK_EX)


def test_alone_and_release_with_remove_leave_the_folder_as_found(folder, other_holder):
    import fcntl

    from drgan import locks

    assert not locks.alone(folder)  # not held at all
    locks.hold(folder, "0/1")
    with locks.section(folder):
        pass
    assert locks.alone(folder)
    with pytest.raises(BlockingIOError):  # back to shared after asking: an exclusive holder is still refused
        other_holder(folder / ".drgan.lock", fcntl.LOCK_EX)
    assert sorted(p.name for p in folder.iterdir()) == [".drgan.lock", ".drgan.lock-section", ".drgan.lock-shard-0-of-1",
                                                          ".drgan.lock-shards-1"]
    locks.release(folder, remove=True)
    assert list(folder.iterdir()) == [] and not locks.holds(folder)


def test_a_lock_whose_folder_was_replaced_is_taken_on_the_new_file(folder, other_holder):
    import fcntl
    import shutil

    from drgan import locks

    locks.hold(folder)
    shutil.rmtree(folder)
    locks.hold(folder)  # the old descriptor's file went with its folder
    assert locks.holds(folder) and (folder / ".drgan.lock").exists()
    with pytest.raises(BlockingIOError):
        other_holder(folder / ".drgan.lock", fcntl.LOCK_SH)


def test_generator_weights_prefer_the_ema_copy_only_when_asked_and_present(tmp_path):
    from drgan.runs import generator_weights

    run = _write_run(tmp_path / "run")
    (run / "G.safetensors").write_bytes(b"")
    assert generator_weights(run) == run / "G.safetensors"
    (run / "G_ema.safetensors").write_bytes(b"")
    assert generator_weights(run) == generator_weights(run, ema=True) == run / "G_ema.safetensors"
    assert generator_weights(str(run), ema=False) == run / "G.safetensors"


def test_generator_weights_of_a_run_stopped_while_moving_its_first_checkpoint_name_the_resume(tmp_path):
    from drgan.runs import generator_weights

    run = _write_run(tmp_path / "run")
    (run / "checkpoint.next").mkdir()
    for ema in (True, False):
        with pytest.raises(DrganError, match=r"stopped while moving its first checkpoint into place \(checkpoint.next/\)"):
            generator_weights(run, ema=ema)
    (run / "G.safetensors").write_bytes(b"")  # moved: the next checkpoint is the run's to finish
    assert generator_weights(run) == run / "G.safetensors"


def test_check_out_says_whether_a_run_is_to_be_replaced(tmp_path):
    from drgan.errors import ParameterError
    from drgan.runs import check_out

    assert check_out(tmp_path / "new", overwrite=False, kind="gan") is False
    (tmp_path / "empty").mkdir()
    assert check_out(tmp_path / "empty", overwrite=True, kind="gan") is False
    run = _write_run(tmp_path / "killed")  # run.json, no checkpoint yet
    assert check_out(run, overwrite=False, kind="gan") is True
    (tmp_path / "file").write_text("")
    with pytest.raises(ParameterError, match=r"file: is a file, expected a run folder$"):
        check_out(tmp_path / "file", overwrite=True, kind="gan")


def _left_by_prepare_out(run, overwrite: bool) -> list[str]:
    """The names prepare_out leaves in `run` (its lock is released after)."""
    from drgan import locks
    from drgan.runs import prepare_out

    try:
        assert prepare_out(run, overwrite=overwrite, kind="gan") == run
        return [p.name for p in run.iterdir()]
    finally:
        locks.release(run)


def test_prepare_out_empties_a_run_killed_before_its_first_checkpoint(tmp_path):
    run = _write_run(tmp_path / "run")
    (run / "logs").mkdir()
    (run / "logs" / "events").write_text("old")
    assert _left_by_prepare_out(run, overwrite=False) == [".drgan.lock"]


def test_prepare_out_with_overwrite_empties_a_checkpointed_run_and_keeps_what_links_point_to(tmp_path):
    run = _write_run(tmp_path / "run")
    (run / "state.json").write_text("{}")
    (run / "G.safetensors").write_bytes(b"old")
    (run / "samples").mkdir()
    (run / "samples" / "grid.png").write_bytes(b"old")
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "x").write_text("x")
    (run / "link").symlink_to(kept, target_is_directory=True)
    assert _left_by_prepare_out(run, overwrite=True) == [".drgan.lock"]
    assert (kept / "x").read_text() == "x"


def test_an_input_inside_the_run_folder_is_refused_before_anything_is_removed(tmp_path):
    from drgan.errors import ParameterError
    from drgan.runs import prepare_out

    run = _write_run(tmp_path / "run")
    (run / "state.json").write_text("{}")
    (run / "space.safetensors").write_bytes(b"x")
    for overwrite, tail in ((True, " and overwrite empties; move it out first"), (False, "; move it out first")):
        with pytest.raises(ParameterError) as err:
            prepare_out(run, overwrite=overwrite, kind="gan", inputs=[None, run / "space.safetensors"])
        assert str(err.value) == f"{run / 'space.safetensors'}: inside {run}, the folder this run writes{tail}"
    assert (run / "space.safetensors").read_bytes() == b"x" and not (run / ".drgan.lock").exists()


def test_undone_on_failure_removes_a_new_folder_and_empties_a_given_empty_one(tmp_path):
    from drgan import locks
    from drgan.runs import undone_on_failure

    new, given = tmp_path / "new", tmp_path / "given"
    given.mkdir()
    for out in (new, given):
        with pytest.raises(RuntimeError):
            with undone_on_failure(out, "done.json"):
                locks.hold(out)
                (out / "sub").mkdir()
                (out / "sub" / "f").write_text("partial")
                raise RuntimeError("failed")
        locks.release(out)
    assert not new.exists()
    assert list(given.iterdir()) == []


def test_undone_on_failure_leaves_a_finished_or_an_existing_run_or_one_it_does_not_hold(tmp_path):
    from drgan import locks
    from drgan.runs import undone_on_failure

    def fail_in(out, finished="done.json", new=True, hold=True):
        with pytest.raises(RuntimeError):
            with undone_on_failure(out, finished, new=new):
                if hold:
                    locks.hold(out)
                out.mkdir(exist_ok=True)
                (out / "f").write_text("written")
                raise RuntimeError("failed")
        locks.release(out)
        return out.is_dir() and (out / "f").is_file()

    assert not fail_in(tmp_path / "a")
    assert fail_in(tmp_path / "b", finished="f")  # it got as far as its finished file
    assert fail_in(tmp_path / "c", new=False)  # a resumed run
    assert fail_in(tmp_path / "d", hold=False)  # refused by another's lock: not this process's to undo
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "earlier").write_text("")
    assert fail_in(tmp_path / "e") and (tmp_path / "e" / "earlier").exists()  # not new: a user's folder


def test_hold_creates_missing_parents_and_release_with_remove_needs_no_section_file(tmp_path):
    from drgan import locks

    folder = tmp_path / "a" / "b"
    try:
        locks.hold(folder)
        assert locks.holds(folder)
    finally:
        locks.release(folder, remove=True)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_release_with_remove_tolerates_lock_files_already_gone(tmp_path):
    from drgan import locks

    folder = tmp_path / "f"
    locks.hold(folder, "0/2")
    for path in folder.iterdir():
        path.unlink()
    locks.release(folder, remove=True)
    assert not locks.holds(folder) and list(folder.iterdir()) == []


def test_asking_whether_an_exclusive_holder_is_alone_keeps_its_hold_exclusive(folder, other_holder):
    """The question converts a shared hold to exclusive and back: an exclusive one came back shared,
    open to another process."""
    import fcntl

    from drgan import locks

    locks.hold(folder)
    assert locks.alone(folder)
    with pytest.raises(BlockingIOError):
        other_holder(folder / ".drgan.lock", fcntl.LOCK_SH)


def test_a_run_begun_when_rows_without_a_split_went_by_image_id_does_not_resume_with_them_moved(tmp_path):
    from drgan.config import preset
    from drgan.io import sha256_file
    from drgan.runs import check_same_dataset, write_run_config

    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.csv").write_text("id,grade\n0_left,0\n2_left,1\n")  # 2_left moves (see moved_by_patient)
    recorded = {"labels_sha256": sha256_file(data / "labels.csv")}
    write_run_config(tmp_path / "old", preset("tiny-64"), "local", dataset=recorded)
    with pytest.raises(DrganError, match=r"split by image id; .* moves 1 of them \('2_left'\) between train and val"):
        check_same_dataset(tmp_path / "old", data)
    write_run_config(tmp_path / "older", preset("tiny-64"), "local")   # from before runs recorded their dataset
    with pytest.raises(DrganError, match="split by image id"):
        check_same_dataset(tmp_path / "older", data)
    write_run_config(tmp_path / "new", preset("tiny-64"), "local", dataset={**recorded, "split_by": "patient"})
    check_same_dataset(tmp_path / "new", data)
    (data / "labels.csv").write_text("id,grade\n0_left,0\n")
    write_run_config(tmp_path / "unmoved", preset("tiny-64"), "local",
                     dataset={"labels_sha256": sha256_file(data / "labels.csv")})
    check_same_dataset(tmp_path / "unmoved", data)


def test_the_image_side_is_the_median_of_the_headers_and_a_run_without_labels_is_not_checked(tmp_path):
    from PIL import Image

    from drgan.config import preset
    from drgan.runs import _image_side, check_same_dataset, write_run_config

    (tmp_path / "images").mkdir()
    for name, side in (("a", 100), ("b", 200), ("c", 200), (".hidden", 900)):
        Image.new("RGB", (side, side // 2)).save(tmp_path / "images" / f"{name}.png")
    assert _image_side(tmp_path) == 200
    write_run_config(tmp_path / "run", preset("tiny-64"), "local")
    assert check_same_dataset(tmp_path / "run", tmp_path) is None   # no labels.csv: the readers name that


def test_a_folder_held_under_one_spelling_is_found_under_another(tmp_path):
    """'..' and a symbolic link name the same folder: this process holds it (and is not refused
    by its own lock), and releases it, under either."""
    from drgan import locks

    folder = tmp_path / "set"
    (tmp_path / "other").mkdir()
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    locks.hold(folder, "0/2")
    try:
        for spelling in (tmp_path / "other" / ".." / "set", tmp_path / "link"):
            assert locks.holds(spelling) and locks.alone(spelling)
            locks.hold(spelling, "0/2")  # its own hold, not another process's
    finally:
        locks.release(tmp_path / "link", remove=True)
    assert not locks.holds(folder) and list(folder.iterdir()) == []


def test_a_claimed_folders_marker_is_on_disk_before_the_job_runs(tmp_path, monkeypatch):
    """The marker that lets a demo, an import or an experiment resume is flushed before its rename
    and its folder after it: a power loss cannot leave it empty, which refuses the folder."""
    from drgan.runs import claimed_folder
    from helpers import record_fsyncs

    synced = record_fsyncs(monkeypatch)
    out = tmp_path / "job"
    with claimed_folder(out, "job.json", {"seed": 1}, "a job"):
        assert synced == ["job.json", str(out.resolve())]
    assert json.loads((out / "job.json").read_text()) == {"seed": 1}
