"""The augmentation experiment: same-grade MixUp/CutMix, and the whole protocol end to end at tiny-64."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from drgan.errors import DrganError
from drgan.io import sha256_file
from drgan.training.augmentation_experiment import MixedGradeDataset, cutmix, label_distribution, mixup


class _Constant(torch.utils.data.Dataset):
    """Image j is filled with 10 * grade + j // 5 so a mixed image tells which grades it came from."""

    def __init__(self, grades):
        self.grades = list(grades)

    def __len__(self):
        return len(self.grades)

    def __getitem__(self, j):
        value = 10.0 * self.grades[j] + j // 5
        return {"id": str(j), "image": torch.full((3, 16, 16), value), "cond": torch.zeros(8, 16, 16),
                "grade": torch.tensor(self.grades[j])}


def test_cutmix_box_share():
    a, b = torch.zeros(1, 3, 100, 100), torch.ones(1, 3, 100, 100)
    rng = np.random.default_rng(0)
    shares = [cutmix(a, b, 0.75, rng).mean().item() for _ in range(200)]
    assert max(shares) == pytest.approx(0.25, abs=0.02)  # an unclipped box covers 1 - lam
    assert min(shares) > 0
    assert torch.equal(mixup(a, b, 0.3), torch.full_like(a, 0.7))


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_images_stay_within_grade_and_are_reproducible(kind):
    source = _Constant([g for _ in range(4) for g in range(5)])  # 4 images per grade
    mixed = MixedGradeDataset(source, [0, 1, 2, 3, 4] * 6, kind, seed=1)
    assert len(mixed) == 30 and mixed.grades[:5] == [0, 1, 2, 3, 4]
    blended = 0
    for i in range(len(mixed)):
        item = mixed[i]
        g = int(item["grade"])
        values = item["image"].unique()
        assert values.min() >= 10 * g and values.max() <= 10 * g + 3  # only images of grade g
        blended += len(values) > 1 or not float(values[0]).is_integer()
    assert blended > 10
    assert torch.equal(mixed[7]["image"], mixed[7]["image"])


def test_mixed_grade_without_source_images_is_an_error():
    with pytest.raises(DrganError, match=r"grade\(s\) \[4\]"):
        MixedGradeDataset(_Constant([0, 1, 2, 3]), [0, 4], "mixup", seed=0)


def test_label_distribution():
    d = label_distribution([0, 0, 0, 1, 4])
    assert d["count"] == [3, 1, 0, 0, 1] and d["share"] == [0.6, 0.2, 0.0, 0.0, 0.2]


