#!/usr/bin/env bash
# One full paper cell end to end with the project's own commands, each timed: Fashion-MNIST IPC 10,
# TGDD (config/paper.yaml: ConvNet-3 width 128; 5 trajectories x 60 epochs, 10,000 iterations,
# 5 evaluations x 1,500 epochs under protocol tgdd), then a report with the hardware, the seconds
# per stage, `total: <seconds> s` and the accuracy beside the paper's DANCE number for this cell.
#
# Usage, from anywhere (it runs from the repository root; --out and RESULTS are read from where it is called):
#   bash benchmarks/gpu_cell.sh [--out DIR]      # the report: DIR/gpu_cell_<gpu>.md (default benchmarks/results)
#   (or REPORT_DIR=DIR)
# Every knob is an environment variable (defaults: the paper cell on one GPU):
#   DATASET=fashion_mnist METHOD=tgdd IPC=10 TRAJECTORIES=5 EPOCHS=60 ITERATIONS=10000 RUNS=5
#   EVAL_EPOCHS=1500 DEVICE=cuda CONFIG=config/paper.yaml (CONFIG: from the repository root)
#   EXTRA="key=value ..."       more config overrides, after the ones above (word-split)
#   RESULTS=DIR                 the run's data and results root (default: a temp dir, removed at the end
#                               unless KEEP=1; a given RESULTS is kept)
#   TGDD="python3 -m tgdd.cli"  the command that runs tgdd (default: `tgdd` on PATH, else python3 -m tgdd.cli)
#   PY=python3                  the Python of the report helper (standard library only)
#   PREPARE_TIMEOUT=900 EXPERTS_TIMEOUT=14400 DISTILL_TIMEOUT=14400 EVALUATE_TIMEOUT=14400  seconds per stage
# A stage that fails or times out stops the run; the report is still written (stages so far, `failed:`)
# and the script exits with that stage's status (124: timeout).
# Rehearsal on a CPU at a tiny scale (about a minute; the paper's width-128 network: two):
#   DATASET=digits IPC=1 TRAJECTORIES=1 EPOCHS=1 ITERATIONS=2 RUNS=1 EVAL_EPOCHS=1 DEVICE=cpu \
#   EXTRA="experts.arch=convnet-2-w16 evaluate.archs=[convnet-2-w16]" bash benchmarks/gpu_cell.sh --out /tmp/cell
# On the GPU machine (../shared/gpu/README.md): source .gpu/on-device.sh; bash benchmarks/gpu_cell.sh --out "$OUT"
set -euo pipefail

out=${REPORT_DIR:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_cell.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # from the caller's directory
[ -z "$out" ] || out=$(absolute "$out")
[ -z "${RESULTS:-}" ] || RESULTS=$(absolute "$RESULTS")
cd "$(dirname "$0")/.."
out=${out:-benchmarks/results}

DATASET=${DATASET:-fashion_mnist}
METHOD=${METHOD:-tgdd}
IPC=${IPC:-10}
TRAJECTORIES=${TRAJECTORIES:-5}
EPOCHS=${EPOCHS:-60}
ITERATIONS=${ITERATIONS:-10000}
RUNS=${RUNS:-5}
EVAL_EPOCHS=${EVAL_EPOCHS:-1500}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-config/paper.yaml}
EXTRA=${EXTRA:-}
PY=${PY:-python3}
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-30}  # progress bars in a log: one line per 30 s, not 10 per second

if [ -n "${TGDD:-}" ]; then
  read -r -a tgdd <<< "$TGDD"
elif command -v tgdd > /dev/null; then
  tgdd=(tgdd)
else
  tgdd=(python3 -m tgdd.cli)  # the GPU machine has no console script
fi

if [ -n "${RESULTS:-}" ]; then
  root=$RESULTS
  mkdir -p "$root"
else
  root=$(mktemp -d "${TMPDIR:-/tmp}/gpu_cell.XXXXXX")
  [ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$root"' EXIT
fi
stages=$root/stages.tsv
: > "$stages"

read -r -a extra <<< "$EXTRA"
overrides=(
  "dataset=$DATASET" "device=$DEVICE" tracking.enabled=false
  "paths.data=$root/data" "paths.results=$root/results"
  "experts.num_trajectories=$TRAJECTORIES" "experts.epochs=$EPOCHS"
  "distill.method=$METHOD" "distill.ipc=$IPC" "distill.iterations=$ITERATIONS"
  "evaluate.runs=$RUNS" "evaluate.epochs=$EVAL_EPOCHS"
  ${extra[@]+"${extra[@]}"}
)
settings="$TRAJECTORIES trajectories x $EPOCHS epochs, $ITERATIONS iterations, $RUNS runs x $EVAL_EPOCHS epochs; \
--config $CONFIG ${overrides[*]}"

report() {
  "$PY" benchmarks/gpu_cell_report.py --stages "$stages" --results "$root/results" --out "$out" \
    --dataset "$DATASET" --method "$METHOD" --ipc "$IPC" --device "$DEVICE" --settings "$settings"
}

# run_stage NAME UNITS UNIT TIMEOUT: run `tgdd NAME` under its own timeout, append its seconds to the table;
# on failure write the report so far and exit with the stage's status.
run_stage() {
  local name=$1 units=$2 unit=$3 limit=$4 start end seconds status=0
  echo "== gpu_cell: tgdd $name (limit $limit s)" >&2
  start=$(date +%s.%N)
  timeout "$limit" "${tgdd[@]}" "$name" --config "$CONFIG" "${overrides[@]}" || status=$?
  end=$(date +%s.%N)
  seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$seconds" "$units" "$unit" "$status" "$limit" >> "$stages"
  echo "== gpu_cell: tgdd $name: $seconds s, exit $status" >&2
  if [ "$status" -ne 0 ]; then
    report || true
    exit "$status"
  fi
}

run_stage prepare 1 "data set" "${PREPARE_TIMEOUT:-900}"
run_stage experts $((TRAJECTORIES * EPOCHS)) "expert epoch" "${EXPERTS_TIMEOUT:-14400}"
run_stage distill "$ITERATIONS" iteration "${DISTILL_TIMEOUT:-14400}"
run_stage evaluate $((RUNS * EVAL_EPOCHS)) "evaluation epoch" "${EVALUATE_TIMEOUT:-14400}"
report
