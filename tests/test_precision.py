"""train.precision on a CPU: auto picks bf16 only where the CPU multiplies bf16 natively, bf16 trains (the loss
falls, the adapter ends close to fp32's), and what a bf16 run scores equals what `evaluate` scores later."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from peft import PeftModel

from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.base import load_causal_lm
from clinpeft.recipes import evaluate, finetune, pretrain
from clinpeft.training import precision as common
from conftest import pretrain_overrides

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU precision rules")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_where_the_cpu_has_native_bf16_and_the_model_is_wide(native, monkeypatch, tiny_llama):
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native)
    assert common.resolve_precision("auto") == ("bf16" if native else "fp32")
    assert common.resolve_precision("auto", 4096) == ("bf16" if native else "fp32")
    assert common.resolve_precision("auto", common.CPU_BF16_MIN_HIDDEN - 1) == "fp32"  # tiny: casts cost more
    assert common.hidden_size_of(tiny_llama) < common.CPU_BF16_MIN_HIDDEN  # so the test models train in fp32
    assert common.resolve_precision("fp32") == "fp32" and common.resolve_precision("bf16", 64) == "bf16"
    assert common.precision_flags("bf16") == {"bf16": True, "fp16": False, "use_cpu": True}
    assert common.precision_flags("fp32") == {"bf16": False, "fp16": False, "use_cpu": True}
    with pytest.raises(ClinpeftError, match="train.precision=fp16 needs a GPU"):
        common.resolve_precision("fp16")


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(common, "CPUINFO", cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert common.cpu_has_native_bf16()
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n")
    assert common.cpu_has_native_bf16()
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")  # AVX-512 alone: bf16 is emulated, slow
    assert not common.cpu_has_native_bf16()


def test_bf16_pretraining_learns_and_stays_close_to_fp32(tiny_llama, synthetic_corpus, tmp_path):
    """Same data, same steps: the bf16-autocast run's loss falls and its adapter scores within a small distance
    of the fp32 run's (fp32 master weights and optimizer state; only the matmuls round to bf16)."""
    runs = {}
    for precision in ("fp32", "bf16"):
        overrides = [*pretrain_overrides(tiny_llama, synthetic_corpus), "train.max_steps=8", "train.logging_steps=1",
                     f"train.precision={precision}"]
        runs[precision] = pretrain.main(load_config(PretrainConfig, None, overrides), tmp_path / precision,
                                        progress=False)
    bf16 = runs["bf16"]
    assert bf16["precision"] == "bf16" and bf16["model_dtype"] == "float32"  # autocast, fp32 weights
    assert runs["fp32"]["precision"] == "fp32"
    losses = [point["loss"] for point in bf16["loss_curve"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert bf16["test_ppl"] < bf16["base_test_ppl"]
    # measured: test perplexity 6e-6 relative apart, log-probabilities 0.0045 nats at most; bounds with margin
    assert bf16["test_ppl"] == pytest.approx(runs["fp32"]["test_ppl"], rel=2e-3)
    ids = torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    logits = {}
    for precision in runs:
        model = PeftModel.from_pretrained(load_causal_lm(tiny_llama, "float32"), tmp_path / precision / "adapter")
        with torch.no_grad():
            logits[precision] = model.eval()(input_ids=ids).logits.log_softmax(-1)
    assert (logits["bf16"] - logits["fp32"]).abs().max() < 0.02  # nats, on log-probabilities near -5.7


def test_bf16_finetune_scores_what_evaluate_scores(tiny_llama, clinical_run, synthetic_tasks, tmp_path):
    """Trained under bf16 autocast, the run's val/test predictions and the epoch it kept are scored in the model's
    own dtype, as `evaluate` scores the saved run: the same numbers (before: ~1e-3 apart)."""
    task = synthetic_tasks["mor"]
    config = load_config(FinetuneConfig, None, [
        f"model.base={tiny_llama}", f"task.path={task}", "task.max_seq_len=64", "train.batch_size=8",
        "train.epochs=2", "train.lr=1e-2", "lora.r=4", "variant=clinical_trainable+downstream",
        f"clinical_adapter={clinical_run}", "train.precision=bf16", "eval.bootstrap_resamples=0"])
    metrics = finetune.main(config, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["precision"] == "bf16"
    best = max(h["val_auroc"] for h in metrics["val_history"])
    assert metrics["val"]["auroc"] == pytest.approx(best, abs=1e-9)  # the kept epoch, scored the same way
    again = evaluate.main(tmp_path / "run", task / "test.csv", tmp_path / "eval", progress=False,
                          bootstrap_resamples=0)
    assert again["eval"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-9)
    own = pd.read_csv(tmp_path / "run" / "predictions.csv")
    rescored = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    np.testing.assert_allclose(rescored[["p_0", "p_1"]], own[["p_0", "p_1"]], atol=1e-6)


@pytest.mark.parametrize(("train", "dtype", "weights"), [
    ("auto", "auto", "bfloat16"), ("bf16", "auto", "bfloat16"), ("fp32", "auto", "float32"),
    ("fp16", "auto", "float16"), ("fp32", "bfloat16", "bfloat16")])
def test_one_meaning_of_auto_for_loading_and_autocast_on_a_gpu(train, dtype, weights, monkeypatch, tiny_llama):
    """On a bf16 GPU the weights follow train.precision (model.dtype=auto), for pretraining and fine-tuning alike:
    both recipes load `run_precision(...).weights` (before, finetune loaded bf16 under train.precision=fp32)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    decided = common.run_precision(train, dtype, tiny_llama)
    assert decided.weights == weights
    assert decided.train == ("bf16" if train == "auto" else train)


def test_on_a_cpu_the_weights_load_in_fp32_and_the_width_decides_auto(monkeypatch, tiny_llama):
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: True)
    assert common.run_precision("auto", "auto", tiny_llama) == common.Precision(train="fp32", weights="float32")
    assert common.run_precision("auto", "auto") == common.Precision(train="bf16", weights="float32")  # width unknown
    assert common.run_precision("bf16", "auto", tiny_llama) == common.Precision(train="bf16", weights="float32")
