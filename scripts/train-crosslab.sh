#!/usr/bin/env bash
# Trains the cross-lab per-cell model (`--profile cell`) from ../shared/data into the bundle
# folder RUN. Every white cell is cut at one physical scale (24 um at 64 px), grey and
# standardised, background removed; the sources are sampled class- then source-balanced.
#
# Usage: scripts/train-crosslab.sh RUN [SOURCES...]
#   SOURCES: any of aria pbc-normal wbc-seg cnmc-sample (default: all four). Leaving one out
#   gives the leave-one-source-out models of scripts/bench-crosslab.sh.
# Env: DATA (default ../shared/data), SEED (1), EXTRA (more `allscan train` options, e.g.
#      "--set train.stage2.epochs=10"). Resumes an interrupted run in RUN.
#
# Labels: Aria's field label goes to its dominant white cell (Benign = hematogone = not blast;
# Early/Pre/Pro = blast); every pbc-normal and wbc-seg cell is normal (not blast); C-NMC `all`
# = blast, `hem` = normal.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:?usage: scripts/train-crosslab.sh RUN [SOURCES...]}"
shift || true
DATA="$(cd "${DATA:-../shared/data}" && pwd)"
SEED="${SEED:-1}"
SOURCES=("$@")
[ ${#SOURCES[@]} -eq 0 ] && SOURCES=(aria pbc-normal wbc-seg cnmc-sample)

cargo build --release -p allscan-cli >&2
BIN=target/release/allscan
# The sources dataset: links to the shared sets plus the manifest that labels them, in a
# folder named after the manifest's hash (a run's data folder never changes under it).
entries=()
for s in "${SOURCES[@]}"; do
  [ -d "$DATA/$s" ] || { echo "no such source: $DATA/$s" >&2; exit 2; }
  # Each image's own scale (its red cells, else the stated fallback). A per-source scale
  # ("um_per_px": 0.52 for Aria, 0.111 for pbc-normal, the medians of their red-cell
  # estimates) is supported but scored lower together with 48 px inputs (docs/EXPERIMENTS.md).
  case "$s" in
    pbc-normal) entries+=("{\"name\":\"$s\",\"label\":\"healthy\"}") ;;
    wbc-seg) entries+=("{\"name\":\"$s\",\"label\":\"healthy\",\"extensions\":[\"bmp\"]}") ;;
    *) entries+=("{\"name\":\"$s\"}") ;;
  esac
done
manifest="$( IFS=,; echo "{\"sources\":[${entries[*]}]}" )"
SRC="target/crosslab/sources-$(IFS=-; echo "${SOURCES[*]}")-$(echo "$manifest" | sha256sum | cut -c1-8)"
mkdir -p "$SRC"
for s in "${SOURCES[@]}"; do
  ln -sfn "$DATA/$s" "$SRC/$s"
done
# A temporary name of this process's own: two runs started together share the folder.
echo "$manifest" > "$SRC/allscan-sources.json.tmp.$$"
mv "$SRC/allscan-sources.json.tmp.$$" "$SRC/allscan-sources.json"
echo "sources dataset: $SRC" >&2

resume=()
[ -f "$RUN/config.json" ] && resume=(--resume)
# shellcheck disable=SC2086
"$BIN" train "$SRC" --out "$RUN" --task binary --profile cell --seed "$SEED" "${resume[@]}" ${EXTRA:-}
