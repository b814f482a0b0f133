"""Clinical evaluation beyond AUROC, as pure functions of arrays: AUPRC, calibration, operating points.

Every metric is defined exactly once, in its function's docstring; tests compare each with
scikit-learn or a slow reference loop. Task types and probabilities are those of metrics.py:
binary = P(class 1) (or (n, 2) softmax), multiclass = (n, C) softmax, multilabel = (n, L) sigmoid.

- `auprc`: average precision (scikit-learn's step-wise AP, no interpolation), with prevalence.
- `brier`: Brier score.
- `ece`: expected calibration error, 10 equal-width bins.
- `operating_point`: sensitivity, specificity and PPV at a target specificity, the threshold
  chosen on validation and applied to test.
- `auroc_variants`: multilabel micro and macro AUROC; multiclass one-vs-rest macro beside the
  paper's one-vs-one.
- `class_support`: positives per class/label and the ones under `min_positives` (honest aggregates).

Intervals (`bootstrap_clinical`) use **the same resamples as the AUROC interval**:
`bootstrap.resample_indices(n, n_resamples, seed, stream)` on the notes sorted by id
(`bootstrap.id_order`), stream = the task name; a note drawn k times weighs k. No second scheme.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse
from sklearn.metrics import roc_auc_score

from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.bootstrap import id_order, percentile_interval, resample_counts, resample_indices
from clinpeft.evaluation.metrics import auroc_columns, auroc_multiclass

N_BINS = 10  # ECE bins: equal width over [0, 1]
DEFAULT_SPECIFICITY = 0.9
MIN_POSITIVES = 5  # a class/label with fewer positive examples in a split is flagged (aggregates are unstable)


# --------------------------------------------------------------------------- inputs


def _arrays(task_type: str, y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    """(y, p): binary -> (n,) 0/1 and (n,) P(class 1); multiclass -> (n,) indices and (n, C); multilabel -> (n, L)."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape[0] == 0:
        raise ClinpeftError("clinical metrics: no examples; the evaluated split is empty")
    if p.shape[0] != y.shape[0]:
        raise ClinpeftError(f"clinical metrics: {p.shape[0]} probability rows for {y.shape[0]} labels; "
                            "predictions and labels are misaligned")
    if not np.all(np.isfinite(p)):
        raise ClinpeftError("clinical metrics: probabilities contain NaN or inf; the model diverged")
    if task_type == "binary":
        return y.astype(np.int64).reshape(-1), (p[:, -1] if p.ndim == 2 else p).reshape(-1)
    if task_type == "multiclass":
        return y.astype(np.int64), p
    if task_type == "multilabel":
        if p.shape != y.shape:
            raise ClinpeftError(f"clinical metrics: probabilities {p.shape} and labels {y.shape} differ")
        return y.astype(np.int64), p
    raise ClinpeftError(f"task_type {task_type!r} is not binary, multiclass or multilabel")