def test_augment_experiment_end_to_end(tmp_path):
    from drgan.cli import cli
    from drgan.data.phantom import write_phantom_dataset

    real = write_phantom_dataset(tmp_path / "real", 20, 64, seed=0)                    # train/val/test rows
    fake = write_phantom_dataset(tmp_path / "fake", 10, 64, seed=1, grades=[3, 4] * 5, split=False)
    out = tmp_path / "exp"
    result = CliRunner().invoke(cli, [
        "experiment", "augment", "--real", str(real), "--synthetic", str(fake), "--test", str(real),
        "--baseline", "mixup", "--preset", "tiny-64", "--epochs", "1", "--batch", "8", "--device", "cpu",
        "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert list(r["arms"]) == ["real", "real+synthetic", "real+mixup"]
    assert r["test"] == {"folder": str(real), "split": "test", "count": 5}
    real_counts = r["arms"]["real"]["label_distribution"]["count"]
    assert real_counts == [2, 2, 2, 2, 2]
    assert r["arms"]["real+synthetic"]["label_distribution"]["count"] == [2, 2, 2, 7, 7]
    assert r["arms"]["real+mixup"]["label_distribution"]["count"] == [2, 2, 2, 7, 7]
    for name, arm in r["arms"].items():
        m = arm["test"]
        assert m["count"] == 5 and 0 <= m["accuracy"] <= 1 and len(m["tpr"]) == 5
        lo, hi = m["accuracy_ci95"]   # over resamples of the 5 test images
        assert lo <= m["accuracy"] <= hi and ("accuracy_diff_ci95" in m) == (name != "real")
        assert (tmp_path / "exp" / arm["run"].split("/")[-1] / "grader.safetensors").is_file()
    assert json.loads((out / "results.json").read_text()) == r
    table = (out / "results.md").read_text()
    assert [r["arms"][a]["steps"] for a in ("real", "real+synthetic")] == [1, 2]  # 10 and 20 images at batch 8
    assert "| real+synthetic | 20 | 2 |" in table and "| Training | grade 0 |" in table
    assert "2 (10.0%)" in table and "7 (35.0%)" in table
    assert "## 95% intervals over the test images" in table and "| Training | Acc. | Kappa | Acc. - real | Kappa - real |" in table
    lo, hi = r["arms"]["real+mixup"]["test"]["accuracy_diff_ci95"]
    assert f"| real+mixup | {lo:.4f} to {hi:.4f} |" not in table and f"{lo:+.4f} to {hi:+.4f}" in table


def test_data_sha256_names_a_set_by_its_images(tmp_path):
    """Two synthesized sets of one plan share their labels.csv, their manifests hold each image's
    sha256; two datasets of the same ids and grades (phantoms of another seed) share theirs too."""
    from drgan.data.phantom import write_phantom_dataset
    from drgan.training.augmentation_experiment import data_sha256

    for name, digest in (("a", "0" * 64), ("b", "1" * 64)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "labels.csv").write_text("id,grade\nsyn_0,0\n")
        (tmp_path / name / "manifest.csv").write_text(f"id,grade,sha256\nsyn_0,0,{digest}\n")
    c, d = (write_phantom_dataset(tmp_path / n, 10, 64, seed=s) for n, s in (("c", 5), ("d", 6)))
    assert (c / "labels.csv").read_bytes() == (d / "labels.csv").read_bytes()
    assert len({data_sha256(tmp_path / n) for n in "abcd"}) == 4


def test_augment_experiment_output_folder_is_its_own(tmp_path, capsys):
    """Never written into a dataset; a rerun keeps the arms an interrupted run finished, and says
    so; other settings in the same folder are refused. The arms' graders condition no GAN: the
    warnings on their grading spaces are not given."""
    from drgan.data.phantom import write_phantom_dataset
    from drgan.errors import DrganError
    from drgan.training.augmentation_experiment import run_augment_experiment

    real = write_phantom_dataset(tmp_path / "real", 20, 64, seed=0)
    fake = write_phantom_dataset(tmp_path / "fake", 10, 64, seed=1, grades=[3, 4] * 5, split=False)
    before = sorted(p.name for p in real.iterdir())
    args = dict(preset="tiny-64", epochs=1, batch=8, device="cpu")
    unrelated = write_phantom_dataset(tmp_path / "unrelated", 5, 64, seed=2)
    with pytest.raises(DrganError, match="not an augmentation experiment"):
        run_augment_experiment(real, fake, real, unrelated, **args)
    with pytest.raises(DrganError, match=f"^{real / 'exp'}: inside {real}, a folder this command uses"):
        run_augment_experiment(real, fake, real, real / "exp", **args)
    assert sorted(p.name for p in real.iterdir()) == before
    out = tmp_path / "exp"
    capsys.readouterr()
    first, _ = run_augment_experiment(real, fake, real, out, **args)
    assert first["arms"]["real"]["val_accuracy"] < 0.8 and "warning: grader" not in capsys.readouterr().err
    (out / "results.json").unlink()  # as if killed before the end
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("*/grader.safetensors")}
    again, _ = run_augment_experiment(real, fake, real, out, **args)
    assert again == first and {p: p.stat().st_mtime_ns for p in out.glob("*/grader.safetensors")} == stamp
    assert f"real+synthetic: its grader was trained by an earlier call, in {out / 'real_synthetic'}\n" in capsys.readouterr().err
    for name in ("grader.safetensors", "grading_space.safetensors"):  # killed after the arm's last checkpoint
        (out / "real_synthetic" / name).unlink()
    again, _ = run_augment_experiment(real, fake, real, out, **args)
    assert again == first  # the arm resumed from its checkpoint: the same grader
    with pytest.raises(DrganError, match=r"holds an augmentation experiment with other settings \(epochs: 1 there, 2 now\)"):
        run_augment_experiment(real, fake, real, out, **{**args, "epochs": 2})
    now = json.loads((out / "experiment.json").read_text())
    untested = {k: v for k, v in now.items() if not k.startswith("test_")}  # as written before the test set
    by_labels = untested | {f"{n}_sha256": sha256_file(f / "labels.csv") for n, f in (("real", real), ("synthetic", fake))}
    by_path = {k: v for k, v in untested.items() if not k.endswith("_sha256")} | {"real": str(real), "synthetic": str(fake)}
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("*/grader.safetensors")}
    for record in (by_labels, by_path):
        (out / "experiment.json").write_text(json.dumps(record))
        again, _ = run_augment_experiment(real, fake, real, out, **args)
        assert again == first and {p: p.stat().st_mtime_ns for p in out.glob("*/grader.safetensors")} == stamp
        assert json.loads((out / "experiment.json").read_text()) == now
    test = write_phantom_dataset(tmp_path / "test", 20, 64, seed=3)  # real's ids and grades, other images
    assert (test / "labels.csv").read_bytes() == (real / "labels.csv").read_bytes()
    with pytest.raises(DrganError, match=r"other settings \(test_sha256: "):
        run_augment_experiment(real, fake, test, out, **args)  # its results would replace the first test set's
    other = write_phantom_dataset(tmp_path / "other", 10, 64, seed=2, grades=[4, 3] * 5, split=False)
    with pytest.raises(DrganError, match=r"other settings \(synthetic_sha256: '[0-9a-f]{12}\.\.\.' there, '[0-9a-f]{12}\.\.\.' now\)"):
        run_augment_experiment(real, other, real, out, **args)  # the same arms would be kept on other data


