#!/usr/bin/env bash
# Real-data quality benchmark of `allscan train --profile cpu` (no pretrained weights) on the
# Aria development set: a fixed leakage-safe split (seed 1: 20% test kept untouched, 10%
# validation for early stopping and the threshold, 70% training), one subtype run, then the
# held-out test figures the run reports (subtype accuracy; binary accuracy, sensitivity and
# specificity of p(leukemia) = sum of the leukemia subtypes at the validation-chosen threshold)
# and the wall time, against the reference measured on this machine (PyTorch ResNet18, 112 px,
# 8 epochs, 7 min on 2 cores: 98.4% subtype, 98.6% binary, 93.3% specificity).
#
# Input: $1 = dataset (default ../shared/data/aria), env OUT (default target/bench-train-aria),
#        SEED (1). The test part is image-level (Aria has no patient ids): patients may straddle
#        parts, so these figures are optimistic for unseen patients and other labs.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/aria}"
OUT="${OUT:-target/bench-train-aria}"
SEED="${SEED:-1}"

cargo build --release -p allscan-cli >&2
BIN=target/release/allscan
rm -rf "$OUT" && mkdir -p "$OUT"
"$BIN" data split "$DATA" --out "$OUT/split.json" --test 0.2 --val 0.1 --seed "$SEED"
start=$(date +%s)
"$BIN" train "$DATA" --out "$OUT/run" --task subtype --profile cpu --split "$OUT/split.json" --seed "$SEED"
end=$(date +%s)
python3 - "$OUT/run/metadata.json" "$((end - start))" "$(nproc)" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
t = m["test_metrics"]
wall = int(sys.argv[2])
print(f"\nAria held-out test part ({int(t['test_images'])} images, never used for selection), {sys.argv[3]} cores:")
print(f"{'figure':<22} {'allscan cpu':>12} {'goal':>8} {'ResNet18 ref':>13}")
rows = [("subtype accuracy", t.get("test_subtype_accuracy"), 0.995, 0.984),
        ("binary accuracy", t.get("test_binary_accuracy"), 0.995, 0.986),
        ("sensitivity", t.get("test_sensitivity"), None, None),
        ("specificity", t.get("test_specificity"), 0.98, 0.933)]
for name, v, goal, ref in rows:
    f = lambda x: "-" if x is None else f"{100 * x:.1f}%"
    print(f"{name:<22} {f(v):>12} {f(goal):>8} {f(ref):>13}")
print(f"{'training wall time':<22} {wall / 60:>10.1f} m {'30 m':>8} {'7 m':>13}")
print(f"threshold {m['threshold']:.4f} ({m['threshold_rule']})")
PY