def _indicator(task_type: str, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(n, K) 0/1 truth per scored column: binary one column (class 1), multiclass one-hot, multilabel as is."""
    if task_type == "binary":
        return y.reshape(-1, 1)
    if task_type == "multiclass":
        return np.eye(p.shape[1], dtype=np.int64)[y]
    return y


def _columns(task_type: str, p: np.ndarray) -> np.ndarray:
    return p.reshape(-1, 1) if task_type == "binary" else p


# --------------------------------------------------------------------------- AUPRC


def average_precision_weighted(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision of one binary problem under each column of `weights` ((n, B) note weights).

    AP = sum_k (R_k - R_{k-1}) P_k over the distinct scores t_k in decreasing order, where
    P_k / R_k are the precision / recall of "positive when score >= t_k" (scikit-learn's
    `average_precision_score`, step-wise, no interpolation; weights act as sample weights).
    NaN where the positives weigh 0. Computed for every column at once from sums over score groups.
    """
    positive = np.asarray(positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if not positive.any():
        return np.full(w.shape[1], np.nan)
    u = np.unique(s[positive])  # ascending distinct positive scores: only they end a recall step
    g = len(u)
    # positive at u_k -> row (g-1-k): rows in decreasing score; a negative -> row g + (number of u above it),
    # so negatives tied with u_k count as called at threshold u_k (as scikit-learn); below every u: row 2g
    rows = np.where(positive, g - 1 - np.searchsorted(u, s), g + g - np.searchsorted(u, s, side="right"))
    matrix = scipy.sparse.csr_matrix((np.ones(len(s)), (rows, np.arange(len(s)))), shape=(2 * g + 1, len(s)))
    sums = matrix @ w
    tp_k, fp_k = sums[:g], sums[g:2 * g]
    tp, fp = np.cumsum(tp_k, axis=0), np.cumsum(fp_k, axis=0)
    total = tp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = (tp_k * precision).sum(axis=0) / total
    return np.where(total > 0, ap, np.nan)


def auprc(task_type: str, y_true, probs) -> dict:
    """Area under the precision-recall curve as average precision (AP), with prevalence.

    binary: AP of P(class 1) for class 1 (scikit-learn `average_precision_score`); prevalence =
    share of class 1. multiclass: one-vs-rest AP of each class present in the split, by P(c),
    macro (unweighted mean) over them; prevalence = {class index: share}. multilabel: AP of each
    label with at least one positive, macro over them; prevalence = mean share of positives over
    those labels. A random score's AP equals the prevalence: read AUPRC beside it.
    Returns {"auprc", "prevalence", "n_evaluated"}.
    """
    y, p = _arrays(task_type, y_true, probs)
    truth, cols = _indicator(task_type, y, p), _columns(task_type, p)
    keep = np.flatnonzero(truth.sum(axis=0) > 0)
    if keep.size == 0:
        raise ClinpeftError("auprc: no positive example in the split; AUPRC is undefined, evaluate on a larger split")
    ones = np.ones((len(y), 1))
    values = [float(average_precision_weighted(truth[:, j] == 1, cols[:, j], ones)[0]) for j in keep]
    share = truth.mean(axis=0)
    if task_type == "binary":
        prevalence = float(share[0])
    elif task_type == "multiclass":
        prevalence = {int(j): float(share[j]) for j in keep}
    else:
        prevalence = float(share[keep].mean())
    return {"auprc": float(np.mean(values)), "prevalence": prevalence, "n_evaluated": int(keep.size)}


# --------------------------------------------------------------------------- calibration


def brier(task_type: str, y_true, probs) -> float:
    """Brier score: mean squared difference between predicted probability and outcome (lower is better).

    binary: mean over notes of (P(class 1) - y)^2 (scikit-learn `brier_score_loss`). multiclass:
    mean over notes of sum_c (P(c) - [y = c])^2 (Brier's original multiclass score, range 0-2).
    multilabel: mean over notes and labels of (P(l) - y_l)^2.
    """
    y, p = _arrays(task_type, y_true, probs)
    err = (_columns(task_type, p) - _indicator(task_type, y, p)) ** 2
    return float(err.sum(axis=1).mean() if task_type == "multiclass" else err.mean())


def _confidence_pairs(task_type: str, y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, outcome, note index) pairs that ECE and the reliability diagram bin."""
    n = len(y)
    if task_type == "binary":
        return p, y.astype(np.float64), np.arange(n)
    if task_type == "multiclass":
        top = p.argmax(axis=1)
        return p[np.arange(n), top], (top == y).astype(np.float64), np.arange(n)
    return p.ravel(), y.ravel().astype(np.float64), np.repeat(np.arange(n), p.shape[1])


def reliability(task_type: str, y_true, probs, n_bins: int = N_BINS) -> list[dict]:
    """The reliability diagram's bins: [{"lo", "hi", "count", "confidence", "observed"}] for non-empty bins
    (mean predicted probability and observed frequency per bin; binning as `ece`)."""
    y, p = _arrays(task_type, y_true, probs)
    conf, outcome, _ = _confidence_pairs(task_type, y, p)
    which = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = which == b
        if mask.any():
            bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(mask.sum()),
                         "confidence": float(conf[mask].mean()), "observed": float(outcome[mask].mean())})
    return bins


def _ece_weighted(conf: np.ndarray, outcome: np.ndarray, note: np.ndarray, weights: np.ndarray,
                  n_bins: int) -> np.ndarray:
    """(B,) ECE with pair p = (conf[p], outcome[p]) of note note[p] weighted by weights[note[p], b]. The pairs are
    summed per (bin, note) first, so a multilabel task costs (bins x notes) @ (notes x B), not pairs x B."""
    which = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    n = weights.shape[0]

    def per_bin(values):
        return scipy.sparse.csr_matrix((values, (which, note)), shape=(n_bins, n)) @ weights

    count = per_bin(np.ones(len(conf)))
    gap = np.abs(per_bin(conf) - per_bin(outcome))
    return gap.sum(axis=0) / count.sum(axis=0)


def ece(task_type: str, y_true, probs, n_bins: int = N_BINS) -> float:
    """Expected calibration error with `n_bins` (10) **equal-width bins** over [0, 1], weighted by bin size.

    ECE = sum_b (n_b / N) |mean outcome in b - mean confidence in b| over non-empty bins (the last
    bin includes 1.0). What is binned: binary = P(class 1) against y (calibration of the risk);
    multiclass = the top class's probability against "top class is correct"; multilabel = every
    (note, label) pair's P(label) against its 0/1 truth (N = notes x labels).
    """
    y, p = _arrays(task_type, y_true, probs)
    conf, outcome, note = _confidence_pairs(task_type, y, p)
    return float(_ece_weighted(conf, outcome, note, np.ones((len(y), 1)), n_bins)[0])


# --------------------------------------------------------------------------- operating point


def threshold_at_specificity(y_true, p_pos, specificity: float = DEFAULT_SPECIFICITY) -> float:
    """The lowest threshold t among the scores (and +inf) with specificity(t) >= `specificity`, where a note
    is called positive when P(class 1) >= t and specificity = true negatives / negatives (binary)."""
    if not 0.0 < specificity < 1.0:
        raise ClinpeftError(f"--specificity {specificity}: use a fraction strictly between 0 and 1, e.g. 0.9")
    y, p = _arrays("binary", y_true, p_pos)
    neg = np.sort(p[y == 0])
    if neg.size == 0:
        raise ClinpeftError("operating point: no negative example in the validation split; cannot fix a specificity")
    # specificity(t) = #{neg < t} / #neg: nondecreasing in t; candidates are the scores and +inf
    for t in np.unique(np.concatenate([p, [np.inf]])):
        if np.searchsorted(neg, t, side="left") / neg.size >= specificity:
            return float(t)
    return math.inf


def confusion_at(y_true, p_pos, threshold: float, weights: np.ndarray | None = None) -> dict:
    """Sensitivity (TP / positives), specificity (TN / negatives) and PPV (TP / called positive) when a note
    is called positive for P(class 1) >= threshold; NaN when a denominator is 0. `weights`: (n, B)
    resample weights -> arrays of B values."""
    y, p = _arrays("binary", y_true, p_pos)
    w = np.ones((len(y), 1)) if weights is None else np.asarray(weights, dtype=np.float64)
    called, pos = (p >= threshold)[:, None], (y == 1)[:, None]
    tp, fp = (w * (called & pos)).sum(0), (w * (called & ~pos)).sum(0)
    fn, tn = (w * (~called & pos)).sum(0), (w * (~called & ~pos)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp)}
    return {k: (float(v[0]) if weights is None else v) for k, v in out.items()}


def operating_point(y_val, p_val, y_test, p_test, specificity: float = DEFAULT_SPECIFICITY) -> dict:
    """Binary tasks: the threshold giving `specificity` on **validation** (`threshold_at_specificity`),
    applied unchanged to test: {"target_specificity", "threshold", "val": confusion_at(val), "test": ...}.
    Test specificity differs from the target by sampling: that is the honest number."""
    threshold = threshold_at_specificity(y_val, p_val, specificity)
    return {"target_specificity": float(specificity), "threshold": threshold,
            "val": confusion_at(y_val, p_val, threshold), "test": confusion_at(y_test, p_test, threshold)}


# --------------------------------------------------------------------------- AUROC variants and support


def auroc_variants(task_type: str, y_true, probs) -> dict:
    """multiclass: {"auroc_ovo", "auroc_ovr"} (metrics.auroc_multiclass; Table 3 shows ovo, the paper's);
    multilabel: {"auroc_macro": mean of per-label AUROCs over labels with both classes, "auroc_micro":
    one AUROC over every (note, label) pair}; binary: {}."""
    y, p = _arrays(task_type, y_true, probs)
    if task_type == "multiclass":
        return {"auroc_ovo": auroc_multiclass(y, p, "ovo"), "auroc_ovr": auroc_multiclass(y, p, "ovr")}
    if task_type == "multilabel":
        per_label = auroc_columns(y, p)  # NaN: a label without both classes
        if np.isnan(per_label).all():
            return {}
        return {"auroc_macro": float(np.nanmean(per_label)),
                "auroc_micro": float(roc_auc_score(y.ravel(), p.ravel()))}
    return {}


def class_support(task_type: str, y_true, labels: list[str], min_positives: int = MIN_POSITIVES) -> dict:
    """Positive examples per class (binary/multiclass) or label (multilabel) of a split, and the honest-aggregate
    flags: {"support": {name: n}, "absent": [names with 0], "few": [names with 0 < n < min_positives],
    "min_positives": m}. Multilabel: only labels with 1..m-1 positives are "few" (absent labels are
    many and already skipped and counted as n_labels_skipped)."""
    y = np.asarray(y_true)
    counts = y.sum(axis=0) if task_type == "multilabel" else np.bincount(y.astype(np.int64), minlength=len(labels))
    support = {str(name): int(c) for name, c in zip(labels, counts)}
    few = [n for n, c in support.items() if 0 < c < min_positives]
    absent = [] if task_type == "multilabel" else [n for n, c in support.items() if c == 0]
    return {"support": support if task_type != "multilabel" else {}, "absent": absent, "few": few,
            "min_positives": int(min_positives)}


# --------------------------------------------------------------------------- all of it, with intervals


def clinical_metrics(task_type: str, y_true, probs) -> dict:
    """{"auprc", "prevalence", "brier", "ece", **auroc_variants}: the point values of one split."""
    out = auprc(task_type, y_true, probs)
    out.pop("n_evaluated")
    out.update(brier=brier(task_type, y_true, probs), ece=ece(task_type, y_true, probs))
    out.update(auroc_variants(task_type, y_true, probs))
    return out


def bootstrap_clinical(task_type: str, y_true, probs, *, ids, n_resamples: int, seed: int, stream: str,
                       threshold: float | None = None) -> dict:
    """95% percentile intervals of AUPRC, Brier, ECE (and, binary with `threshold`, of test sensitivity,
    specificity and PPV) on **the AUROC's resamples**: notes sorted by id, `resample_indices(n, n_resamples,
    seed, stream)`, each resample as note weights. Returns {"<metric>_ci": [lo, hi]}.

    Resampled AUPRC of a multi-column task = mean over the columns with a positive in that resample."""
    y, p = _arrays(task_type, y_true, probs)
    order = id_order(ids)
    y, p = y[order], p[order]
    counts = resample_counts(resample_indices(len(y), n_resamples, seed, stream), len(y)).astype(np.float64)
    truth, cols = _indicator(task_type, y, p), _columns(task_type, p)
    present = (truth.T @ counts) > 0  # (K, B)
    ap = np.full((truth.shape[1], n_resamples), np.nan)
    for j in np.flatnonzero(present.any(axis=1)):
        ap[j] = average_precision_weighted(truth[:, j] == 1, cols[:, j], counts)
    ap[~present] = np.nan
    auprc_b = _nanmean_cols(ap)
    err = (cols - truth) ** 2
    per_note = err.sum(axis=1) if task_type == "multiclass" else err.mean(axis=1)
    brier_b = (counts.T @ per_note) / counts.sum(axis=0)
    conf, outcome, note = _confidence_pairs(task_type, y, p)
    ece_b = _ece_weighted(conf, outcome, note, counts, N_BINS)
    out = {"auprc_ci": list(percentile_interval(auprc_b)), "brier_ci": list(percentile_interval(brier_b)),
           "ece_ci": list(percentile_interval(ece_b))}
    if task_type == "binary" and threshold is not None:
        for key, values in confusion_at(y, p, threshold, counts).items():
            out[f"{key}_ci"] = list(percentile_interval(values))
    return out


def _nanmean_cols(values: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(values)
    n = defined.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(defined, values, 0.0).sum(axis=0) / n, np.nan)