def test_a_test_set_that_is_the_real_training_set_is_refused(tmp_path):
    """Without a test split every row of --test is tested: the --real dataset itself would be
    tested on the images its arms trained on."""
    from drgan.data.phantom import write_phantom_dataset
    from drgan.errors import ParameterError
    from drgan.training.augmentation_experiment import run_augment_experiment

    real = write_phantom_dataset(tmp_path / "real", 20, 64, seed=0)
    labels = real / "labels.csv"
    labels.write_text(labels.read_text().replace(",test", ",train"))
    fake = write_phantom_dataset(tmp_path / "fake", 10, 64, seed=1, split=False)
    with pytest.raises(ParameterError) as err:
        run_augment_experiment(real, fake, real, tmp_path / "exp", preset="tiny-64", epochs=1, batch=8)
    assert str(err.value).startswith(f"test {real}: the real dataset, which has no test split")
    assert not (tmp_path / "exp").exists()


def test_a_synthetic_set_drawn_on_test_images_structures_is_refused(tmp_path):
    """Its real+synthetic arm would train on images drawn on the vessel trees and discs of the very
    eyes it is tested on (synthesize --structures REAL took every split)."""
    import csv

    from drgan.data.phantom import write_phantom_dataset
    from drgan.errors import ParameterError
    from drgan.synthesis.writer import MANIFEST_FIELDS
    from drgan.training.augmentation_experiment import run_augment_experiment

    real = write_phantom_dataset(tmp_path / "real", 20, 64, seed=0)
    with open(real / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    tested = [r["id"] for r in rows if r["split"] == "test"]
    trained = [r["id"] for r in rows if r["split"] == "train"]
    fake = write_phantom_dataset(tmp_path / "fake", 4, 64, seed=1, split=False)

    def manifest(structures):
        with open(fake / "labels.csv") as f:
            ids = [r["id"] for r in csv.DictReader(f)]
        with open(fake / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, MANIFEST_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows({"id": i, "grade": 0, "structure_id": s} for i, s in zip(ids, structures))

    manifest([trained[0], tested[0], trained[1], tested[1]])
    with pytest.raises(ParameterError) as err:
        run_augment_experiment(real, fake, real, tmp_path / "exp", preset="tiny-64", epochs=1, batch=8)
    assert err.value.render(lambda n: f"--{n}") == (
        f"--synthetic {fake}: 2 of its structures are test images of --test {real} ({', '.join(sorted(tested[:2]))}): "
        "the real+synthetic arm would train on the eyes it is tested on; synthesize it with --structures-split train")
    assert not (tmp_path / "exp").exists()


def test_an_epoch_sample_draws_its_size_afresh_each_epoch_without_replacement():
    from drgan.training.augmentation_experiment import _EpochSample

    sample = _EpochSample(_Constant([0, 1, 2, 3, 4] * 4), 8, seed=0)
    first = list(sample.indices)
    assert len(sample) == 8 and len(set(first)) == 8 and sample.grades == [g % 5 for g in first]
    sample.set_epoch(1)
    assert sample.indices != first and len(set(sample.indices)) == 8
    sample.set_epoch(0)
    assert sample.indices == first  # an epoch's draw depends on (seed, epoch) only: resumes repeat it
    assert [int(sample[i]["grade"]) for i in range(8)] == [g % 5 for g in first]


def test_equal_steps_gives_every_arm_the_real_arms_steps(tmp_path):
    """An arm with 10 synthetic images beside 10 real ones took twice the real arm's optimizer steps:
    part of any gain could come from the longer training."""
    from drgan.data.phantom import write_phantom_dataset
    from drgan.training.augmentation_experiment import run_augment_experiment

    real = write_phantom_dataset(tmp_path / "real", 20, 64, seed=0)
    fake = write_phantom_dataset(tmp_path / "fake", 10, 64, seed=1, grades=[3, 4] * 5, split=False)
    result, markdown = run_augment_experiment(real, fake, real, tmp_path / "exp", preset="tiny-64", epochs=1, batch=4,
                                              equal_steps=True)
    arms = result["arms"]
    assert arms["real"]["steps"] == arms["real+synthetic"]["steps"] == 2  # 10 real images at batch 4
    for arm in arms.values():  # the steps the trainer took, as its last checkpoint holds them
        assert json.loads((Path(arm["run"]) / "state.json").read_text())["step"] == 2
    assert arms["real+synthetic"]["train_images"] == 20  # the data it draws from
    assert arms["real+synthetic"]["label_distribution"]["count"] == [2, 2, 2, 7, 7]
    assert result["protocol"]["equal_steps"] is True and "equal steps" in markdown


def test_an_experiment_begun_when_unsplit_rows_went_by_image_id_is_not_resumed_with_them_moved(tmp_path):
    """Rows without a split now go to train or val by patient (EyePACS's <n>_left, <n>_right):
    arms an earlier version trained on the id's split must not sit beside arms on the patient's."""
    from drgan.data.labels import moved_by_patient
    from drgan.data.phantom import write_phantom_dataset
    from drgan.errors import DrganError
    from drgan.training.augmentation_experiment import run_augment_experiment
    from helpers import rows, write_rows

    real = write_phantom_dataset(tmp_path / "real", 20, 64, seed=0)
    header, *body = rows(real)
    renamed = []
    for n, (sid, grade, split) in enumerate(body):
        (real / "images" / f"{sid}.png").rename(real / "images" / f"{n}_left.png")
        (real / "masks" / sid).rename(real / "masks" / f"{n}_left")
        renamed.append([f"{n}_left", grade, split if split == "test" else ""])
    write_rows(real, [header, *renamed])
    assert moved_by_patient(real)
    fake = write_phantom_dataset(tmp_path / "fake", 10, 64, seed=1, grades=[3, 4] * 5, split=False)
    out = tmp_path / "exp"
    args = dict(preset="tiny-64", epochs=1, batch=8, device="cpu")
    first, _ = run_augment_experiment(real, fake, real, out, **args)
    assert first["protocol"]["split_by"] == "patient"
    earlier = json.loads((out / "experiment.json").read_text())
    del earlier["split_by"]
    (out / "experiment.json").write_text(json.dumps(earlier))
    with pytest.raises(DrganError, match=r"other settings \(split_by: not set there, 'patient' now\)"):
        run_augment_experiment(real, fake, real, out, **args)


def test_repeats_train_every_arm_with_each_seed_and_give_the_spread(tmp_path, capsys, monkeypatch):
    """--repeats 3: every arm under its own run folder per seed, each seed's scores and intervals
    as one run gives them, and per arm the mean and standard deviation over the seeds, of its
    differences from the real arm too (paired by seed); a rerun keeps every finished grader."""
    from drgan.data.phantom import write_phantom_dataset
    from drgan.training import augmentation_experiment as experiment

    real = write_phantom_dataset(tmp_path / "real", 20, 64, seed=0)
    fake = write_phantom_dataset(tmp_path / "fake", 10, 64, seed=1, grades=[3, 4] * 5, split=False)
    args = dict(preset="tiny-64", epochs=1, batch=8, device="cpu", baselines=("mixup",))
    out = tmp_path / "exp"
    result, markdown = experiment.run_augment_experiment(real, fake, real, out, seed=5, repeats=3, **args)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(
        f"{arm}_seed{s}" for arm in ("real", "real_synthetic", "real_mixup") for s in (5, 6, 7))
    assert [run["seed"] for run in result["repeats"]] == [5, 6, 7]
    assert json.loads((out / "experiment.json").read_text())["repeats"] == 3
    for run in result["repeats"]:
        single, _ = experiment.run_augment_experiment(real, fake, real, tmp_path / f"single{run['seed']}", seed=run["seed"], **args)
        assert {n: a["test"] for n, a in run["arms"].items()} == {n: a["test"] for n, a in single["arms"].items()}
    for name, arm in result["arms"].items():
        accuracy = [run["arms"][name]["test"]["accuracy"] for run in result["repeats"]]
        assert arm["test"]["accuracy_mean"] == pytest.approx(np.mean(accuracy))
        assert arm["test"]["accuracy_std"] == pytest.approx(np.std(accuracy, ddof=1))
        assert arm["seeds"] == [5, 6, 7] and arm["steps"] == result["repeats"][0]["arms"][name]["steps"]
        if name != "real":
            gains = [run["arms"][name]["test"]["accuracy"] - run["arms"]["real"]["test"]["accuracy"] for run in result["repeats"]]
            assert arm["test"]["accuracy_diff_mean"] == pytest.approx(np.mean(gains))
    assert "3 seeds (5 to 7)" in markdown and "### Seed 6" in markdown
    t = result["arms"]["real+mixup"]["test"]
    assert f"| real+mixup | 20 | 2 | {t['accuracy_mean']:.4f} +- {t['accuracy_std']:.4f} |" in markdown
    assert (out / "results.md").read_text() == markdown and json.loads((out / "results.json").read_text()) == result

    monkeypatch.setattr(experiment, "train_grader", lambda *a, **k: pytest.fail("a finished grader was trained again"))
    capsys.readouterr()
    again, _ = experiment.run_augment_experiment(real, fake, real, out, seed=5, repeats=3, **args)
    assert again == result and f"in {out / 'real_mixup_seed7'}\n" in capsys.readouterr().err
    with pytest.raises(DrganError, match=r"other settings \(repeats: 3 there, not set now\)"):
        experiment.run_augment_experiment(real, fake, real, out, seed=5, **args)
    with pytest.raises(DrganError, match=r"^repeats 2: must be >= 1, with the last seed"):
        experiment.run_augment_experiment(real, fake, real, tmp_path / "last", seed=2**64 - 1, repeats=2, **args)


def test_the_spread_over_seeds_of_a_kappa_undefined_in_one_seed_is_n_a():
    from drgan.training.augmentation_experiment import _fmt_spread, summarize_repeats

    def run(seed, real, other):
        arm = {"train_images": 4, "steps": 1, "label_distribution": label_distribution([0, 1])}
        return {"seed": seed, "arms": {"real": {**arm, "test": {"accuracy": real[0], "kappa": real[1]}},
                                       "real+synthetic": {**arm, "test": {"accuracy": other[0], "kappa": other[1]}}}}

    summary = summarize_repeats([run(0, (0.5, 0.2), (0.75, None)), run(1, (0.25, 0.4), (0.5, 0.5))])
    t = summary["real+synthetic"]["test"]
    assert (t["accuracy_mean"], t["accuracy_diff_mean"]) == (0.625, 0.25)
    assert t["accuracy_std"] == pytest.approx(np.std([0.75, 0.5], ddof=1)) and t["accuracy_diff_std"] == 0.0
    assert (t["kappa_mean"], t["kappa_std"], t["kappa_diff_mean"]) == (None, None, None)
    assert summary["real"]["test"]["kappa_mean"] == pytest.approx(0.3) and "kappa_diff_mean" not in summary["real"]["test"]
    assert (_fmt_spread(t, "kappa"), _fmt_spread(t, "accuracy_diff", True)) == ("n/a", "+0.2500 +- 0.0000")


def test_cli_passes_repeats_on_and_refuses_none(tmp_path, monkeypatch, capsys):
    from drgan.cli import cli
    from drgan.cli.common import run_command
    from drgan.data.phantom import write_phantom_dataset
    from drgan.training import augmentation_experiment as experiment

    real = write_phantom_dataset(tmp_path / "real", 10, 64, seed=0)
    calls = []
    monkeypatch.setattr(experiment, "run_augment_experiment", lambda *a, **k: calls.append(k) or ({}, "table\n"))
    args = ["experiment", "augment", "--real", str(real), "--synthetic", str(real), "--test", str(real), "--out", str(tmp_path / "e")]
    assert run_command(cli, args=args + ["--repeats", "4"], prog_name="drgan") == 0
    assert calls[0]["repeats"] == 4 and calls[0]["seed"] == 0
    assert run_command(cli, args=args + ["--repeats", "0"], prog_name="drgan") == 1
    assert capsys.readouterr().err.endswith("error: --repeats 0: outside the range 1<=x<=1000\n")
