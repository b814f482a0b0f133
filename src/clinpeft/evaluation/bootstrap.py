"""Bootstrap confidence intervals and paired bootstrap tests for the AUROCs of metrics.py.

Definitions (exact; the tests compare against a slow loop over `metrics.py`):

- A **resample** of a split of n test notes draws n note indices uniformly with replacement.
  Resample b of a task is row b of `resample_indices(n, n_resamples, seed, stream)`; the
  generator is `numpy.random.default_rng([seed, crc32(stream)])` with stream = the task name, so
  each task is resampled independently, and two models scored on the same notes are resampled
  identically (paired). When note ids are given, notes are first sorted by id (as strings), so
  the resamples do not depend on the row order of a predictions file.
- The **resampled AUROC** is the task's AUROC (metrics.py definition) on the resampled notes, a
  note drawn k times counting k times: binary = ROC AUC of P(class 1); multiclass = macro
  one-vs-one (or one-vs-rest) over the classes present in the resample, probabilities
  renormalised over them, as `metrics.auroc_multiclass`; multilabel = mean over the labels that
  have both classes **in that resample** of the per-label AUROC (labels without both classes are
  skipped, as `metrics.auroc_multilabel` skips them in a split). Ties count 1/2.
- A resample where the AUROC is undefined (binary: one class only; multiclass: fewer than two
  classes; multilabel: no label with both classes) is **dropped and counted** (`n_undefined`).
- **95% percentile interval** = [2.5th, 97.5th] percentiles (numpy's linear interpolation) of
  the defined resampled AUROCs.
- **Macro average over tasks**: each task is resampled independently (its own stream); resample
  b of the macro is the unweighted mean of the tasks' resample-b AUROCs (dropped when any task's
  is undefined); its interval is the percentile interval of those means.
- **Paired bootstrap p-value** of the difference d = AUROC_A - AUROC_B on the same notes: with
  d_b the difference on resample b (same indices for both models) over the B' resamples where
  both are defined, p = min(1, 2 * min(1 + #{d_b <= 0}, 1 + #{d_b >= 0}) / (B' + 1)): the share
  of resampled differences on the far side of 0 (ties at 0 count on both sides), with the +1
  correction, doubled. It is the smallest alpha at which the (1 - alpha) percentile interval of
  d excludes 0; identical models get p = 1, and 1000 resamples cannot give p below 2/1001.

Speed: a resample is a vector of counts (how often each note is drawn); the AUROC of every
resample is computed at once from sums of counts over score bins (one sparse product per batch
of labels), not by re-sorting each resample. 1000 resamples of 10,000 notes x 500 labels take
about 7-10 s of CPU; a 706-note binary task 0.03 s.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import scipy.sparse

from clinpeft.errors import ClinpeftError

DEFAULT_RESAMPLES = 1000
CONFIDENCE = 0.95
# Bound on the (score bins x resamples) float32 block of one sparse product, in entries (~80 MB).
_BLOCK_ENTRIES = 20_000_000


# --------------------------------------------------------------------------- resampling


def bootstrap_rng(seed: int, stream: str = "") -> np.random.Generator:
    """The generator of one task's resamples: default_rng([seed, crc32(stream as UTF-8)])."""
    return np.random.default_rng([int(seed), zlib.crc32(str(stream).encode("utf-8"))])


def resample_indices(n: int, n_resamples: int, seed: int, stream: str = "") -> np.ndarray:
    """(n_resamples, n) int32 note indices drawn uniformly with replacement; row b = resample b."""
    if n <= 0:
        raise ClinpeftError("bootstrap: no notes to resample; the evaluated split is empty")
    if n_resamples <= 0:
        raise ClinpeftError(f"bootstrap: n_resamples={n_resamples}; use a positive number, e.g. 1000")
    return bootstrap_rng(seed, stream).integers(0, n, size=(n_resamples, n), dtype=np.int32)


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """(n, n_resamples) float32: counts[j, b] = how many times note j is drawn in resample b."""
    counts = np.empty((n, indices.shape[0]), dtype=np.float32)
    for start in range(0, indices.shape[0], 100):  # blocks of 100 resamples bound the int64 temporaries
        block = indices[start:start + 100]
        flat = block.astype(np.int64) * len(block) + np.arange(len(block))[:, None]
        counts[:, start:start + len(block)] = np.bincount(flat.ravel(), minlength=n * len(block)).reshape(n, len(block))
    return counts


