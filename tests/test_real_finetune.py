"""Fine-tuning on real weights (SmolLM2-135M, the `real_base` fixture) learns and clears the linear probe
(issue 24). Task: generated admission notes labelled by whether the presentation is respiratory (SOB, cough,
dyspnea, ...), a separable task a pretrained model reads in 64 tokens. One clinical LoRA pretraining run is
shared by the module; each run is 3 optimizer steps on 24 notes. Marked slow + real_weights (conftest)."""

import math
import re

import pandas as pd
import pytest

from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.recipes import finetune, pretrain

RESPIRATORY = re.compile(r"CHIEF COMPLAINT:\n[^\n]*(SOB|[Cc]ough|dyspnea|[Ss]hortness of breath|wheez|respiratory)")
SIZES = {"train": 24, "val": 16, "test": 16}
# the bundled CPU recipe's fine-tuning choices (configs/cpu/finetune_clinical.yaml), on a smaller budget
RECIPE = ["model.pooling=mean", "train.head_init=probe", "task.max_seq_len=64", "train.batch_size=8",
          "train.grad_accum=1", "train.epochs=1", "eval.batch_size=16", "eval.bootstrap_resamples=0", "lora.r=4"]


@pytest.fixture(scope="module")
def respiratory_task(tmp_path_factory):
    """train/val/test.csv (id,text,label) + labels.txt: label 1 = a respiratory chief complaint, balanced."""
    from clinpeft.demo.synthetic import write_tasks

    source = write_tasks(tmp_path_factory.mktemp("real-src"), n_patients=300, seed=0, tasks=["mor"])["mor"]
    out = tmp_path_factory.mktemp("respiratory")
    for split, n in SIZES.items():
        frame = pd.read_csv(source / f"{split}.csv", dtype=str, keep_default_na=False)
        frame["label"] = frame["text"].map(lambda t: str(int(bool(RESPIRATORY.search(t)))))
        frame = pd.concat([frame[frame.label == c].head(n // 2) for c in ("0", "1")])
        frame[["id", "text", "label"]].to_csv(out / f"{split}.csv", index=False)
    (out / "labels.txt").write_text("0\n1\n")
    return out


@pytest.fixture(scope="module")
def real_clinical(real_base, tmp_path_factory):
    """A clinical LoRA on SmolLM2-135M: 2 optimizer steps on generated notes (the adapter's effect is not what
    these tests check; that the stacked variants train and score on top of a real one is)."""
    from clinpeft.demo.synthetic import write_pretraining_corpus

    corpus = write_pretraining_corpus(tmp_path_factory.mktemp("real-corpus"), n_patients=4, seed=0)
    config = load_config(PretrainConfig, None, [
        f"model.base={real_base}", f"data.paths=[{corpus['discharge']}]", "data.max_seq_len=64",
        "data.test_fraction=0.25", "train.batch_size=2", "train.grad_accum=1", "train.max_steps=2",
        "peft.r=4", "eval.train_max_blocks=2", "eval.batch_size=4"])
    out = tmp_path_factory.mktemp("real-runs") / "clinical"
    pretrain.main(config, out, progress=False)
    return out


def run(real_base, task, clinical, out, variant, *extra):
    config = load_config(FinetuneConfig, None, [f"model.base={real_base}", f"task.path={task}", f"variant={variant}",
                                                f"clinical_adapter={clinical}", *RECIPE, *extra])
    return finetune.main(config, out, progress=False)


@pytest.mark.parametrize("variant", ["lora", "clinical_frozen+downstream", "clinical_trainable+downstream"])
def test_every_variant_learns_and_clears_the_probe(variant, real_base, respiratory_task, real_clinical, tmp_path):
    result = run(real_base, respiratory_task, real_clinical, tmp_path / "run", variant, "train.lr=5e-4",
                 "train.head_lr=1e-3")
    probe = result["probe"]
    assert probe["val"] > 0.9  # the frozen model's features already separate the task
    assert result["val"]["auroc"] > 0.9 and result["test"]["auroc"] > 0.85  # far above chance
    assert result["val"]["auroc"] >= probe["val"] - 0.05  # LP-FT starts at the probe and keeps what it has
    assert not result["guard"]["loss_above_prior"]


def test_guard_fires_on_a_run_forced_to_fail(real_base, respiratory_task, real_clinical, tmp_path):
    """lr 1e2 from a random head: the weights blow up and the loss ends far above the label prior's (log 2 per
    note); finetune says so in a warning line and metrics.json records it (the probe-side check: above, every
    variant stays clear of it; and tests/test_probe.py::test_guard_names_the_numbers)."""
    result = run(real_base, respiratory_task, real_clinical, tmp_path / "broken", "lora", "train.lr=1e2",
                 "train.head_init=random", "train.warmup_ratio=0", "eval.probe=false")
    guard = result["guard"]
    assert guard["prior_loss"] == pytest.approx(math.log(2))
    assert guard["loss_above_prior"] and guard["final_train_loss"] > guard["prior_loss"]
    lines = finetune.summary(result, tmp_path / "broken")
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert guard["warnings"] and set(guard["warnings"]) <= set(warnings)
    assert f"{guard['final_train_loss']:.4f} >= 0.6931" in " ".join(warnings)
