"""Gradient accumulation is a memory trade, not a change of objective: batch_size=b, grad_accum=k trains like
batch_size=k*b, grad_accum=1 (issue 24: transformers 5 took our per-micro-batch mean for a loss already divided
by the accumulated item count, so backward and the logged loss were grad_accum times too big)."""

import math

import pytest
import torch

from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.data.tasks import load_task
from clinpeft.modeling.classifier import build_classifier
from clinpeft.training.classification import make_trainer, weighted_cross_entropy


def first_step(tiny_llama, task_dir, tmp_path, task_type, num_labels, batch_size, grad_accum):
    """(logged loss, logged pre-clipping grad norm, trainable weights) after one optimizer step."""
    config = load_config(FinetuneConfig, None, [
        f"model.base={tiny_llama}", f"task.path={task_dir}", "variant=lora", "lora.r=4", "lora.lora_dropout=0",
        "task.max_seq_len=64", f"train.batch_size={batch_size}", f"train.grad_accum={grad_accum}",
        "train.max_steps=1", "train.logging_steps=1", "train.warmup_ratio=0", "train.lr=1e-2"])
    task = load_task(config.task.path)
    torch.manual_seed(0)  # the same head initialisation in both runs
    clf = build_classifier(tiny_llama, task_type, num_labels, "lora", None, config.lora, "float32")
    trainer, _, _ = make_trainer(clf, task, config, tmp_path / f"ckpt-{batch_size}x{grad_accum}", progress=False)
    trainer.train()
    logged = next(e for e in trainer.state.log_history if "loss" in e)
    weights = {n: p.detach().clone() for n, p in clf.model.named_parameters() if p.requires_grad}
    return logged["loss"], logged["grad_norm"], weights


@pytest.mark.parametrize("task,task_type,num_labels", [("mor", "binary", 2), ("diag", "multilabel", None)])
def test_grad_accum_matches_one_big_batch(task, task_type, num_labels, tiny_llama, synthetic_tasks, tmp_path):
    num_labels = num_labels or len(load_task(synthetic_tasks[task]).labels)
    loss_big, norm_big, weights_big = first_step(tiny_llama, synthetic_tasks[task], tmp_path, task_type,
                                                 num_labels, batch_size=8, grad_accum=1)
    loss_acc, norm_acc, weights_acc = first_step(tiny_llama, synthetic_tasks[task], tmp_path, task_type,
                                                 num_labels, batch_size=2, grad_accum=4)
    # a binary/BCE loss of a fresh head is near log 2 per note; 4x that was the bug with grad_accum=4
    assert loss_acc == pytest.approx(loss_big, rel=1e-4)
    assert loss_big < 1.0
    assert norm_acc == pytest.approx(norm_big, rel=1e-3)
    for name, value in weights_big.items():
        torch.testing.assert_close(weights_acc[name], value, rtol=1e-4, atol=1e-6)


def test_weighted_cross_entropy_is_additive_over_equal_micro_batches():
    """The per-note mean of weight * CE: the mean of two halves' losses is the whole batch's loss (torch's
    weight= divides by each half's own weight sum, which breaks this when the halves hold other classes)."""
    logits = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-0.4, 0.9], [0.2, 0.2]])
    labels = torch.tensor([0, 0, 1, 0])
    weights = torch.tensor([0.6, 3.0])
    whole = weighted_cross_entropy(logits, labels, weights)
    halves = (weighted_cross_entropy(logits[:2], labels[:2], weights)
              + weighted_cross_entropy(logits[2:], labels[2:], weights)) / 2
    assert halves.item() == pytest.approx(whole.item(), rel=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert whole.item() == pytest.approx(((ce * weights[labels]).sum() / 4).item(), rel=1e-6)


def test_pretraining_loss_is_already_right_under_grad_accum(tiny_llama, synthetic_corpus, tmp_path):
    """The plain Trainer on a causal LM divides the summed token loss by the accumulated token count itself:
    its logged loss is the per-token mean whatever grad_accum, and stays so (no flag set for pretraining)."""
    from clinpeft.recipes import pretrain

    def logged(batch_size, grad_accum):
        config = load_config(PretrainConfig, None, [
            f"model.base={tiny_llama}", f"data.paths=[{synthetic_corpus['discharge']}]", "data.max_seq_len=64",
            "data.test_fraction=0.25", f"train.batch_size={batch_size}", f"train.grad_accum={grad_accum}",
            "train.max_steps=1", "train.logging_steps=1", "train.warmup_ratio=0", "peft.r=4",
            "peft.lora_dropout=0", "eval.train_max_blocks=2"])
        result = pretrain.main(config, tmp_path / f"pt-{batch_size}x{grad_accum}", progress=False)
        return result["loss_curve"][0]["loss"]

    big, accumulated = logged(4, 1), logged(2, 2)
    assert accumulated == pytest.approx(big, rel=1e-4)
    assert big < math.log(400) + 1  # a per-token NLL over the 400-token vocabulary, not grad_accum times one
