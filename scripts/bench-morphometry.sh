#!/usr/bin/env bash
# Morphometry baseline: what size, nucleus-to-cytoplasm ratio, nucleus shape and chromatin
# texture alone say about blasts, across labs. A reference beside the CNN (scripts/bench-crosslab.sh),
# as the colour-only and background-only shortcuts are: if a handful of measured numbers ranks
# another lab's blasts as well as the network does, the network has not learned more than size.
#
# 1. `examples/morphometry` (allscan-preprocess) measures every white cell of the shared sets at
#    its scale (red cells, else the pooled fallback) into target/morphometry/cells.csv.
# 2. Logistic regression / gradient boosting (scikit-learn, in a venv under target/) trained on
#    aria + pbc-normal + wbc-seg with the cell profile's labels (an Aria leukemia field's dominant
#    cell; the first 8 cells of any other field; every source and class weighted equally), then
#    scored zero-shot on the C-NMC sample (per cell) and on a held-out 20% of Aria's fields
#    (per field, the most suspicious cell, as `infer::field_call` calls a field).
#
# Usage: scripts/bench-morphometry.sh   Env: DATA (../shared/data), OUT (target/morphometry)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data}"
OUT="${OUT:-target/morphometry}"
VENV=target/venv-morphometry
mkdir -p "$OUT"
cargo build --release --locked -p allscan-preprocess --example morphometry >&2
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q numpy scikit-learn
fi
target/release/examples/morphometry "$DATA" "$OUT/cells.csv"
target/release/examples/morphometry "$DATA" "$OUT/rulers.csv" --rulers
"$VENV/bin/python" - "$OUT/cells.csv" "$OUT/rulers.csv" <<'PY'
import csv, sys
from collections import Counter
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["small"] == "0" and r["smudge"] == "0"]
GEO = ["cell_d_um", "nuc_d_um", "nc", "nuc_circ", "nuc_solidity", "lobes"]
TEX = ["nuc_z", "cyto_z", "nuc_std", "nuc_rough05", "nuc_rough10", "cyto_std"]
COL = ["cyto_blue", "nuc_blue", "cell_sat"]
rng = np.random.default_rng(1)
aria = sorted({r["path"] for r in rows if r["source"] == "aria"})
held = {p for p in aria if rng.random() < 0.2}

def trained(r):
    if r["source"] == "cnmc-sample":
        return False
    if r["source"] == "aria":
        if r["path"] in held:
            return False
        return r["cell"] == "0" if r["blast"] == "1" else int(r["cell"]) < 8
    return r["cell"] == "0"

train = [r for r in rows if trained(r)]
count = Counter((r["source"], r["blast"]) for r in train)
sources = {b: len({s for s, c in count if c == b}) for b in ("0", "1")}
weight = np.array([1.0 / (count[(r["source"], r["blast"])] * sources[r["blast"]]) for r in train])
X = lambda rs, f: np.array([[float(r[k]) for k in f] for r in rs])
y = np.array([int(r["blast"]) for r in train])

def per_image(scores, rs):
    best = {}
    for r, p in zip(rs, scores):
        b = best.setdefault(r["path"], [int(r["blast"]), 0.0])
        b[1] = max(b[1], p)
    labels, s = zip(*best.values())
    return roc_auc_score(labels, s), len(best)

cnmc = [r for r in rows if r["source"] == "cnmc-sample" and r["cell"] == "0"]
aria_held = [r for r in rows if r["source"] == "aria" and r["path"] in held]
print("| features | model | zero-shot C-NMC ROC-AUC (cells) | held-out Aria fields ROC-AUC |")
print("|---|---|---|---|")
for name, f in [("size and shape", GEO), ("+ grey texture", GEO + TEX), ("+ colour", GEO + TEX + COL)]:
    for mname in ("logistic", "boosting"):
        if mname == "logistic":
            sc = StandardScaler().fit(X(train, f))
            m = LogisticRegression(max_iter=2000).fit(sc.transform(X(train, f)), y, sample_weight=weight)
            score = lambda rs: m.predict_proba(sc.transform(X(rs, f)))[:, 1]
        else:
            m = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=1)
            m.fit(X(train, f), y, sample_weight=weight)
            score = lambda rs: m.predict_proba(X(rs, f))[:, 1]
        (a_c, n_c), (a_a, n_a) = per_image(score(cnmc), cnmc), per_image(score(aria_held), aria_held)
        print(f"| {name} | {mname} | {a_c:.3f} ({n_c}) | {a_a:.3f} ({n_a}) |")

print("\nDominant cells (cell 0), medians:")
print("| set | cells | um/px | whole cell um | nucleus um | N:C | flagged clump |")
print("|---|---|---|---|---|---|---|")
groups = [("aria Benign (hematogones)", lambda r: r["source"] == "aria" and r["blast"] == "0"),
          ("aria ALL", lambda r: r["source"] == "aria" and r["blast"] == "1"),
          ("pbc-normal lymphocyte", lambda r: r["source"] == "pbc-normal" and r["class"] == "lymphocyte"),
          ("pbc-normal other", lambda r: r["source"] == "pbc-normal" and r["class"] != "lymphocyte"),
          ("wbc-seg", lambda r: r["source"] == "wbc-seg"),
          ("C-NMC all (blast)", lambda r: r["source"] == "cnmc-sample" and r["blast"] == "1"),
          ("C-NMC hem (normal)", lambda r: r["source"] == "cnmc-sample" and r["blast"] == "0")]
every = list(csv.DictReader(open(sys.argv[1])))
for name, g in groups:
    d = [r for r in every if g(r) and r["cell"] == "0"]
    med = lambda k: np.median([float(r[k]) for r in d])
    print(f"| {name} | {len(d)} | {med('um_per_px'):.3f} | {med('cell_d_um'):.1f} | {med('nuc_d_um'):.1f} | {med('nc'):.2f} | {np.mean([r['clump'] == '1' for r in d]):.2f} |")

print("\nRed-cell rulers on fields where both measure >= 5 cells (packed inscribed disc / isolated diameter):")
rul = list(csv.DictReader(open(sys.argv[2])))
for src in ("aria", "pbc-normal", None):
    both = [r for r in rul if (src is None or r["source"] == src) and int(r["n_isolated"]) >= 5 and int(r["n_packed"]) >= 5]
    if both:
        ratio = [float(r["packed_px"]) / float(r["isolated_px"]) for r in both]
        q = np.percentile(ratio, [25, 50, 75])
        print(f"- {src or 'all'}: {len(both)} fields, median {q[1]:.3f} (IQR {q[0]:.3f}-{q[2]:.3f})")
PY
