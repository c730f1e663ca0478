"""bench/ablation.py: one run per arm, each measured the same way, one table."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "ablation.py"


def test_ablation_runs_each_arm_and_writes_one_table(tmp_path):
    out = tmp_path / "abl"
    cmd = [sys.executable, str(SCRIPT), "--preset", "tiny-64", "--steps", "2", "--arms", "no-agm,no-cls",
           "--phantoms", "30", "--grader-epochs", "1", "--device", "cpu", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    arms = json.loads((out / "ablation.json").read_text())["arms"]
    assert list(arms) == ["no-agm", "no-cls"]
    for row in arms.values():
        assert set(row["fidelity"]) == {"vessel", "red_lesion", "bright_lesion"} and row["swd_x1e3"] > 0
    assert json.loads((out / "runs" / "no-agm" / "run.json").read_text())["model"]["agm"] is False
    assert json.loads((out / "runs" / "no-cls" / "run.json").read_text())["options"]["lambda_cls"] == 0.0
    table = (out / "ablation.md").read_text()
    assert all(f"| {arm} |" in table for arm in arms)
    # A second run never writes into the first one's folder.
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode != 0 and "folder not empty" in again.stderr
