"""metrics.json's entry of one scored split, from arrays: what finetune writes for val and test and evaluate."""

from __future__ import annotations

import numpy as np

from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.bootstrap import bootstrap_fields
from clinpeft.evaluation.clinical import MIN_POSITIVES, bootstrap_clinical, class_support, clinical_metrics
from clinpeft.evaluation.metrics import probabilities, task_metrics


def split_metrics(task_type: str, labels: list[str], targets: np.ndarray, logits: np.ndarray, ids: list,
                  stream: str, bootstrap_resamples: int, bootstrap_seed: int,
                  min_positives: int = MIN_POSITIVES) -> dict:
    """One split's AUROC (evaluation/metrics.py) and, when bootstrap_resamples > 0, "auroc_ci", its 95% bootstrap
    interval over the split's notes (evaluation/bootstrap.py: resamples keyed by note `ids` and the `stream`, the
    task's name); "clinical": AUPRC, prevalence, Brier, ECE (and OvR / micro AUROC) with intervals on the same
    resamples (evaluation/clinical.py); "class_support": positives per class and the classes absent or under
    `min_positives`. targets: class indices (single-label) or a 0/1 matrix (multilabel), as TaskData.targets."""
    scores = task_metrics(task_type, targets, logits, labels)
    probs = probabilities(task_type, logits)
    if bootstrap_resamples:
        scores.update(bootstrap_fields(task_type, targets, probs, ids=ids, stream=stream,
                                       n_resamples=bootstrap_resamples, seed=bootstrap_seed))
    scores["class_support"] = class_support(task_type, targets, labels, min_positives)
    try:
        clinical = clinical_metrics(task_type, targets, probs)
        if bootstrap_resamples:
            clinical.update(bootstrap_clinical(task_type, targets, probs, ids=ids, stream=stream,
                                               n_resamples=bootstrap_resamples, seed=bootstrap_seed))
        scores["clinical"] = clinical
    except ClinpeftError as exc:  # e.g. no positive example: AUPRC undefined; AUROC above already checked
        scores["clinical"] = {"error": str(exc)}
    return scores
