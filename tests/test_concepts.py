"""The demo's concept world (demo/concepts.py): a world where clinical pretraining can matter. Its properties,
checked on the files it writes: deterministic, labels from concepts with noise (no AUROC near 1), the forms of
each concept rare in the few labelled notes, an unlabelled corpus several times larger that explains every form,
and a bag of words that learns something but stays below what knowing the concepts allows."""

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from clinpeft.demo.concepts import (
    CONCEPT_SIZES,
    CONCEPT_TASKS,
    CONCEPTS,
    bayes_auroc,
    write_concept_world,
)
from clinpeft.training.reference import tfidf_run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_concept_world(tmp_path_factory.mktemp("world"), size="default", seed=0)


def read(task_dir, split):
    return pd.read_csv(task_dir / f"{split}.csv", dtype=str, keep_default_na=False)


def concept_matrix(texts):
    """Which concepts each note mentions, by any of their forms: what a model that knows the forms could read."""
    patterns = [re.compile("|".join(rf"(?<![\w]){re.escape(f)}(?![\w])" for f in c.forms)) for c in CONCEPTS]
    return np.array([[int(bool(p.search(t))) for p in patterns] for t in texts])


def test_same_seed_same_bytes_other_seed_other_notes(world, tmp_path):
    again = write_concept_world(tmp_path / "again", size="default", seed=0)
    other = write_concept_world(tmp_path / "other", size="default", seed=1)
    for task in CONCEPT_TASKS:
        assert (again["tasks"][task] / "test.csv").read_bytes() == (world["tasks"][task] / "test.csv").read_bytes()
        assert (other["tasks"][task] / "test.csv").read_bytes() != (world["tasks"][task] / "test.csv").read_bytes()
    assert again["corpus"]["discharge"].read_bytes() == world["corpus"]["discharge"].read_bytes()


def test_splits_sizes_and_both_classes(world):
    for task in CONCEPT_TASKS:
        for split in ("train", "val", "test"):
            frame = read(world["tasks"][task], split)
            assert len(frame) == CONCEPT_SIZES["default"][split]
            assert list(frame.columns) == ["id", "text", "label", "gender", "age_group"]
            assert 0.15 < frame["label"].astype(int).mean() < 0.5  # both classes, positives a minority
    ids = [set(read(world["tasks"]["mor"], s)["id"]) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


@pytest.mark.parametrize("task", CONCEPT_TASKS)
def test_labels_are_noisy_functions_of_the_concepts(task):
    assert 0.8 < bayes_auroc(task=task) < 0.92  # the concepts carry the signal, the noise caps every AUROC


def test_each_form_is_rare_in_the_labelled_notes_and_explained_in_the_corpus(world):
    train = " ".join(read(world["tasks"]["mor"], "train")["text"])
    corpus = pd.read_csv(world["corpus"]["discharge"])["text"]
    counts = [len(re.findall(rf"(?<![\w]){re.escape(f)}(?![\w])", train)) for c in CONCEPTS if c.acute for f in c.forms]
    assert np.median(counts) <= 4  # a bag of words sees each acute form a few times at most
    joined = "\n".join(corpus)
    for concept in CONCEPTS:  # every form occurs in the corpus, and next to its concept's name somewhere
        for form in concept.forms:
            assert form in joined, form
        assert concept.name in joined
    # several times the labelled notes' text (train split), in words
    assert sum(len(t.split()) for t in corpus) > 3 * len(train.split())


def test_tfidf_learns_something_but_knowing_the_concepts_would_do_better(world, tmp_path):
    """The reference row of Table 3 (training/reference.py) against a logistic regression on which concepts each
    note mentions (the oracle a model mapping every form to its concept could approach): room for pretraining."""
    for task in CONCEPT_TASKS:
        tfidf = tfidf_run(world["tasks"][task], tmp_path / task)["test"]["auroc"]
        train, test = read(world["tasks"][task], "train"), read(world["tasks"][task], "test")
        oracle = LogisticRegression(max_iter=2000).fit(concept_matrix(train["text"]), train["label"].astype(int))
        known = roc_auc_score(test["label"].astype(int), oracle.predict_proba(concept_matrix(test["text"]))[:, 1])
        assert 0.55 < tfidf < 0.75, task
        assert known > tfidf + 0.08, (task, known, tfidf)


def test_unknown_size_or_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown size"):
        write_concept_world(tmp_path, size="huge")
    with pytest.raises(ValueError, match="unknown task"):
        write_concept_world(tmp_path, tasks=["los"])
