#!/usr/bin/env bash
# Cross-lab benchmark of the per-cell model (`--profile cell`), every figure at the bundle's
# own threshold (chosen on the training sources' validation part, never on the target).
#
# Models (each trained once with scripts/train-crosslab.sh, reused when present):
#   full       aria + pbc-normal + wbc-seg + cnmc-sample: held-out Aria, held-out test parts
#   no-cnmc    without cnmc-sample: zero-shot on C-NMC (another lab, blasts and normal cells,
#              per image and per patient)
#   no-pbc     without pbc-normal: zero-shot on Barcelona's 4,914 normal cells, per class
# Beside each figure: the colour-only and background-only shortcuts (trained on the same
# training part) and, for the model, a source-identification probe on its features.
#
# Usage: scripts/bench-crosslab.sh [MODELS...]   (default: no-cnmc full)
# Env: OUT (target/bench-crosslab), SEED (1), EXTRA (passed to training).
# Guards against "lab = label": zero-shot sources are left out of training entirely; the
# shortcuts show what stain / background alone would score; the probe says how much of the
# lab the features still carry.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-target/bench-crosslab}"
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=(no-cnmc full)
DATA="$(cd "${DATA:-../shared/data}" && pwd)"
BIN=target/release/allscan
mkdir -p "$OUT"

sources_of() {
  case "$1" in
    full) echo aria pbc-normal wbc-seg cnmc-sample ;;
    no-cnmc) echo aria pbc-normal wbc-seg ;;
    no-pbc) echo aria wbc-seg cnmc-sample ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}

for m in "${MODELS[@]}"; do
  run="$OUT/$m"
  # shellcheck disable=SC2046
  if [ ! -f "$run/metadata.json" ] || [ -f "$run/checkpoint/state.json" ]; then
    scripts/train-crosslab.sh "$run" $(sources_of "$m") | tee "$OUT/$m.train.log"
  fi
  src="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"]["root"])' "$run/config.json")"
  echo "== $m: held-out test part, per source" | tee "$OUT/$m.eval.log"
  for s in $(sources_of "$m"); do
    echo "-- $s (test part)" | tee -a "$OUT/$m.eval.log"
    "$BIN" eval "$run" "$src" --split "$run/split.json" --source "$s" --out "$OUT/$m/eval-test-$s" \
      --no-gradcam 2>&1 | tee -a "$OUT/$m.eval.log" || true
  done
  echo "-- source-identification probe (normal cells of the test part)" | tee -a "$OUT/$m.eval.log"
  "$BIN" probe "$run" "$src" --split "$run/split.json" --part test --json "$OUT/$m/probe.json" \
    2>&1 | tee -a "$OUT/$m.eval.log" || true
  case "$m" in
    no-cnmc)
      echo "-- zero-shot: C-NMC sample (another lab; all = blast, hem = normal)" | tee -a "$OUT/$m.eval.log"
      "$BIN" eval "$run" "$DATA/cnmc-sample" --out "$OUT/$m/eval-cnmc" --no-gradcam 2>&1 | tee -a "$OUT/$m.eval.log" || true
      ;;
    no-pbc)
      echo "-- zero-shot: pbc-normal (another lab; every cell normal), called blast per class" | tee -a "$OUT/$m.eval.log"
      "$BIN" predict "$run" "$DATA/pbc-normal" --format csv > "$OUT/$m/pbc-normal.csv" || true
      python3 - "$OUT/$m/pbc-normal.csv" <<'PY' | tee -a "$OUT/$m.eval.log"
import csv, sys, collections
n, pos = collections.Counter(), collections.Counter()
for r in csv.DictReader(open(sys.argv[1])):
    c = r["path"].split("/")[-2]
    n[c] += 1
    pos[c] += r["prediction"] == "leukemia"
for c in sorted(n):
    print(f"{c:<14} {n[c]:>5} cells, called blast {pos[c]:>4} ({100 * pos[c] / n[c]:.1f}%), specificity {100 - 100 * pos[c] / n[c]:.1f}%")
t = sum(n.values()); p = sum(pos.values())
print(f"{'all':<14} {t:>5} cells, called blast {p:>4} ({100 * p / t:.1f}%), specificity {100 - 100 * p / t:.1f}%")
PY
      ;;
  esac
done
echo "logs: $OUT/*.eval.log"
