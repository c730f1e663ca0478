import csv
import subprocess
import sys

import numpy as np
from PIL import Image


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "drgan.cli", "demo", "--out", str(out), "--quick", "--device", "cpu"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.ndim == 3 and sheet.shape[0] > 5 * 64
    with open(out / "synthetic" / "manifest.csv", newline="") as f:
        grades = sorted(int(r["grade"]) for r in csv.DictReader(f))
    assert grades == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    report = (out / "report.md").read_text()
    stages = ("phantom dataset", "grader + grading spaces", "GAN global stage", "GAN local stage", "synthesis",
              "condition fidelity")
    for stage in stages:
        assert f"| {stage} |" in report
    # The report answers whether the images follow their masks, beside the real phantoms' figures.
    assert "| vessel fidelity >= 80% of the real phantoms' above chance |" in report
    assert "| grader kappa on the synthesized set >= 0.6 |" in report
    assert "| reference (" in report
    # A rerun reuses every finished stage.
    again = subprocess.run([sys.executable, "-m", "drgan.cli", "demo", "--out", str(out), "--quick", "--device", "cpu"],
                           capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("(reused)") == len(stages)
    # A rerun at another scale is refused, not served the --quick stages under the full demo's report;
    # a dataset folder is not written into.
    full = subprocess.run([sys.executable, "-m", "drgan.cli", "demo", "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True)
    assert full.returncode == 1 and full.stderr.startswith(f"error: --out {out}: holds a drgan demo with other settings (")
    data = out / "data"
    before = sorted(p.name for p in data.iterdir())
    into = subprocess.run([sys.executable, "-m", "drgan.cli", "demo", "--out", str(data), "--quick", "--device", "cpu"],
                          capture_output=True, text=True)
    assert into.returncode == 1 and "folder not empty and not a drgan demo (no demo.json)" in into.stderr
    assert sorted(p.name for p in data.iterdir()) == before


def test_demo_killed_in_a_gan_stage_resumes_it(tmp_path, monkeypatch):
    """The rerun goes on from the stage's last checkpoint and ends with an uninterrupted demo's weights."""
    import json

    import pytest

    from drgan.demo import run_demo
    from drgan.training.gan import GanTrainer

    quiet = dict(device="cpu", quick=True, log=lambda *_: None)
    run_demo(tmp_path / "whole", **quiet)
    step = GanTrainer.train_step

    def killed_at_step_2(self, batch, n):
        if self.stage == "local" and n == 2:
            raise KeyboardInterrupt
        return step(self, batch, n)

    monkeypatch.setattr(GanTrainer, "train_step", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "cut", **quiet)
    assert json.loads((tmp_path / "cut" / "gan-local" / "state.json").read_text())["step"] == 2
    steps = []

    def recorded(self, batch, n):
        steps.append((self.stage, n))
        return step(self, batch, n)

    monkeypatch.setattr(GanTrainer, "train_step", recorded)
    run_demo(tmp_path / "cut", **quiet)
    assert steps == [("local", 2)]  # only the step the kill cut off; the global stage is reused
    for name in ("G.safetensors", "D.safetensors"):
        assert (tmp_path / "cut" / "gan-local" / name).read_bytes() == (tmp_path / "whole" / "gan-local" / name).read_bytes()
