#!/usr/bin/env bash
# Speed of a whole camera field through `predict`'s path (decode, red-cell scale, every white
# cell found and cut, the model, the field call) for a trained cell bundle.
#
# The field: 2592x1944 px, a 4x3 mosaic of 12 real Barcelona (pbc-normal) cell crops at their
# own 0.11 um/px, on a flat smear-coloured background: 12 white cells and their red cells.
# Prints the wall time of `allscan predict --cells` on one field and on all of them (2 threads
# unless RAYON_NUM_THREADS says otherwise).
#
# Usage: scripts/bench-camera-field.sh RUN   (needs ImageMagick's `montage`)
# Env: DATA (../shared/data), FILES (4 fields timed).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:?usage: scripts/bench-camera-field.sh RUN}"
DATA="${DATA:-../shared/data}"
FILES="${FILES:-4}"
command -v montage >/dev/null || { echo "needs ImageMagick's montage (apt-get install imagemagick)" >&2; exit 2; }
OUT=target/bench-camera
mkdir -p "$OUT/fields"
for k in $(seq 1 "$FILES"); do
  f="$OUT/fields/field-$k.png"
  [ -f "$f" ] && continue
  # 12 crops, a different stride per field; each tile 648x648 (crop + margin).
  mapfile -t crops < <(find "$DATA/pbc-normal" -name '*.jpg' | sort | awk -v k="$k" 'NR % 97 == k' | head -12)
  montage "${crops[@]}" -tile 4x3 -geometry 360x363+144+142 -background '#dcd2d4' "$OUT/tmp.png"
  convert "$OUT/tmp.png" -gravity center -extent 2592x1944 "$f"
  rm -f "$OUT/tmp.png"
done
identify "$OUT/fields/field-1.png" >&2 || true
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
cargo build --release -q -p allscan-cli
BIN=target/release/allscan
# One field (process start, model load and the field), then every field (the marginal cost).
for set in "$OUT/fields/field-1.png" "$OUT/fields"; do
  start=$(date +%s.%N)
  "$BIN" predict "$RUN" "$set" --cells --format csv > "$OUT/predict.csv"
  end=$(date +%s.%N)
  n=$(grep -c ',field,' "$OUT/predict.csv")
  cells=$(grep -c ',cell,' "$OUT/predict.csv")
  python3 -c "import sys; t=float(sys.argv[1])-float(sys.argv[2]); n=int(sys.argv[3]); print(f'{n} field(s), {sys.argv[4]} cells: {t:.2f} s in all, {t/n:.2f} s per field (process start and model load included)')" "$end" "$start" "$n" "$cells"
done
