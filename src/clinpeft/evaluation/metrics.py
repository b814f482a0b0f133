"""Evaluation metrics of the paper, as pure functions: numpy arrays in, floats out.

Definitions (Gema et al. 2023; summarised in the README, "Metrics"):

- Perplexity = exp(total NLL in nats / number of predicted tokens) over the whole split:
  token-weighted, not a mean of per-batch perplexities or per-batch mean losses.
- MOR, PMV (binary): scikit-learn `roc_auc_score` on P(class 1).
- LOS (multiclass): macro over classes, one-vs-one as van Aken et al. 2021 ("ovr" available).
- DIAG, PROC (multilabel): per-label AUROC on **sigmoid** probabilities, macro over the labels
  that have both classes in the evaluated split; the number of skipped labels is reported.
  Every label at once (`auroc_columns`: the Mann-Whitney form of the same area, equal to
  `roc_auc_score` per label up to float rounding, ~1e-16), not one scikit-learn call per label.
  (The published code applied a softmax across labels, which couples independent labels.)
- Macro average = unweighted mean of the task AUROCs.

Degenerate inputs (empty split, a single class, NaN scores, mismatched shapes) raise
`ClinpeftError` with a one-line message saying what is wrong and what to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from clinpeft.errors import ClinpeftError

TASK_TYPES = ("binary", "multiclass", "multilabel")
MULTI_CLASS_MODES = ("ovo", "ovr")


# --------------------------------------------------------------------------- perplexity


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total NLL in nats / number of predicted tokens) over the whole split.

    Token-weighted, not a mean of per-batch means: accumulate `total_nll` as the *sum* of
    per-token negative log-likelihoods (nats) over every batch, and `n_tokens` as the number of
    tokens that were predicted (labels != -100, i.e. excluding the first token of each document
    and padding). Returns `inf` when the mean NLL is too large for a float.
    """
    total_nll = float(total_nll)
    if not math.isfinite(total_nll):
        raise ClinpeftError(f"perplexity: total NLL is {total_nll}; the model diverged or a batch produced NaN loss")
    if total_nll < 0:
        raise ClinpeftError(
            f"perplexity: total NLL is negative ({total_nll}); pass the summed NLL in nats, not a log-probability"
        )
    if int(n_tokens) <= 0:
        raise ClinpeftError(
            f"perplexity: {n_tokens} predicted tokens; the evaluated split is empty or every label is masked"
        )
    try:
        return math.exp(total_nll / int(n_tokens))
    except OverflowError:
        return math.inf


# --------------------------------------------------------------------------- probabilities


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, in float64, stable for large logits (max subtracted)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function 1 / (1 + exp(-x)), in float64, stable for large |x|.

    Written as exp(-log(1 + exp(-x))) so very negative logits stay distinct (e.g. -40 and -50
    do not both round to 0), which matters for AUROC, a ranking metric.
    """
    x = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def probabilities(task_type: str, logits: np.ndarray) -> np.ndarray:
    """Sigmoid per label for multilabel tasks; softmax over classes otherwise."""
    return sigmoid(logits) if task_type == "multilabel" else softmax(logits)


# --------------------------------------------------------------------------- input checks


def _labels_1d(y_true, name: str) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ClinpeftError(f"{name}: y_true must be one class index per example, got shape {y.shape}")
    if y.size == 0:
        raise ClinpeftError(f"{name}: no examples; the evaluated split is empty")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y.astype(np.float64))) or np.any(y != np.round(y)):
            raise ClinpeftError(f"{name}: y_true must hold integer class indices, got {y.dtype} values")
        y = y.astype(np.int64)
    return y


def _scores(scores, name: str, ndim: int, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != ndim:
        raise ClinpeftError(f"{name}: scores must have {ndim} dimension(s), got shape {s.shape}")
    if s.shape[0] != n:
        raise ClinpeftError(f"{name}: {s.shape[0]} score rows for {n} labels; predictions and labels are misaligned")
    if not np.all(np.isfinite(s)):
        raise ClinpeftError(f"{name}: scores contain NaN or inf; the model diverged or the logits were not computed")
    return s


# --------------------------------------------------------------------------- AUROC


def auroc_binary(y_true, p_pos) -> float:
    """ROC AUC of P(class 1): scikit-learn `roc_auc_score(y_true, p_pos)` (MOR, PMV).

    `y_true` holds 0/1 labels; `p_pos` the predicted probability (or any monotone score) of
    class 1. Both classes must be present.
    """
    y = _labels_1d(y_true, "auroc_binary")
    p = _scores(p_pos, "auroc_binary", ndim=1, n=len(y))
    present = np.unique(y)
    if not set(present.tolist()) <= {0, 1}:
        raise ClinpeftError(f"auroc_binary: labels must be 0/1, got {present.tolist()}; map the positive class to 1")
    if len(present) < 2:
        raise ClinpeftError(
            f"auroc_binary: only class {int(present[0])} in y_true ({len(y)} examples); "
            "AUROC needs positive and negative examples, evaluate on a larger split"
        )
    return float(roc_auc_score(y, p))


def auroc_columns(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(L,) ROC AUC of each column of `scores` ((n, L)) for the 0/1 truth of the same column of `y` ((n, L));
    NaN for a column without both classes. AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos = sum
    of the positives' ranks among the column's scores, tied scores sharing their mean rank: the Mann-Whitney
    form of the trapezoidal area `roc_auc_score` computes (ties count 1/2), for every column in one ranking."""
    positive = np.asarray(y) == 1
    ranks = rankdata(np.asarray(scores, dtype=np.float64), axis=0)  # "average": ties share their mean rank
    n_pos = positive.sum(axis=0).astype(np.float64)
    n_neg = positive.shape[0] - n_pos
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=0)  # half-integers: exact in float64
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), np.nan)


