#!/usr/bin/env bash
# Same seed, same data, two builds: trains the `cpu` profile with each binary and compares
# metrics.csv (every column but the wall-clock `seconds`), the held-out figures of
# metadata.json and `predict --format csv` on DATA/Original. Exit 1 when they differ.
# For refactors that must not change behaviour (issue 14's check).
#
# Usage: scripts/compare-builds.sh OLD_BIN NEW_BIN DATA [TASK] [EPOCHS]
#   TASK subtype|binary (default subtype), EPOCHS as `train --epochs` (default 1,5).
# Env: OUT (target/compare-builds), SEED (3).
set -euo pipefail
OLD="${1:?usage: scripts/compare-builds.sh OLD_BIN NEW_BIN DATA [TASK] [EPOCHS]}"
NEW="${2:?usage}"
DATA="${3:?usage}"
TASK="${4:-subtype}"
EPOCHS="${5:-1,5}"
OUT="${OUT:-target/compare-builds}"
SEED="${SEED:-3}"
for side in old new; do
  bin="$OLD"; [ "$side" = new ] && bin="$NEW"
  rm -rf "${OUT:?}/$side"; mkdir -p "$OUT/$side"
  "$bin" train "$DATA" --out "$OUT/$side/run" --task "$TASK" --profile cpu --seed "$SEED" --epochs "$EPOCHS" \
    > "$OUT/$side/train.out" 2>&1
  "$bin" predict "$OUT/$side/run" "$DATA/Original" --format csv > "$OUT/$side/predict.csv" 2> "$OUT/$side/predict.err"
done
python3 - "$OUT" <<'PY'
import csv, json, sys
out = sys.argv[1]
def rows(side):
    r = list(csv.reader(open(f"{out}/{side}/run/metrics.csv")))
    i = r[0].index("seconds")
    return [x[:i] + x[i + 1:] for x in r]
same = True
for name, a, b in [
    ("metrics.csv (without seconds)", rows("old"), rows("new")),
    ("predict.csv", open(f"{out}/old/predict.csv").read(), open(f"{out}/new/predict.csv").read()),
]:
    print(f"{name}: {'identical' if a == b else 'DIFFERENT'}")
    same &= a == b
ta = json.load(open(f"{out}/old/run/metadata.json")).get("test_metrics", {})
tb = json.load(open(f"{out}/new/run/metadata.json")).get("test_metrics", {})
diff = {k: (ta[k], tb[k]) for k in ta.keys() & tb.keys() if ta[k] != tb[k]}
print(f"held-out figures: {'identical' if not diff else diff} (only old: {sorted(ta.keys() - tb.keys())}, only new: {sorted(tb.keys() - ta.keys())})")
same &= not diff
sys.exit(0 if same else 1)
PY
