#!/usr/bin/env bash
# Slide benchmark (not a timed test): 20 synthetic 1712x1368 smear fields (JPEG, ~48 white cells
# each) through `allscan report` (release build), against `allscan predict` on the same fields in
# the same script (the per-cell pipeline alone), so the figure is a ratio as well as seconds.
# Usage: scripts/bench-slide.sh [RUN] [FIELDS] (RUN defaults to target/smoke/run1, a cell-profile
# run; any trained bundle works). Threads: RAYON_NUM_THREADS / taskset as you like (2 cores: the
# goal is <= 20 s for 20 fields).
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-target/smoke/run1}
n=${2:-20}
out=target/bench-slide
[ -f "$run/metadata.json" ] || { echo "no run bundle at $run: pass one (allscan train ... --profile cell)"; exit 1; }
# PROFILE=debug uses the dev build (dependencies at opt-level 3, our crates at 1): slower, an upper bound.
profile=${PROFILE:-release}
if [ "$profile" = release ]; then cargo build -q --release -p allscan-cli --bin allscan --example slide_fields
else cargo build -q --workspace --bin allscan --example slide_fields; profile=debug; fi
bin=target/$profile
rm -rf "$out"
"$bin/examples/slide_fields" "$out/fields" "$n" 1712 1368 7
secs() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
predict=$(secs "$bin/allscan" predict "$run" "$out/fields" --format json)
report=$(secs "$bin/allscan" report "$run" "$out/fields" --out "$out/report")
cells=$(grep -o '"cells_found": [0-9]*' "$out/report/slide.json" | head -n1 | grep -o '[0-9]*$')
printf '%s build: slide of %s fields (1712x1368), %s cells, %s core(s): allscan report %.1f s (%.2f s/field), allscan predict %.1f s; report/predict %.2f\n' \
  "$profile" "$n" "$cells" "$(nproc)" "$report" "$(echo "$report / $n" | bc -l)" "$predict" "$(echo "$report / $predict" | bc -l)"