def id_order(ids) -> np.ndarray:
    """Permutation sorting notes by id (compared as strings, stable): the canonical note order."""
    return np.argsort(np.asarray([str(i) for i in ids]), kind="stable")


# --------------------------------------------------------------------------- AUROC of many resamples


@dataclass
class _Problem:
    """One binary AUROC: notes `include` (all if None), positives `positive`, ranked by `scores`."""

    scores: np.ndarray
    positive: np.ndarray
    include: np.ndarray | None = None


def _bins(problem: _Problem) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(note index, bin row) pairs of one problem and its number G of distinct positive scores.

    With u_0 < ... < u_{G-1} the distinct scores of the positives, a negative goes to row 2k when
    u_{k-1} < s < u_k (row 2G above every u) and to row 2k+1 when s == u_k; a positive with s == u_k
    goes to row 2G+1+k. None when the problem has no positive or no negative note at all.
    """
    notes = np.arange(len(problem.scores)) if problem.include is None else np.flatnonzero(problem.include)
    scores, positive = problem.scores[notes], problem.positive[notes]
    if positive.all() or not positive.any():
        return None
    u = np.unique(scores[positive])
    g = len(u)
    neg_notes, neg_scores = notes[~positive], scores[~positive]
    left = np.searchsorted(u, neg_scores, side="left")
    tie = (left < g) & (u[np.minimum(left, g - 1)] == neg_scores)
    pos_rows = 2 * g + 1 + np.searchsorted(u, scores[positive])
    rows = np.concatenate([2 * left + tie, pos_rows])
    return np.concatenate([neg_notes, notes[positive]]), rows, g


def _auroc_from_bins(sums: np.ndarray, g: int) -> np.ndarray:
    """(B,) AUROC from one problem's bin sums ((3G+1, B) resampled weights, see `_bins`).

    AUROC = sum_k W_k (N_below_k + N_tied_k / 2) / (W_pos * W_neg), W_k = positive weight at u_k,
    N_below_k / N_tied_k = negative weight with score below / equal to u_k. NaN if W_pos or W_neg is 0.
    """
    sums = sums.astype(np.float64)  # products of counts exceed float32's exact integers
    neg, pos = sums[: 2 * g + 1], sums[2 * g + 1:]
    cum = np.cumsum(neg, axis=0)
    numerator = (pos * (cum[0:2 * g:2] + 0.5 * neg[1:2 * g + 1:2])).sum(axis=0)
    denominator = pos.sum(axis=0) * cum[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def _auroc_problems(problems: list[_Problem], counts: np.ndarray) -> np.ndarray:
    """(B, len(problems)) AUROC of each binary problem on each resample (counts: (n, B)); NaN = undefined.

    Problems are batched into one sparse (bins x notes) @ (notes x resamples) product per block.
    """
    n, n_resamples = counts.shape
    out = np.full((n_resamples, len(problems)), np.nan)
    batch: list[tuple[int, np.ndarray, np.ndarray, int]] = []
    n_rows = 0

    def flush():
        nonlocal batch, n_rows
        if not batch:
            return
        offsets = np.cumsum([0] + [3 * g + 1 for _, _, _, g in batch])
        cols = np.concatenate([notes for _, notes, _, _ in batch])
        rows = np.concatenate([r + off for (_, _, r, _), off in zip(batch, offsets)])
        matrix = scipy.sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(offsets[-1], n))
        sums = matrix @ counts  # (bins, B): resampled weight in each bin
        for (k, _, _, g), off in zip(batch, offsets):
            out[:, k] = _auroc_from_bins(sums[off:off + 3 * g + 1], g)
        batch, n_rows = [], 0

    for k, problem in enumerate(problems):
        binned = _bins(problem)
        if binned is None:
            continue
        notes, rows, g = binned
        if n_rows and (n_rows + 3 * g + 1) * n_resamples > _BLOCK_ENTRIES:
            flush()
        batch.append((k, notes, rows, g))
        n_rows += 3 * g + 1
    flush()
    return out


def _multiclass_values(y: np.ndarray, probs: np.ndarray, counts: np.ndarray, multi_class: str) -> np.ndarray:
    """(B,) macro multiclass AUROC per resample, classes absent from a resample dropped and the
    probabilities renormalised over the present ones (as metrics.auroc_multiclass)."""
    n_classes = probs.shape[1]
    onehot = np.eye(n_classes, dtype=np.float32)[y]  # (n, C)
    present = (onehot.T @ counts) > 0  # (C, B): class drawn in resample b
    values = np.full(counts.shape[1], np.nan)
    patterns, which = np.unique(present.T, axis=0, return_inverse=True)
    for p_index, pattern in enumerate(patterns):
        classes = np.flatnonzero(pattern)
        if len(classes) < 2:
            continue  # undefined: fewer than two classes drawn
        cols = np.flatnonzero(which.ravel() == p_index)
        p = probs[:, classes] / probs[:, classes].sum(axis=1, keepdims=True)
        if len(classes) == 2:
            problems = [_Problem(p[:, 1], y == classes[1], np.isin(y, classes))]
        elif multi_class == "ovo":  # per pair (a, b): AUROC of a vs b by P(a) and of b vs a by P(b)
            problems = [
                _Problem(p[:, i], y == classes[i], np.isin(y, classes[[i, j]]))
                for a, b in combinations(range(len(classes)), 2) for i, j in ((a, b), (b, a))
            ]
        else:  # ovr: class c vs every other note, by P(c)
            problems = [_Problem(p[:, i], y == c) for i, c in enumerate(classes)]
        values[cols] = _auroc_problems(problems, counts[:, cols]).mean(axis=1)
    return values


@dataclass
class Bootstrap:
    """Resampled AUROCs of one model on one task (see the module docstring).

    values: (B,) resampled task AUROC, NaN where undefined. per_label: (B, L) resampled AUROC of
    each label (multilabel only), NaN where the label lacks a class in that resample.
    """

    values: np.ndarray
    n_resamples: int
    seed: int
    stream: str
    per_label: np.ndarray | None = None

    @property
    def n_undefined(self) -> int:
        """Resamples where the AUROC is undefined (dropped from intervals)."""
        return int(np.isnan(self.values).sum())

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """Percentile interval of the defined resampled AUROCs; (nan, nan) if none is defined."""
        return percentile_interval(self.values, confidence)

    def fields(self, confidence: float = CONFIDENCE) -> dict:
        """{"auroc_ci": [lo, hi], "bootstrap": {...}}: the keys written next to an "auroc" in metrics.json."""
        lo, hi = self.interval(confidence)
        return {
            "auroc_ci": [lo, hi],
            "bootstrap": {
                "method": "percentile, the notes of the split resampled with replacement",
                "confidence": confidence,
                "n_resamples": self.n_resamples,
                "seed": self.seed,
                "stream": self.stream,
                "n_undefined": self.n_undefined,
            },
        }


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """[(1-c)/2, (1+c)/2] percentiles (linear interpolation) of the non-NaN values; (nan, nan) if none."""
    defined = np.asarray(values, dtype=np.float64)
    defined = defined[~np.isnan(defined)]
    if defined.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(defined, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _as_task_arrays(task_type: str, y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[0] != y.shape[0]:
        raise ClinpeftError(f"bootstrap: {p.shape[0]} probability rows for {y.shape[0]} labels; "
                            "predictions and labels are misaligned")
    if not np.all(np.isfinite(p)):
        raise ClinpeftError("bootstrap: probabilities contain NaN or inf; the model diverged or predictions.csv "
                            "is damaged")
    if task_type == "binary":
        p = p[:, -1] if p.ndim == 2 else p  # (n, 2) softmax -> P(class 1)
        return y.astype(np.int64).reshape(-1), p.reshape(-1)
    if task_type == "multiclass":
        return y.astype(np.int64), p
    if task_type == "multilabel":
        if p.shape != y.shape:
            raise ClinpeftError(f"bootstrap: probabilities {p.shape} and multi-hot labels {y.shape} differ; "
                                "check the label vocabulary")
        return y.astype(bool), p
    raise ClinpeftError(f"task_type {task_type!r} is not binary, multiclass or multilabel")


def bootstrap_auroc(task_type: str, y_true, probs, *, ids=None, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    stream: str = "", multi_class: str = "ovo") -> Bootstrap:
    """Resampled AUROC of one model on one task, `n_resamples` percentile-bootstrap resamples.

    y_true: class indices (binary, multiclass) or (n, L) multi-hot (multilabel). probs: P(class 1)
    or (n, 2) for binary, (n, C) softmax probabilities for multiclass, (n, L) sigmoid
    probabilities for multilabel (AUROC is a ranking metric: any monotone score gives the same).
    ids: note ids; notes are sorted by id before resampling. stream: the task name (see module
    docstring). Pass the same (ids, seed, stream) for two models to resample them paired.
    """
    y, p = _as_task_arrays(task_type, y_true, probs)
    if ids is not None:
        order = id_order(ids)
        if len(order) != len(y):
            raise ClinpeftError(f"bootstrap: {len(order)} ids for {len(y)} notes")
        y, p = y[order], p[order]
    counts = resample_counts(resample_indices(len(y), n_resamples, seed, stream), len(y))
    per_label = None
    if task_type == "binary":
        values = _auroc_problems([_Problem(p, y == 1)], counts)[:, 0]
    elif task_type == "multiclass":
        values = _multiclass_values(y, p, counts, multi_class)
    else:
        per_label = _auroc_problems([_Problem(p[:, j], y[:, j]) for j in range(y.shape[1])], counts)
        defined = (~np.isnan(per_label)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 = NaN when no label has both classes
            values = np.where(np.isnan(per_label), 0.0, per_label).sum(axis=1) / defined
    return Bootstrap(values=values, n_resamples=int(n_resamples), seed=int(seed), stream=str(stream),
                     per_label=per_label)


def bootstrap_fields(task_type: str, y_true, probs, *, ids, stream: str, n_resamples: int, seed: int) -> dict:
    """{"auroc_ci": [lo, hi], "bootstrap": {...}} of one split, as metrics.json keeps them next to its "auroc".

    Notes are resampled in id order with one random stream per task (stream = the task name), so
    `clinpeft report` redraws the same resamples from predictions.csv.
    """
    return bootstrap_auroc(task_type, y_true, probs, ids=ids, n_resamples=n_resamples, seed=seed,
                           stream=stream).fields()


# --------------------------------------------------------------------------- macro and paired


def macro_values(boots: list[Bootstrap]) -> np.ndarray:
    """(B,) resampled macro average over tasks: mean of the tasks' resample-b AUROCs (NaN if any is NaN).
    Every task must have the same number of resamples."""
    if not boots:
        raise ClinpeftError("macro bootstrap: no tasks")
    sizes = {b.n_resamples for b in boots}
    if len(sizes) != 1:
        raise ClinpeftError(f"macro bootstrap: tasks have different numbers of resamples ({sorted(sizes)})")
    return np.mean(np.stack([b.values for b in boots]), axis=0)


@dataclass
class PairedTest:
    """Paired bootstrap comparison of model A with model B: diff = observed AUROC_A - AUROC_B,
    diff_ci = percentile interval of the resampled differences, p_value (module docstring),
    n_used = resamples where both AUROCs are defined."""

    diff: float
    diff_ci: tuple[float, float]
    p_value: float
    n_used: int


def paired_p_value(values_a: np.ndarray, values_b: np.ndarray) -> tuple[float, int]:
    """Two-sided p-value of AUROC_A - AUROC_B from paired resampled AUROCs (same resamples):
    p = min(1, 2 * min(1 + #{d_b <= 0}, 1 + #{d_b >= 0}) / (B' + 1)) over the B' resamples where
    both are defined. Returns (p, B'); p is NaN when B' = 0."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ClinpeftError(f"paired bootstrap: {a.shape} and {b.shape} resamples; both models need the same resamples")
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if d.size == 0:
        return float("nan"), 0
    tail = min(1 + int((d <= 0).sum()), 1 + int((d >= 0).sum()))
    return float(min(1.0, 2.0 * tail / (d.size + 1))), int(d.size)


def paired_test(boot_a: Bootstrap, boot_b: Bootstrap, auroc_a: float, auroc_b: float,
                confidence: float = CONFIDENCE) -> PairedTest:
    """PairedTest of two models' Bootstraps drawn with the same (ids, seed, stream, n_resamples)."""
    if (boot_a.seed, boot_a.stream, boot_a.n_resamples) != (boot_b.seed, boot_b.stream, boot_b.n_resamples):
        raise ClinpeftError("paired bootstrap: the two models were resampled differently (seed, task or n_resamples)")
    p, used = paired_p_value(boot_a.values, boot_b.values)
    return PairedTest(float(auroc_a) - float(auroc_b), percentile_interval(boot_a.values - boot_b.values, confidence),
                      p, used)
