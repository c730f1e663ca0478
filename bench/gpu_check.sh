#!/usr/bin/env bash
# Every GPU correctness check and benchmark in one call, for a lent GPU machine:
#   bash bench/gpu_check.sh            (JSON under $OUT, or bench/results/gpu if OUT is unset)
# Each bench/gpu/*.py part prints a readable table and writes OUT/<part>.json; a failing part is
# reported and the next one still runs. Per-part time limits keep the whole run under 9 minutes.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/drgan-install.log 2>&1 || { echo "install failed"; cat /tmp/drgan-install.log; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
declare -A LIMIT=([kernels]=170 [generator]=80 [synthesis]=80 [training]=70 [export]=70 [native]=40 [fid]=30)
status=0
for part in bench/gpu/*.py; do
  name=$(basename "$part" .py)
  [[ $name == _* ]] && continue
  echo "=== $name"
  start=$(date +%s)
  timeout "${LIMIT[$name]:-60}" python3 "$part" --out "$OUT/$name.json" || { echo "!!! $name failed (exit $?)"; status=1; }
  echo "=== $name took $(( $(date +%s) - start )) s"
done
exit $status
