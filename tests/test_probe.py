"""The linear probe (training/probe.py): fit on frozen features, C on val, LP-FT's head, the silent-failure guard."""

import json
import math

import numpy as np
import pytest
import torch

from clinpeft.config import FinetuneConfig, load_config
from clinpeft.recipes import finetune
from clinpeft.training.probe import fit_probe, guard, head_weights, pool_hidden, prior_loss


def blobs(n, num_labels, seed, shift=3.0, dim=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_labels, n)
    x = rng.normal(size=(n, dim)) + 5.0  # not centred, as a decoder's final-norm output is not
    x[:, 0] += shift * y
    return x.astype(np.float32), y


def test_binary_probe_separates_and_chooses_c_on_val():
    splits = {s: blobs(120, 2, seed) for s, seed in (("train", 0), ("val", 1), ("test", 2))}
    features, targets = {s: x for s, (x, _) in splits.items()}, {s: y for s, (_, y) in splits.items()}
    probe = fit_probe("binary", ["0", "1"], features, targets)
    assert probe.val_auroc > 0.95 and probe.test_auroc > 0.95
    assert probe.val_auroc == max(probe.val_by_c.values())  # the chosen C is the best on val
    assert probe.to_json()["C"] == probe.c and probe.skipped_labels == 0


def test_multiclass_and_multilabel_probes():
    splits = {s: blobs(200, 4, seed) for s, seed in (("train", 0), ("val", 1), ("test", 2))}
    probe = fit_probe("multiclass", list("abcd"), {s: x for s, (x, _) in splits.items()},
                      {s: y for s, (_, y) in splits.items()})
    assert probe.val_auroc > 0.85
    # multilabel: label 0 = class >= 2 (learnable), label 1 never positive in train (skipped: constant score)
    features, targets = {}, {}
    for split, (x, y) in splits.items():
        features[split] = x
        targets[split] = np.stack([(y >= 2), np.r_[np.zeros(len(y) - 10), np.ones(10)] * (split != "train")],
                                  axis=1).astype(np.float32)
    probe = fit_probe("multilabel", ["A", "B"], features, targets)
    assert probe.skipped_labels == 1
    assert 0.7 < probe.val_auroc < 1.0  # the skipped label scores 0.5, the learnable one near 1


def test_head_weights_reproduce_the_logistic_regression_without_a_bias():
    """LP-FT: LLaMA's score has no bias; softmax(W x) with W from head_weights ranks notes like the probe."""
    from sklearn.metrics import roc_auc_score

    x, y = blobs(300, 2, 0)
    weight, bias = head_weights("binary", 2, x, y, c=1.0, bias=False)
    assert bias is None and weight.shape == (2, x.shape[1])
    logits = x @ weight.T
    p1 = torch.softmax(torch.tensor(logits), -1)[:, 1].numpy()
    assert roc_auc_score(y, p1) > 0.95
    np.testing.assert_allclose(weight[0], -weight[1])  # (-z/2, z/2): softmax is sigmoid(z)
    # with a bias (encoders' classifier), centred features and the intercept folded in
    weight, bias = head_weights("multiclass", 3, *blobs(300, 3, 1), c=1.0, bias=True)
    assert bias.shape == (3,)


def test_pool_hidden_mean_and_last_follow_the_mask_on_either_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    mean, last = pool_hidden(hidden, right)
    assert mean[:, 0].tolist() == [1.0, 4.5] and last[:, 0].tolist() == [2.0, 5.0]
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    mean, last = pool_hidden(hidden, left)
    assert mean[:, 0].tolist() == [2.0, 6.5] and last[:, 0].tolist() == [3.0, 7.0]


def test_prior_loss_is_the_constant_predictors_loss():
    assert prior_loss("binary", np.array([0, 0, 0, 1]), 2) == pytest.approx(math.log(2))  # balanced loss
    assert prior_loss("multiclass", np.array([0, 1, 2, 3]), 4) == pytest.approx(math.log(4))
    targets = np.array([[1, 0], [0, 0], [0, 0], [0, 0]], dtype=np.float32)  # prevalence 0.25 and 0
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert prior_loss("multilabel", targets, 2) == pytest.approx(entropy / 2, rel=1e-6)


