#!/usr/bin/env bash
# White-cell segmentation and scale benchmark of allscan-preprocess (scale.rs + cell.rs), on
# the shared real data. Prints, as markdown tables:
#   - wbc-seg (jtsc/, cellavision/): per-image mean Dice of the nucleus and of the whole cell
#     (the found cell nearest the image centre against the experts' mask), beside the older
#     find_nuclei on the same images;
#   - per shared set: median / IQR of the estimated um per pixel, how many estimates came from
#     red cells / were assumed, the fallback reasons, white cells per image (not Small);
#   - speed on one thread: a 2592x1944 mosaic of real crops, as a ratio to find_nuclei.
#
# Usage: scripts/bench-segmentation.sh [extra bench_cells flags]
#   e.g. --limit 300 (images per set, evenly strided), --dump DIR (overlay PNGs),
#        --um-per-px 0.12 (a given scale), --cell '{"max_rim_um": 6}' (finder settings).
# Env: DATA (../shared/data), CARGO_TARGET_DIR (target/pre), LIMIT (600 per set; wbc-seg's
# Dice always uses every image).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data}"
LIMIT="${LIMIT:-600}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/pre}"
# One thread, as the speed goal is stated for one core.
export RAYON_NUM_THREADS=1
exec cargo run --release -q -p allscan-preprocess --example bench_cells -- "$DATA" --limit "$LIMIT" "$@"
