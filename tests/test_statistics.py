"""Bootstrap intervals and paired tests (evaluation/bootstrap.py) against a slow loop over evaluation/metrics.py."""

import math

import numpy as np
import pytest

from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.bootstrap import (
    bootstrap_auroc,
    bootstrap_fields,
    macro_values,
    paired_p_value,
    paired_test,
    percentile_interval,
    resample_indices,
)
from clinpeft.evaluation.metrics import auroc_binary, auroc_multiclass, auroc_multilabel, softmax


def reference(metric, n, n_resamples, seed, stream):
    """The definition, slowly: the metric on each resample's notes, NaN where metrics.py refuses."""
    values = []
    for rows in resample_indices(n, n_resamples, seed, stream):
        try:
            values.append(metric(rows))
        except ClinpeftError:
            values.append(np.nan)
    return np.array(values)


def paired_auroc_test(y, scores_a, scores_b, n_resamples, seed):
    """Paired bootstrap test of two binary models scored on the same notes (same resamples), as report does it."""
    boot_a, boot_b = (bootstrap_auroc("binary", y, p, n_resamples=n_resamples, seed=seed) for p in (scores_a, scores_b))
    return paired_test(boot_a, boot_b, auroc_binary(y, scores_a), auroc_binary(y, scores_b))