def auroc_multiclass(y_true, probs, multi_class: str = "ovo") -> float:
    """Macro multiclass ROC AUC (LOS): one-vs-one by default, as van Aken et al. 2021.

    "ovo": unweighted mean over every pair of classes (a, b) of the AUROC separating a from b
    using P(a), averaged with the AUROC separating b from a using P(b) (Hand & Till 2001).
    "ovr": unweighted mean over classes of the AUROC of class c against all others using P(c).
    Computed with scikit-learn `roc_auc_score(y, probs, multi_class=..., average="macro")`.

    `probs` is (n, C) class probabilities (rows sum to 1); `y_true` holds indices in [0, C).
    Classes absent from `y_true` have no AUROC: they are dropped, the remaining probability
    columns are renormalised to sum to 1 per row, and the macro is over the present classes only.
    With exactly 2 present classes this reduces to the binary AUROC of the renormalised P(higher
    class), which ovo and ovr agree on. Fewer than 2 present classes raise `ClinpeftError`.
    """
    if multi_class not in MULTI_CLASS_MODES:
        raise ClinpeftError(f"auroc_multiclass: multi_class={multi_class!r}; use 'ovo' or 'ovr'")
    y = _labels_1d(y_true, "auroc_multiclass")
    p = _scores(probs, "auroc_multiclass", ndim=2, n=len(y))
    n_classes = p.shape[1]
    out_of_range = y[(y < 0) | (y >= n_classes)]
    if out_of_range.size:
        raise ClinpeftError(
            f"auroc_multiclass: class index {int(out_of_range[0])} outside the {n_classes} probability columns; "
            "check the label vocabulary"
        )
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ClinpeftError(
            "auroc_multiclass: probs must be probabilities (non-negative, rows sum to 1); pass softmax(logits)"
        )
    present = np.unique(y)
    if len(present) < 2:
        raise ClinpeftError(
            f"auroc_multiclass: only class {int(present[0])} in y_true ({len(y)} examples); "
            "AUROC needs at least 2 classes, evaluate on a larger split"
        )
    # Keep present classes, renormalise rows, relabel to 0..k-1 (identity when all are present).
    p = p[:, present]
    row_sums = p.sum(axis=1, keepdims=True)
    if np.any(row_sums <= 0):
        raise ClinpeftError("auroc_multiclass: some rows put zero probability on every class present in y_true")
    p = p / row_sums
    y = np.searchsorted(present, y)
    if len(present) == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(roc_auc_score(y, p, multi_class=multi_class, average="macro", labels=np.arange(len(present))))


@dataclass
class MultilabelAUROC:
    """Result of `auroc_multilabel`.

    auroc: macro AUROC = unweighted mean of `per_label` values.
    per_label: AUROC of each evaluated label (both classes present), by label name.
    support: number of positive examples of each evaluated label.
    n_labels_evaluated / n_labels_skipped: labels with / without both classes in the split.
    """

    auroc: float
    per_label: dict[str, float] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)
    n_labels_evaluated: int = 0
    n_labels_skipped: int = 0