def test_guard_names_the_numbers():
    quiet = guard(0.9, {"val": 0.8}, 0.3, math.log(2))
    assert quiet["warnings"] == [] and not quiet["below_probe"] and not quiet["loss_above_prior"]
    loud = guard(0.61, {"val": 0.83}, 0.9, math.log(2))
    assert loud["below_probe"] and loud["loss_above_prior"]
    assert len(loud["warnings"]) == 2 and all(w.startswith("warning: ") for w in loud["warnings"])
    assert "0.6100 < probe 0.8300" in loud["warnings"][0] and "0.9000 >= 0.6931" in loud["warnings"][1]
    assert "train.head_init=probe" in loud["warnings"][0] and "model.pooling=mean" in loud["warnings"][0]
    lp_ft = guard(0.79, {"val": 0.8}, 0.3, math.log(2), head_init="probe", pooling="mean")["warnings"][0]
    assert "head_init" not in lp_ft and "pooling" not in lp_ft and lp_ft.endswith("a lower train.lr")


def test_finetune_records_the_probe_and_lp_ft_starts_from_it(tiny_llama, synthetic_tasks, tmp_path):
    """metrics.json carries probe {val, test, C} and guard; head_init=probe puts the probe's fit into the
    head before training (so with lr ~0 the run scores what the probe-initialised head gives); head_lr
    gives the head its own optimizer group."""
    base = [f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}", "variant=head", "task.max_seq_len=64",
            "train.batch_size=8", "train.grad_accum=1", "train.epochs=1", "eval.bootstrap_resamples=0",
            "model.pooling=mean"]
    config = load_config(FinetuneConfig, None, base + ["train.head_init=probe", "train.lr=1e-9",
                                                       "train.head_lr=1e-9"])
    result = finetune.main(config, tmp_path / "lpft", progress=False)
    probe = result["probe"]
    assert set(probe) >= {"val", "test", "C", "val_by_C"} and 0.0 <= probe["val"] <= 1.0
    assert result["guard"]["probe_val_auroc"] == probe["val"]
    assert json.loads((tmp_path / "lpft" / "metrics.json").read_text())["probe"] == probe
    # the saved head (lr ~0: as initialised) is the logistic regression of the train notes' features, C the probe's
    from safetensors.torch import load_file

    from clinpeft.data.long_notes import LongNotes, encode_notes
    from clinpeft.data.tasks import load_task
    from clinpeft.modeling.classifier import build_classifier
    from clinpeft.training.probe import note_features

    task = load_task(config.task.path)
    clf = build_classifier(tiny_llama, "binary", 2, "head", None, config.lora, "float32", pooling="mean")
    encoded = encode_notes(clf.tokenizer, task.splits["train"]["text"].tolist(), LongNotes.from_task(config.task))
    features = note_features(clf, encoded, progress=False)
    expected, _ = head_weights("binary", 2, features.head, task.targets("train"), probe["C"], bias=False)
    saved = load_file(tmp_path / "lpft" / "head.safetensors")["weight"].numpy()
    np.testing.assert_allclose(saved, expected, rtol=1e-3, atol=1e-5)
    lines = finetune.summary(result, tmp_path / "lpft")
    assert lines[1] == (f"linear probe of the frozen model: val AUROC {probe['val']:.4f}, "
                        f"test AUROC {probe['test']:.4f}")


def test_head_lr_is_a_separate_optimizer_group(tiny_llama, synthetic_tasks, tmp_path):
    from clinpeft.data.tasks import load_task
    from clinpeft.modeling.classifier import build_classifier
    from clinpeft.training.classification import make_trainer

    config = load_config(FinetuneConfig, None, [f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}",
                                               "variant=lora", "lora.r=4", "train.lr=1e-4", "train.head_lr=3e-2"])
    clf = build_classifier(tiny_llama, "binary", 2, "lora", None, config.lora, "float32")
    trainer, _, _ = make_trainer(clf, load_task(config.task.path), config, tmp_path / "ckpt", progress=False)
    optimizer = trainer.create_optimizer()
    head = {id(p) for p in trainer.head.parameters()}
    by_lr = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_lr.setdefault(group["lr"], set()).add(id(p) in head)
    assert by_lr == {1e-4: {False}, 3e-2: {True}}


