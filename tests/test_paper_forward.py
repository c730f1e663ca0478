import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "paper_cpu_forward.py"


@pytest.mark.slow
def test_paper_1280_forward_fits_in_12_gb_on_cpu():
    # A fresh process so the peak resident memory is this forward's alone.
    out = subprocess.run([sys.executable, str(SCRIPT)], check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["finite"]
    assert result["peak_rss_gb"] < 12
