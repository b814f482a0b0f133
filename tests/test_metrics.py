"""Metrics against scikit-learn on random data, plus the properties the paper's code got wrong."""

import math

import numpy as np
import pytest
from scipy.special import expit
from scipy.special import softmax as scipy_softmax
from sklearn.metrics import roc_auc_score

from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.metrics import (
    MultilabelAUROC,
    auroc_binary,
    auroc_columns,
    auroc_multiclass,
    auroc_multilabel,
    macro_average,
    perplexity,
    probabilities,
    sigmoid,
    softmax,
    task_metrics,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ------------------------------------------------------------------ perplexity


def test_perplexity_is_exp_of_mean_token_nll():
    assert perplexity(2.0 * 50, 50) == pytest.approx(math.exp(2.0))


def test_perplexity_is_token_weighted_not_mean_of_batch_perplexities():
    # Batch A: 10 tokens at mean NLL 1.0 nats; batch B: 990 tokens at mean NLL 3.0 nats.
    nll = [1.0 * 10, 3.0 * 990]
    tokens = [10, 990]
    ours = perplexity(sum(nll), sum(tokens))
    assert ours == pytest.approx(math.exp(sum(nll) / sum(tokens)))
    mean_of_batch_ppl = np.mean([math.exp(n / t) for n, t in zip(nll, tokens)])
    mean_of_batch_loss = math.exp(np.mean([n / t for n, t in zip(nll, tokens)]))
    assert abs(ours - mean_of_batch_ppl) > 1.0
    assert abs(ours - mean_of_batch_loss) > 1.0


def test_perplexity_overflow_is_inf():
    assert perplexity(1e6, 1) == math.inf


@pytest.mark.parametrize("nll, n", [(1.0, 0), (float("nan"), 5), (-1.0, 5)])
def test_perplexity_degenerate_raises(nll, n):
    with pytest.raises(ClinpeftError, match="perplexity"):
        perplexity(nll, n)


# ------------------------------------------------------------------ probabilities


def test_softmax_matches_scipy_and_is_stable(rng):
    logits = rng.normal(size=(7, 5)) * 10
    np.testing.assert_allclose(softmax(logits), scipy_softmax(logits, axis=-1), rtol=1e-12)
    big = np.array([[1000.0, 1001.0], [-1000.0, -1001.0]])
    out = softmax(big)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_sigmoid_matches_scipy_and_keeps_ranking_at_extremes(rng):
    x = rng.normal(size=(6, 4)) * 20
    np.testing.assert_allclose(sigmoid(x), expit(x), rtol=1e-12)
    out = sigmoid(np.array([-50.0, -40.0, 40.0, 800.0, -800.0]))
    assert np.all(np.isfinite(out))
    assert out[0] < out[1]  # distinct, not both rounded to 0
    assert out[3] == 1.0 and out[4] == 0.0


def test_probabilities_sigmoid_per_label_for_multilabel_softmax_otherwise(rng):
    logits = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(probabilities("multilabel", logits), sigmoid(logits))
    for task_type in ("binary", "multiclass"):
        np.testing.assert_array_equal(probabilities(task_type, logits), softmax(logits))


# ------------------------------------------------------------------ binary


def test_auroc_binary_matches_sklearn(rng):
    y = rng.integers(0, 2, size=200)
    p = rng.random(200) * 0.5 + y * 0.3
    assert auroc_binary(y, p) == pytest.approx(roc_auc_score(y, p))


def test_auroc_binary_single_class_raises():
    with pytest.raises(ClinpeftError, match="only class 1"):
        auroc_binary([1, 1, 1], [0.2, 0.5, 0.9])


def test_auroc_binary_rejects_nan_and_misaligned():
    with pytest.raises(ClinpeftError, match="NaN"):
        auroc_binary([0, 1], [0.1, float("nan")])
    with pytest.raises(ClinpeftError, match="misaligned"):
        auroc_binary([0, 1, 1], [0.1, 0.2])


# ------------------------------------------------------------------ multiclass


@pytest.mark.parametrize("mode", ["ovo", "ovr"])
def test_auroc_multiclass_matches_sklearn(rng, mode):
    y = rng.integers(0, 4, size=300)
    probs = scipy_softmax(rng.normal(size=(300, 4)) + np.eye(4)[y], axis=1)
    expected = roc_auc_score(y, probs, multi_class=mode, average="macro")
    assert auroc_multiclass(y, probs, multi_class=mode) == pytest.approx(expected)


def test_auroc_multiclass_default_is_ovo(rng):
    y = rng.integers(0, 4, size=300)
    probs = scipy_softmax(rng.normal(size=(300, 4)) * 2, axis=1)
    assert auroc_multiclass(y, probs) == pytest.approx(roc_auc_score(y, probs, multi_class="ovo"))
    assert auroc_multiclass(y, probs) != pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))


