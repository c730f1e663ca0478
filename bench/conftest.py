"""pytest-benchmark harness.

Run:      make bench            (all CPU benchmarks -> bench/results/cpu-latest.json)
One file: .venv/bin/python -m pytest bench/test_generator_forward.py --benchmark-json=bench/results/generator.json
Compare:  .venv/bin/pytest-benchmark compare bench/results/a.json bench/results/b.json --columns=min,median,iqr
Each result carries the machine info pytest-benchmark records; GPU figures come from
bench/gpu_check.sh and are stored beside them with the device named.
"""
import os
import sys
from pathlib import Path

import torch

# The synthesis benchmarks build their run folders with the tests' fixture.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

torch.set_num_threads(os.cpu_count() or 1)