def test_shared_features_run_each_frozen_model_once(tiny_llama, synthetic_tasks, monkeypatch):
    """Inside shared_features(): head and + LoRA (a fresh LoRA adds nothing) share one forward pass, with the same
    features as a pass of their own; a LoRA whose B is no longer zero is another model; outside, nothing is kept."""
    from clinpeft.data.long_notes import LongNotes, encode_notes
    from clinpeft.data.tasks import load_task
    from clinpeft.modeling.classifier import build_classifier
    from clinpeft.training import probe

    config = load_config(FinetuneConfig, None, [f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}",
                                               "task.max_seq_len=64", "model.pooling=mean", "lora.r=4"])
    texts = load_task(config.task.path).splits["val"]["text"].tolist()[:12]
    passes = []
    real = probe._note_features
    monkeypatch.setattr(probe, "_note_features", lambda *a, **k: passes.append(1) or real(*a, **k))

    def features(variant):
        torch.manual_seed(len(passes))  # a different lora_A each time: it must not matter while B is zero
        clf = build_classifier(tiny_llama, "binary", 2, variant, None, config.lora, "float32", pooling="mean")
        encoded = encode_notes(clf.tokenizer, texts, LongNotes.from_task(config.task))
        return clf, probe.note_features(clf, encoded, batch_size=4, progress=False)

    _, alone = features("lora")
    with probe.shared_features():
        _, head = features("head")
        clf, lora = features("lora")
        assert len(passes) == 2  # the first outside the block, then head; + LoRA reused head's
        np.testing.assert_array_equal(lora.mean, head.mean)
        np.testing.assert_allclose(head.mean, alone.mean, rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # a trained LoRA: B no longer zero, so another function
            next(p for n, p in clf.model.named_parameters() if "lora_B" in n).add_(0.1)
        encoded = encode_notes(clf.tokenizer, texts, LongNotes.from_task(config.task))
        trained = probe.note_features(clf, encoded, batch_size=4, progress=False)
        assert len(passes) == 3 and not np.array_equal(trained.mean, head.mean)
        probe.note_features(clf, encoded, batch_size=8, progress=False)  # other batches: other padding
        assert len(passes) == 4
    features("head")
    assert len(passes) == 5 and probe._SHARED is None


def test_clinical_lr_is_a_group_of_its_own(tiny_llama, synthetic_tasks, clinical_run, tmp_path):
    """train.clinical_lr: a trainable clinical adapter's parameters at their own rate, beside the downstream LoRA's
    train.lr and the head's head_lr; a frozen clinical adapter has nothing to put there."""
    from clinpeft.data.tasks import load_task
    from clinpeft.modeling.adapters import find_clinical_adapter
    from clinpeft.modeling.classifier import build_classifier
    from clinpeft.training.classification import make_trainer

    clinical = find_clinical_adapter(clinical_run)
    for variant, expected in (("clinical_trainable+downstream", {1e-4: {"downstream"}, 3e-2: {"head"},
                                                                 1e-5: {"clinical"}}),
                              ("clinical_frozen+downstream", {1e-4: {"downstream"}, 3e-2: {"head"}})):
        config = load_config(FinetuneConfig, None, [
            f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}", f"variant={variant}",
            f"clinical_adapter={clinical_run}", "lora.r=4", "train.lr=1e-4", "train.head_lr=3e-2",
            "train.clinical_lr=1e-5"])
        clf = build_classifier(tiny_llama, "binary", 2, variant, clinical, config.lora, "float32")
        trainer, _, _ = make_trainer(clf, load_task(config.task.path), config, tmp_path / "ckpt", progress=False)
        names = {id(p): ("head" if ".score." in f".{n}" else "clinical" if ".clinical." in n else "downstream")
                 for n, p in clf.model.named_parameters() if p.requires_grad}
        by_lr = {}
        for group in trainer.create_optimizer().param_groups:
            if group["params"]:
                by_lr.setdefault(group["lr"], set()).update(names[id(p)] for p in group["params"])
        assert by_lr == expected, variant


def test_split_features_hash_the_model_once_for_all_splits(tiny_llama, synthetic_tasks, monkeypatch):
    """Inside shared_features() a run's probe hashes its frozen model once (the weights are the same for train, val
    and test), and gets each split's own features."""
    from clinpeft.data.long_notes import LongNotes, encode_notes
    from clinpeft.data.tasks import load_task
    from clinpeft.modeling.classifier import build_classifier
    from clinpeft.training import probe

    config = load_config(FinetuneConfig, None, [f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}",
                                               "task.max_seq_len=64", "model.pooling=mean"])
    task = load_task(config.task.path)
    clf = build_classifier(tiny_llama, "binary", 2, "head", None, config.lora, "float32", pooling="mean")
    encoded = {s: encode_notes(clf.tokenizer, task.splits[s]["text"].tolist()[:6], LongNotes.from_task(config.task))
               for s in ("train", "val")}
    hashes = []
    real = probe.function_digest
    monkeypatch.setattr(probe, "function_digest", lambda *a: hashes.append(1) or real(*a))
    with probe.shared_features():
        features = probe.split_features(clf, encoded, batch_size=4, progress=False)
    assert len(hashes) == 1 and set(features) == {"train", "val"}
    for split in ("train", "val"):
        alone = probe.note_features(clf, encoded[split], batch_size=4, progress=False)
        np.testing.assert_array_equal(features[split].mean, alone.mean)