def auroc_multilabel(y_true, probs, label_names: Sequence[str] | None = None) -> MultilabelAUROC:
    """Per-label ROC AUC and its macro over labels (DIAG, PROC).

    `y_true` is (n, L) multi-hot 0/1; `probs` is (n, L) independent per-label probabilities,
    i.e. **sigmoid**(logits), not a softmax across labels. For each label l with both a positive
    and a negative example in the split, AUROC_l = roc_auc_score(y_true[:, l], probs[:, l]) (computed for
    every label at once by `auroc_columns`); labels with only one class are skipped (AUROC undefined) and
    counted. The macro AUROC is the unweighted mean of AUROC_l over evaluated labels. At least one evaluable
    label is required.
    """
    y = np.asarray(y_true)
    if y.ndim != 2:
        raise ClinpeftError(f"auroc_multilabel: y_true must be (examples, labels) multi-hot, got shape {y.shape}")
    if y.shape[0] == 0:
        raise ClinpeftError("auroc_multilabel: no examples; the evaluated split is empty")
    if not np.all(np.isin(y, (0, 1))):
        raise ClinpeftError("auroc_multilabel: y_true must be multi-hot 0/1")
    y = y.astype(np.int64)
    p = _scores(probs, "auroc_multilabel", ndim=2, n=y.shape[0])
    if p.shape != y.shape:
        raise ClinpeftError(
            f"auroc_multilabel: probs shape {p.shape} differs from y_true shape {y.shape}; check the label vocabulary"
        )
    names = _label_names(label_names, y.shape[1], "auroc_multilabel")

    positives = y.sum(axis=0)  # positives per label
    evaluable = (positives > 0) & (positives < y.shape[0])
    values = auroc_columns(y, p)
    per_label = {names[j]: float(values[j]) for j in np.flatnonzero(evaluable)}
    support = {names[j]: int(positives[j]) for j in np.flatnonzero(evaluable)}
    if not per_label:
        raise ClinpeftError(
            f"auroc_multilabel: none of the {y.shape[1]} labels has both classes in {y.shape[0]} examples; "
            "evaluate on a larger split"
        )
    return MultilabelAUROC(
        auroc=float(np.mean(list(per_label.values()))),
        per_label=per_label,
        support=support,
        n_labels_evaluated=len(per_label),
        n_labels_skipped=int((~evaluable).sum()),
    )


def _label_names(label_names: Sequence[str] | None, n: int, who: str) -> list[str]:
    if label_names is None:
        return [str(j) for j in range(n)]
    names = [str(name) for name in label_names]
    if len(names) != n:
        raise ClinpeftError(f"{who}: {len(names)} label names for {n} score columns; check the task's label vocabulary")
    if len(set(names)) != n:
        raise ClinpeftError(f"{who}: label names are not unique; deduplicate the task's label vocabulary")
    return names


# --------------------------------------------------------------------------- per task


def task_metrics(task_type: str, y_true, logits, label_names: list[str], *, multi_class: str = "ovo") -> dict:
    """Test-split metrics of one task from raw logits, as a JSON-able dict.

    task_type in {"binary","multiclass","multilabel"}. Converts logits to probabilities
    (softmax for binary/multiclass, SIGMOID for multilabel — the published code's bug was
    softmax) and returns {"auroc": float, "n_examples": int, plus for multiclass
    "multi_class": "ovo", for multilabel "n_labels_evaluated", "n_labels_skipped",
    "per_label_auroc": {...}, "per_label_support": {...}}. For binary, the positive class is
    index 1. y_true: class indices (binary/multiclass) or multi-hot (multilabel).

    Binary logits are (n, 2) (a classification head with 2 outputs); a single logit per example
    ((n,) or (n, 1)) is also accepted and read as the logit of class 1 (sigmoid). `label_names`
    name the columns of multiclass/multilabel logits (unused for binary). A multiclass split
    missing some classes also gets "classes_absent" (names excluded from the macro).
    """
    if task_type not in TASK_TYPES:
        raise ClinpeftError(f"task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}; fix the task's task_type")
    logits = np.asarray(logits, dtype=np.float64)
    n_examples = int(np.asarray(y_true).shape[0]) if np.ndim(y_true) else 0

    if task_type == "binary":
        if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
            p_pos = sigmoid(logits.reshape(-1))
        elif logits.ndim == 2 and logits.shape[1] == 2:
            p_pos = softmax(logits)[:, 1]
        else:
            raise ClinpeftError(f"binary task: logits shape {logits.shape}; expected (n, 2) or (n,)")
        return {"auroc": auroc_binary(y_true, p_pos), "n_examples": n_examples}

    if logits.ndim != 2:
        raise ClinpeftError(f"{task_type} task: logits shape {logits.shape}; expected (examples, classes)")
    names = _label_names(label_names, logits.shape[1], f"{task_type} task")

    if task_type == "multiclass":
        y = _labels_1d(y_true, "multiclass task")
        auroc = auroc_multiclass(y, softmax(logits), multi_class=multi_class)
        present = set(y.tolist())
        absent = [name for c, name in enumerate(names) if c not in present]
        result = {"auroc": auroc, "n_examples": n_examples, "multi_class": multi_class}
        if absent:
            result["classes_absent"] = absent  # excluded from the macro, see auroc_multiclass
        return result

    ml = auroc_multilabel(y_true, sigmoid(logits), label_names=names)
    return {
        "auroc": ml.auroc,
        "n_examples": n_examples,
        "n_labels_evaluated": ml.n_labels_evaluated,
        "n_labels_skipped": ml.n_labels_skipped,
        "per_label_auroc": ml.per_label,
        "per_label_support": ml.support,
    }


def macro_average(values: Iterable[float]) -> float:
    """Unweighted mean of task AUROCs (the paper's "Macro Average" column)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ClinpeftError("macro_average: no task AUROCs to average")
    if not all(math.isfinite(v) for v in vals):
        raise ClinpeftError(f"macro_average: non-finite AUROC in {vals}; a task's evaluation failed")
    return float(sum(vals) / len(vals))