def test_auroc_multiclass_absent_class_restricts_and_renormalises(rng):
    y = rng.choice([0, 1, 3], size=200)  # class 2 never occurs
    probs = scipy_softmax(rng.normal(size=(200, 4)) + np.eye(4)[y], axis=1)
    kept = probs[:, [0, 1, 3]]
    kept = kept / kept.sum(axis=1, keepdims=True)
    y_kept = np.searchsorted([0, 1, 3], y)
    for mode in ("ovo", "ovr"):
        expected = roc_auc_score(y_kept, kept, multi_class=mode, labels=[0, 1, 2])
        assert auroc_multiclass(y, probs, multi_class=mode) == pytest.approx(expected)


def test_auroc_multiclass_two_present_classes_is_binary(rng):
    y = rng.choice([0, 2], size=100)
    probs = scipy_softmax(rng.normal(size=(100, 3)), axis=1)
    p2 = probs[:, 2] / (probs[:, 0] + probs[:, 2])
    assert auroc_multiclass(y, probs) == pytest.approx(roc_auc_score(y == 2, p2))


def test_auroc_multiclass_degenerate_raises(rng):
    probs = scipy_softmax(rng.normal(size=(5, 3)), axis=1)
    with pytest.raises(ClinpeftError, match="at least 2 classes"):
        auroc_multiclass([1, 1, 1, 1, 1], probs)
    with pytest.raises(ClinpeftError, match="outside the 3 probability columns"):
        auroc_multiclass([0, 1, 2, 3, 0], probs)
    with pytest.raises(ClinpeftError, match="softmax"):
        auroc_multiclass([0, 1, 2, 0, 1], probs * 3)  # logits-like scores, not probabilities
    with pytest.raises(ClinpeftError, match="'ovo' or 'ovr'"):
        auroc_multiclass([0, 1, 2, 0, 1], probs, multi_class="micro")


# ------------------------------------------------------------------ multilabel


def _sklearn_multilabel(y, probs):
    cols = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    return np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in cols]), cols


def test_auroc_multilabel_matches_mean_of_per_column_sklearn(rng):
    y = (rng.random((150, 6)) < 0.3).astype(int)
    probs = expit(rng.normal(size=(150, 6)) + 1.5 * y)
    expected, cols = _sklearn_multilabel(y, probs)
    result = auroc_multilabel(y, probs, label_names=list("abcdef"))
    assert isinstance(result, MultilabelAUROC)
    assert result.auroc == pytest.approx(expected)
    assert result.n_labels_evaluated == 6 and result.n_labels_skipped == 0
    assert result.per_label["c"] == pytest.approx(roc_auc_score(y[:, 2], probs[:, 2]))
    assert result.support == {name: int(y[:, j].sum()) for j, name in enumerate("abcdef")}


def test_auroc_columns_equals_sklearn_per_column_with_ties_and_one_class_columns(rng):
    y = (rng.random((97, 7)) < 0.3).astype(int)
    scores = np.round(rng.normal(size=(97, 7)) + y, 1)  # rounded: many ties, within and across classes
    y[:, 2], y[:, 5] = 0, 1  # never / always positive: undefined
    got = auroc_columns(y, scores)
    assert np.isnan(got[[2, 5]]).all()
    for j in (0, 1, 3, 4, 6):
        assert got[j] == pytest.approx(roc_auc_score(y[:, j], scores[:, j]), abs=1e-12), j


def test_auroc_multilabel_skips_and_counts_one_class_labels(rng):
    y = (rng.random((80, 5)) < 0.4).astype(int)
    y[:, 1] = 0  # never positive
    y[:, 4] = 1  # always positive
    probs = rng.random((80, 5))
    expected, cols = _sklearn_multilabel(y, probs)
    assert cols == [0, 2, 3]
    result = auroc_multilabel(y, probs)
    assert result.auroc == pytest.approx(expected)
    assert result.n_labels_evaluated == 3 and result.n_labels_skipped == 2
    assert set(result.per_label) == {"0", "2", "3"}
    assert set(result.support) == {"0", "2", "3"}


def test_auroc_multilabel_no_evaluable_label_raises():
    with pytest.raises(ClinpeftError, match="none of the 2 labels"):
        auroc_multilabel(np.ones((4, 2), dtype=int), np.full((4, 2), 0.5))


