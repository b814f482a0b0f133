"""Clinical metrics (evaluation/clinical.py) against scikit-learn and slow reference loops."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from clinpeft.errors import ClinpeftError
from clinpeft.evaluation import clinical
from clinpeft.evaluation.bootstrap import bootstrap_auroc, id_order, resample_indices


def _binary(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1).round(2)  # ties on purpose
    return y, p


def _multiclass(n=150, c=4, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def _multilabel(n=100, labels=6, seed=2):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < 0.3).astype(int)
    y[:, -1] = 0  # a label with no positive: skipped
    p = np.clip(0.4 * y + 0.6 * rng.random((n, labels)), 0, 1)
    return y, p


def _slow_ece(conf, outcome, bins=10):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        mask = [(lo <= c < hi) or (b == bins - 1 and c == 1.0) for c in conf]
        mask = np.array(mask)
        if mask.any():
            total += mask.sum() / len(conf) * abs(outcome[mask].mean() - conf[mask].mean())
    return total


def test_auprc_matches_sklearn_binary_multiclass_multilabel():
    y, p = _binary()
    got = clinical.auprc("binary", y, p)
    assert got["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert got["prevalence"] == pytest.approx(y.mean())
    y, p = _multiclass()
    ref = np.mean([average_precision_score(y == c, p[:, c]) for c in range(4)])
    assert clinical.auprc("multiclass", y, p)["auprc"] == pytest.approx(ref, abs=1e-12)
    y, p = _multilabel()
    ref = np.mean([average_precision_score(y[:, j], p[:, j]) for j in range(5)])
    got = clinical.auprc("multilabel", y, p)
    assert got["auprc"] == pytest.approx(ref, abs=1e-12) and got["n_evaluated"] == 5


def test_brier_matches_sklearn_and_definition():
    y, p = _binary()
    assert clinical.brier("binary", y, p) == pytest.approx(brier_score_loss(y, p))
    y, p = _multiclass()
    ref = np.mean([sum((p[i, c] - (y[i] == c)) ** 2 for c in range(4)) for i in range(len(y))])
    assert clinical.brier("multiclass", y, p) == pytest.approx(ref)
    y, p = _multilabel()
    assert clinical.brier("multilabel", y, p) == pytest.approx(((p - y) ** 2).mean())


def test_ece_equal_width_bins_against_slow_loop():
    y, p = _binary()
    assert clinical.ece("binary", y, p) == pytest.approx(_slow_ece(p, y.astype(float)))
    y, p = _multiclass()
    top = p.argmax(1)
    assert clinical.ece("multiclass", y, p) == pytest.approx(_slow_ece(p.max(1), (top == y).astype(float)))
    perfect = np.array([0.0, 0.0, 1.0, 1.0])
    assert clinical.ece("binary", perfect.astype(int), perfect) == 0.0


def test_operating_point_threshold_from_validation_applied_to_test():
    yv, pv = _binary(200, seed=3)
    yt, pt = _binary(150, seed=4)
    op = clinical.operating_point(yv, pv, yt, pt, specificity=0.9)
    t = op["threshold"]
    assert ((pv < t) & (yv == 0)).sum() / (yv == 0).sum() >= 0.9
    lower = pv[pv < t].max()  # the next lower candidate fails the target: t is the lowest that reaches it
    assert ((pv < lower) & (yv == 0)).sum() / (yv == 0).sum() < 0.9
    called = pt >= t
    assert op["test"]["sensitivity"] == pytest.approx((called & (yt == 1)).sum() / (yt == 1).sum())
    assert op["test"]["ppv"] == pytest.approx((called & (yt == 1)).sum() / called.sum())
    with pytest.raises(ClinpeftError, match="specificity"):
        clinical.threshold_at_specificity(yv, pv, 1.5)


def test_auroc_variants_micro_macro_ovr():
    y, p = _multilabel()
    got = clinical.auroc_variants("multilabel", y, p)
    assert got["auroc_micro"] == pytest.approx(roc_auc_score(y.ravel(), p.ravel()))
    assert got["auroc_macro"] == pytest.approx(np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(5)]))
    y, p = _multiclass()
    got = clinical.auroc_variants("multiclass", y, p)
    assert got["auroc_ovr"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert got["auroc_ovo"] == pytest.approx(roc_auc_score(y, p, multi_class="ovo"))


def test_class_support_flags_absent_and_few():
    y = np.array([0] * 10 + [1] * 3)
    got = clinical.class_support("multiclass", y, ["a", "b", "c"], min_positives=5)
    assert got["absent"] == ["c"] and got["few"] == ["b"] and got["support"] == {"a": 10, "b": 3, "c": 0}


def test_bootstrap_intervals_use_the_auroc_resamples():
    y, p = _binary(80, seed=5)
    ids = [f"n{i:03d}" for i in range(len(y))][::-1]
    ci = clinical.bootstrap_clinical("binary", y, p, ids=ids, n_resamples=40, seed=7, stream="mor", threshold=0.5)
    order = id_order(ids)
    ys, ps = y[order], p[order]
    idx = resample_indices(len(y), 40, 7, "mor")
    aps = [average_precision_score(ys[r], ps[r]) for r in idx]
    briers = [brier_score_loss(ys[r], ps[r]) for r in idx]
    eces = [clinical.ece("binary", ys[r], ps[r]) for r in idx]
    assert ci["auprc_ci"] == pytest.approx(list(np.percentile(aps, [2.5, 97.5])))
    assert ci["brier_ci"] == pytest.approx(list(np.percentile(briers, [2.5, 97.5])))
    assert ci["ece_ci"] == pytest.approx(list(np.percentile(eces, [2.5, 97.5])))
    sens = [((ps[r] >= 0.5) & (ys[r] == 1)).sum() / (ys[r] == 1).sum() for r in idx]
    assert ci["sensitivity_ci"] == pytest.approx(list(np.percentile(sens, [2.5, 97.5])))
    # the same resamples as the AUROC interval: its per-resample AUROC equals sklearn on these indices
    boot = bootstrap_auroc("binary", y, p, ids=ids, n_resamples=40, seed=7, stream="mor")
    assert boot.values[3] == pytest.approx(roc_auc_score(ys[idx[3]], ps[idx[3]]))


def test_bootstrap_multilabel_auprc_skips_labels_without_positive_in_resample():
    y, p = _multilabel(60)
    ids = list(range(60))
    ci = clinical.bootstrap_clinical("multilabel", y, p, ids=ids, n_resamples=30, seed=0, stream="diag")
    order = id_order(ids)
    ys, ps = y[order], p[order]
    ref = []
    for r in resample_indices(60, 30, 0, "diag"):
        ref.append(np.mean([average_precision_score(ys[r, j], ps[r, j]) for j in range(6) if ys[r, j].any()]))
    assert ci["auprc_ci"] == pytest.approx(list(np.percentile(ref, [2.5, 97.5])))
