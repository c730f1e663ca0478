"""The GPU check's JSON files as one markdown page, and the outcome of each part recorded into its JSON.

    python bench/gpu/report.py DIR > bench/results/gpu-<card>-<date>/README.md
    python bench/gpu/report.py --record DIR/<part>.json --status RC --seconds S --log LOG [--dry-run]

`--record` (run by bench/gpu_check.sh after each part) adds the exit status, the seconds and the end
of the part's log to what the part wrote, or writes them alone where the part crashed or timed out
before writing, so every part leaves one JSON either way. Standard library only: no torch import.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PARTS = ("kernels", "training", "generator", "synthesis", "export", "native", "fid")  # gpu_check.sh's order
LOG_TAIL_CHARS = 4000
TIMED_OUT = (124, 137)  # timeout(1): limit reached; killed after the grace period


def outcome(status: int, report: dict) -> str:
    if status in TIMED_OUT:
        return "timed out"
    if status != 0:
        return "failed"
    return "skipped" if "skipped" in report else "passed"


def record(path: Path, status: int, seconds: int, log: Path, dry_run: bool) -> None:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = {"dry_run": dry_run}
    report["part"] = {"outcome": outcome(status, report), "exit_status": status, "seconds": seconds,
                      "log_tail": log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.is_file() else ""}
    path.write_text(json.dumps(report, indent=2) + "\n")


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict]) -> list[str]:
    """One markdown table over the union of the rows' keys, in order of first appearance."""
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "trace"))
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    return lines


def section(name: str, report: dict) -> list[str]:
    """A part's scalars as a key/value table, each list of rows and each mapping as a table of its own."""
    lines = [f"## {name}", ""]
    scalars = {k: v for k, v in report.items() if not isinstance(v, (dict, list)) or not v}
    lines += table([{"key": k, "value": v} for k, v in scalars.items()]) + [""]
    for key, value in report.items():
        if key == "part" or key in scalars:
            continue
        lines.append(f"**{key}**")
        lines.append("")
        if isinstance(value, list) and all(isinstance(row, dict) for row in value):
            lines += table(value)
        elif isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()) and value:
            lines += table([{"name": k, **v} for k, v in value.items()])
        elif isinstance(value, dict):
            lines += table([{"name": k, "value": v} for k, v in value.items()])
        else:
            lines.append(cell(value))
        lines.append("")
    return lines


def render(folder: Path) -> str:
    device = folder / "device.txt"
    reports = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    order = [p for p in PARTS if p in reports] + sorted(set(reports) - set(PARTS))
    lines = ["# GPU check", "", f"Device: {device.read_text().strip() if device.is_file() else 'unknown (no device.txt)'}", ""]
    if any(r.get("dry_run") for r in reports.values()):
        lines += ["**Dry run** (CPU, smallest shapes, Triton interpreter): the numbers say nothing about speed.", ""]
    summary = [{"part": name, **{k: reports[name].get("part", {}).get(k, "") for k in ("outcome", "exit_status", "seconds")}}
               for name in order]
    missing = [{"part": name, "outcome": "no JSON"} for name in PARTS if name not in reports]
    lines += table(summary + missing) + [""]
    for name in order:
        lines += section(name, reports[name])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="folder of the JSON files, or with --record: one part's JSON")
    parser.add_argument("--record", action="store_true", help="record a part's outcome into its JSON")
    parser.add_argument("--status", type=int, default=0)
    parser.add_argument("--seconds", type=int, default=0)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.record:
        record(args.path, args.status, args.seconds, args.log or Path("/nonexistent"), args.dry_run)
    else:
        sys.stdout.write(render(args.path) + "\n")


if __name__ == "__main__":
    main()