def test_auroc_multilabel_shape_and_names_checked(rng):
    y = np.array([[0, 1], [1, 0]])
    with pytest.raises(ClinpeftError, match="differs from y_true shape"):
        auroc_multilabel(y, rng.random((2, 3)))
    with pytest.raises(ClinpeftError, match="label names"):
        auroc_multilabel(y, rng.random((2, 2)), label_names=["only-one"])
    with pytest.raises(ClinpeftError, match="multi-hot"):
        auroc_multilabel(np.array([[0, 2], [1, 0]]), rng.random((2, 2)))


# ------------------------------------------------------------------ task_metrics


def test_task_metrics_binary_uses_softmax_class_1(rng):
    y = rng.integers(0, 2, size=100)
    logits = rng.normal(size=(100, 2)) + np.stack([np.zeros(100), y], axis=1)
    out = task_metrics("binary", y, logits, ["0", "1"])
    assert out == {"auroc": pytest.approx(roc_auc_score(y, scipy_softmax(logits, axis=1)[:, 1])), "n_examples": 100}


def test_task_metrics_binary_single_logit(rng):
    y = rng.integers(0, 2, size=50)
    logits = rng.normal(size=(50, 1)) + y[:, None]
    assert task_metrics("binary", y, logits, [])["auroc"] == pytest.approx(roc_auc_score(y, logits[:, 0]))


def test_task_metrics_multiclass(rng):
    y = rng.integers(0, 4, size=120)
    logits = rng.normal(size=(120, 4)) + np.eye(4)[y]
    out = task_metrics("multiclass", y, logits, ["<=3", "3-7", "7-14", ">14"])
    assert out["auroc"] == pytest.approx(roc_auc_score(y, scipy_softmax(logits, axis=1), multi_class="ovo"))
    assert out["multi_class"] == "ovo" and out["n_examples"] == 120
    assert "classes_absent" not in out


def test_task_metrics_multiclass_reports_absent_classes(rng):
    y = rng.choice([0, 1, 3], size=60)
    out = task_metrics("multiclass", y, rng.normal(size=(60, 4)), ["a", "b", "c", "d"])
    assert out["classes_absent"] == ["c"]


def test_task_metrics_multilabel_uses_sigmoid_not_softmax():
    # Label 0 is positive for examples 0 and 1. Example 1's other label has a huge logit, so a
    # softmax across labels squashes its P(label 0) below example 2's (a negative): softmax
    # AUROC = 0.5, sigmoid AUROC (independent labels) = 1.0.
    logits = np.array([[3.0, -5.0], [2.0, 9.0], [1.0, 0.0], [-2.0, 1.0]])
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    sig = np.mean([roc_auc_score(y[:, j], expit(logits)[:, j]) for j in range(2)])
    soft = np.mean([roc_auc_score(y[:, j], scipy_softmax(logits, axis=1)[:, j]) for j in range(2)])
    assert sig != pytest.approx(soft)
    out = task_metrics("multilabel", y, logits, ["I10", "E11"])
    assert out["auroc"] == pytest.approx(sig)
    assert out["auroc"] != pytest.approx(soft)


def test_task_metrics_multilabel_keys_and_json(rng):
    import json

    y = (rng.random((40, 4)) < 0.3).astype(int)
    y[:, 3] = 0
    out = task_metrics("multilabel", y, rng.normal(size=(40, 4)), ["401", "250", "428", "V45"])
    assert out["n_labels_evaluated"] == 3 and out["n_labels_skipped"] == 1
    assert set(out["per_label_auroc"]) == {"401", "250", "428"}
    assert out["per_label_support"]["401"] == int(y[:, 0].sum())
    assert json.loads(json.dumps(out)) == out


def test_task_metrics_bad_inputs_raise(rng):
    with pytest.raises(ClinpeftError, match="task_type 'regression'"):
        task_metrics("regression", [0, 1], rng.normal(size=(2, 2)), ["0", "1"])
    with pytest.raises(ClinpeftError, match="2 label names for 3 score columns"):
        task_metrics("multiclass", [0, 1, 2], rng.normal(size=(3, 3)), ["a", "b"])
    with pytest.raises(ClinpeftError, match="expected \\(n, 2\\)"):
        task_metrics("binary", [0, 1], rng.normal(size=(2, 3)), ["0", "1"])
    with pytest.raises(ClinpeftError, match="empty"):
        task_metrics("binary", np.array([], dtype=int), np.zeros((0, 2)), ["0", "1"])


# ------------------------------------------------------------------ macro average


def test_macro_average_is_unweighted_mean():
    assert macro_average([0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert macro_average(iter([0.6])) == 0.6


def test_macro_average_degenerate_raises():
    with pytest.raises(ClinpeftError, match="no task AUROCs"):
        macro_average([])
    with pytest.raises(ClinpeftError, match="non-finite"):
        macro_average([0.5, float("nan")])