def binary_data(n, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    return y, rng.normal(size=n) + signal * y


def test_binary_equals_reference_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    p = np.round(rng.random(40) * 0.5 + 0.3 * y, 1)  # one decimal: many ties, which count 1/2
    boot = bootstrap_auroc("binary", y, p, n_resamples=60, seed=3, stream="mor")
    ref = reference(lambda r: auroc_binary(y[r], p[r]), 40, 60, 3, "mor")
    np.testing.assert_allclose(boot.values, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("multi_class", ["ovo", "ovr"])
def test_multiclass_equals_reference_including_absent_classes(multi_class):
    rng = np.random.default_rng(2)
    y = np.array([0] * 12 + [1] * 10 + [2] * 6 + [3] * 2)  # class 3 is often absent from a resample
    probs = softmax(rng.normal(size=(30, 4)) + np.eye(4)[y])
    boot = bootstrap_auroc("multiclass", y, probs, n_resamples=80, seed=0, stream="los", multi_class=multi_class)
    ref = reference(lambda r: auroc_multiclass(y[r], probs[r], multi_class=multi_class), 30, 80, 0, "los")
    np.testing.assert_allclose(boot.values, ref, rtol=0, atol=1e-12)


def test_multilabel_equals_reference_and_skips_labels_per_resample():
    rng = np.random.default_rng(3)
    n = 50
    y = (rng.random((n, 5)) < [0.3, 0.1, 0.5, 0.0, 0.0]).astype(int)
    y[:, 3], y[7, 4] = 0, 1  # label 3: never positive (always skipped); label 4: one positive note
    probs = np.round(rng.random((n, 5)), 2)
    boot = bootstrap_auroc("multilabel", y, probs, n_resamples=60, seed=5, stream="diag")
    ref = reference(lambda r: auroc_multilabel(y[r], probs[r]).auroc, n, 60, 5, "diag")
    np.testing.assert_allclose(boot.values, ref, rtol=0, atol=1e-12)
    # label 4 is skipped exactly in the resamples that did not draw note 7; label 3 in all of them
    drawn = np.array([7 in rows for rows in resample_indices(n, 60, 5, "diag")])
    assert np.array_equal(np.isnan(boot.per_label[:, 4]), ~drawn)
    assert np.isnan(boot.per_label[:, 3]).all()
    assert 0 < drawn.sum() < 60


def test_undefined_resamples_are_dropped_and_counted():
    y = np.array([1, 0, 0, 0, 0, 0])  # one positive: resamples without note 0 have no AUROC
    p = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    boot = bootstrap_auroc("binary", y, p, n_resamples=200, seed=0)
    missing = sum(0 not in rows for rows in resample_indices(6, 200, 0, ""))
    assert boot.n_undefined == missing > 0
    assert boot.interval() == (1.0, 1.0)  # every defined resample ranks the positive first
    assert boot.fields()["bootstrap"]["n_undefined"] == missing


def test_interval_contains_estimate_and_shrinks_with_n():
    widths = []
    for n in (200, 3200):
        y, score = binary_data(n)
        lo, hi = bootstrap_auroc("binary", y, score, n_resamples=500, seed=0).interval()
        assert lo < auroc_binary(y, score) < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # ~1/sqrt(n): 16x the notes, about a quarter of the width


def test_seeded_reproducible_and_independent_of_row_order():
    y, score = binary_data(300)
    ids = [f"adm{i:04d}" for i in range(300)]
    first = bootstrap_auroc("binary", y, score, ids=ids, n_resamples=100, seed=7, stream="pmv")
    again = bootstrap_auroc("binary", y, score, ids=ids, n_resamples=100, seed=7, stream="pmv")
    shuffle = np.random.default_rng(0).permutation(300)
    shuffled = bootstrap_auroc("binary", y[shuffle], score[shuffle], ids=np.array(ids)[shuffle], n_resamples=100,
                               seed=7, stream="pmv")
    other_seed = bootstrap_auroc("binary", y, score, ids=ids, n_resamples=100, seed=8, stream="pmv")
    other_task = bootstrap_auroc("binary", y, score, ids=ids, n_resamples=100, seed=7, stream="mor")
    assert np.array_equal(first.values, again.values)
    np.testing.assert_allclose(first.values, shuffled.values, atol=1e-12)
    assert not np.allclose(first.values, other_seed.values)
    assert not np.allclose(first.values, other_task.values)  # each task has its own stream


def test_paired_p_value_definition():
    d = np.array([0.02, 0.01, -0.01, 0.0, 0.03])  # 2 differences <= 0, 4 >= 0
    p, used = paired_p_value(d, np.zeros(5))
    assert used == 5 and p == pytest.approx(2 * (1 + 2) / 6)
    p, used = paired_p_value(np.array([0.1, np.nan, 0.2]), np.array([0.0, 0.0, np.nan]))
    assert used == 1 and p == 1.0  # NaN resamples are dropped; min(1, 2 * 1 / 2)


def test_paired_identical_models_p_is_one():
    y, score = binary_data(400)
    test = paired_auroc_test(y, score, score, n_resamples=300, seed=0)
    assert test.p_value == 1.0 and test.diff == 0.0 and test.n_used == 300


def test_paired_clearly_better_model_has_smallest_p():
    y, score = binary_data(400, signal=2.0)
    noisy = score + np.random.default_rng(9).normal(scale=3.0, size=400)
    test = paired_auroc_test(y, score, noisy, n_resamples=300, seed=0)
    assert test.diff > 0.1
    assert test.p_value == pytest.approx(2 / 301)  # no resample on the other side of 0
    assert test.diff_ci[0] > 0


def test_paired_small_difference_on_700_notes_is_not_significant():
    """The issue's point: ~1 AUROC point on 706 PMV-sized notes is within resampling noise."""
    y, score = binary_data(706, signal=0.8)
    rng = np.random.default_rng(4)
    a = score + rng.normal(scale=0.6, size=706)
    b = score + rng.normal(scale=0.6, size=706)
    test = paired_auroc_test(y, a, b, n_resamples=500, seed=0)
    assert abs(test.diff) < 0.02 and test.p_value > 0.05


def test_macro_values_mean_per_resample_nan_when_a_task_is_undefined():
    y, score = binary_data(100)
    a = bootstrap_auroc("binary", y, score, n_resamples=50, seed=0, stream="mor")
    b = bootstrap_auroc("binary", y, -score, n_resamples=50, seed=0, stream="pmv")
    b.values[3] = np.nan
    macro = macro_values([a, b])
    np.testing.assert_allclose(np.delete(macro, 3), np.delete((a.values + b.values) / 2, 3))
    assert math.isnan(macro[3])


def test_percentile_interval_and_bad_input():
    assert percentile_interval(np.array([np.nan, 0.5, 0.7])) == pytest.approx((0.505, 0.695))
    assert all(math.isnan(v) for v in percentile_interval(np.array([np.nan])))
    with pytest.raises(ClinpeftError, match="n_resamples=0"):
        bootstrap_auroc("binary", [0, 1], [0.1, 0.9], n_resamples=0)
    with pytest.raises(ClinpeftError, match="misaligned"):
        bootstrap_auroc("binary", [0, 1, 1], [0.1, 0.9])


def test_bootstrap_fields_are_metrics_json_keys_resampled_in_id_order():
    y, score = binary_data(120)
    ids = [f"n{i:03d}" for i in range(120)]
    fields = bootstrap_fields("binary", y, score, ids=ids, stream="mor", n_resamples=100, seed=3)
    assert fields == bootstrap_auroc("binary", y, score, ids=ids, n_resamples=100, seed=3, stream="mor").fields()
    assert set(fields) == {"auroc_ci", "bootstrap"} and fields["bootstrap"]["stream"] == "mor"
    shuffled = np.random.default_rng(0).permutation(120)  # the row order of the notes does not matter
    again = bootstrap_fields("binary", y[shuffled], score[shuffled], ids=[ids[i] for i in shuffled], stream="mor",
                             n_resamples=100, seed=3)
    assert again == fields
