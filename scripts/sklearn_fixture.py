#!/usr/bin/env python3
"""Reference values for the allscan eval metrics, computed with scikit-learn.

Writes crates/allscan/tests/fixtures/sklearn_metrics.json, read by
crates/allscan/tests/eval_metrics.rs. Run from anywhere:

    python3 scripts/sklearn_fixture.py

On first run it creates a virtual environment under target/venv-sklearn, installs
scikit-learn + numpy there and re-executes itself inside it.

Conventions (they match crates/allscan/src/eval/metrics.rs):
- a score p is called leukaemia when p >= threshold;
- reliability bins / ECE: calibration_curve(strategy="uniform", n_bins=10);
- "pr_auc" is sklearn's average_precision_score (step-wise, no interpolation);
- a metric that is undefined (zero denominator, one class only) is null,
  obtained with zero_division=np.nan and converted to null;
- multiclass prediction is the arg-max of the probabilities (first maximum wins).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "target", "venv-sklearn")
OUT = os.path.join(ROOT, "crates", "allscan", "tests", "fixtures", "sklearn_metrics.json")


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "scikit-learn", "numpy"])
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def nan_to_none(x):
    x = float(x)
    return None if x != x else x


def binary_case(name, y, p, threshold):
    import numpy as np
    from sklearn import metrics as m

    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    both = len(set(y.tolist())) == 2
    tn, fp, fn, tp = m.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    zd = np.nan
    sens = m.recall_score(y, pred, pos_label=1, zero_division=zd)
    spec = m.recall_score(y, pred, pos_label=0, zero_division=zd)
    return {
        "name": name,
        "y": y.tolist(),
        "p": p.tolist(),
        "threshold": threshold,
        "confusion": {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)},
        "accuracy": m.accuracy_score(y, pred),
        # sklearn's balanced_accuracy_score averages the recall of the classes present,
        # so with one class it is not (sens + spec) / 2; compare only when both exist.
        "balanced_accuracy": m.balanced_accuracy_score(y, pred) if both else None,
        "sensitivity": nan_to_none(sens),
        "specificity": nan_to_none(spec),
        "precision": nan_to_none(m.precision_score(y, pred, pos_label=1, zero_division=zd)),
        "npv": nan_to_none(m.precision_score(y, pred, pos_label=0, zero_division=zd)),
        "f1": nan_to_none(m.f1_score(y, pred, pos_label=1, zero_division=zd)),
        "roc_auc": m.roc_auc_score(y, p) if both else None,
        "pr_auc": m.average_precision_score(y, p) if y.sum() > 0 else None,
        "brier": m.brier_score_loss(y, p, pos_label=1),
        **calibration(y, p),
    }


def calibration(y, p):
    """Reliability bins from sklearn's calibration_curve (uniform, 10 bins) and the ECE built
    from them: sum over non-empty bins of (n_b / n) * |fraction positive - mean score|."""
    import numpy as np
    from sklearn.calibration import calibration_curve

    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform", pos_label=1)
    # the same bin assignment calibration_curve makes internally
    ids = np.searchsorted(np.linspace(0.0, 1.0, 11)[1:-1], p)
    counts = np.bincount(ids, minlength=10)
    nonempty = counts[counts > 0]
    ece = float(np.sum(nonempty / len(y) * np.abs(prob_true - prob_pred)))
    return {
        "ece": ece,
        "reliability": {
            "counts": counts.tolist(),
            "frac_leukemia": prob_true.tolist(),
            "mean_p": prob_pred.tolist(),
        },
    }


def multiclass_case(name, y, probs):
    import numpy as np
    from sklearn import metrics as m

    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=float)
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    labels = list(range(k))
    zd = np.nan
    p, r, f, _ = m.precision_recall_fscore_support(y, pred, labels=labels, zero_division=zd)
    return {
        "name": name,
        "y": y.tolist(),
        "probs": probs.tolist(),
        "accuracy": m.accuracy_score(y, pred),
        "precision": [nan_to_none(v) for v in p],
        "recall": [nan_to_none(v) for v in r],
        "f1": [nan_to_none(v) for v in f],
        # default labels = classes present in y or in the predictions
        "macro_f1": m.f1_score(y, pred, average="macro", zero_division=0),
        "confusion": m.confusion_matrix(y, pred, labels=labels).tolist(),
    }


def main():
    import numpy as np
    import sklearn

    rng = np.random.default_rng(20261129)
    binary = []

    # Random scores, overlapping classes.
    y = rng.integers(0, 2, 60)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 60), 0, 1).round(6)
    binary.append(binary_case("random", y, p, 0.5))

    # Heavy ties: scores on a 0.1 grid, threshold at a tied value.
    y = rng.integers(0, 2, 80)
    p = np.clip(np.round(0.3 * y + rng.uniform(0, 0.7, 80), 1), 0, 1)
    binary.append(binary_case("tied", y, p, 0.5))

    # Perfect separation.
    y = np.array([0] * 10 + [1] * 12)
    p = np.concatenate([rng.uniform(0.0, 0.4, 10), rng.uniform(0.6, 1.0, 12)]).round(6)
    binary.append(binary_case("perfect", y, p, 0.5))

    # Imbalanced: 8 leukaemia in 120.
    y = np.array([1] * 8 + [0] * 112)
    p = np.clip(0.3 * y + rng.beta(2, 5, 120), 0, 1).round(6)
    perm = rng.permutation(120)
    binary.append(binary_case("imbalanced", y[perm], p[perm], 0.3))

    # All scores identical: AUC 0.5, AP = prevalence.
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1])
    binary.append(binary_case("all_tied", y, np.full(10, 0.7), 0.5))

    # One class only (no healthy images): ROC-AUC undefined.
    y = np.ones(7, dtype=int)
    binary.append(binary_case("only_leukemia", y, rng.uniform(0, 1, 7).round(6), 0.5))

    multiclass = []
    y = rng.integers(0, 4, 50)
    logits = rng.normal(0, 1, (50, 4))
    logits[np.arange(50), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    multiclass.append(multiclass_case("random4", y, probs.round(6)))

    # Class 2 never predicted and never present; class 3 present but never predicted.
    y = np.array([0, 0, 1, 1, 1, 3, 3, 0, 1, 0])
    probs = np.array(
        [
            [0.7, 0.2, 0.05, 0.05], [0.4, 0.5, 0.05, 0.05], [0.1, 0.8, 0.05, 0.05],
            [0.2, 0.7, 0.05, 0.05], [0.6, 0.3, 0.05, 0.05], [0.5, 0.3, 0.05, 0.15],
            [0.2, 0.6, 0.05, 0.15], [0.9, 0.05, 0.0, 0.05], [0.3, 0.6, 0.05, 0.05],
            [0.8, 0.1, 0.05, 0.05],
        ]
    )
    multiclass.append(multiclass_case("missing_classes", y, probs))

    out = {
        "generator": "scripts/sklearn_fixture.py",
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "binary": binary,
        "multiclass": multiclass,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    ensure_venv()
    main()
