"""Attention paths and kernel options (`model.attn_implementation`, `train.compile`, `train.fused_loss`): each is
refused in one line, before any work, where it cannot run; what runs here trains the same model.

flex_attention, flash_attention_2 and the fused loss need a CUDA GPU: benchmarks/gpu_check.sh measures them there
(and runs the packed-logits tests of tests/test_packing.py for every attention path it finds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clinpeft.cli import main
from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.base import check_attention
from clinpeft.recipes import pretrain
from clinpeft.training import trainer
from conftest import pretrain_overrides

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals on a machine without CUDA")


def test_options_are_config_keys_with_safe_defaults():
    config = load_config(PretrainConfig)
    assert config.model.attn_implementation == "sdpa" and not config.train.compile and not config.train.fused_loss
    for attn in ("sdpa", "eager", "flex_attention", "flash_attention_2"):
        config = load_config(PretrainConfig, None, [f"model.attn_implementation={attn}"])
        assert config.model.attn_implementation == attn
    with pytest.raises(ClinpeftError, match="model.attn_implementation"):
        load_config(PretrainConfig, None, ["model.attn_implementation=flash_attention_3"])
    assert load_config(FinetuneConfig, None, ["train.compile=true"]).train.compile
    # a classifier's logits are num_labels wide: nothing to fuse, so the key is pretraining's only
    with pytest.raises(ClinpeftError, match="fused_loss"):
        load_config(FinetuneConfig, None, ["train.fused_loss=true"])


def test_kernel_options_become_the_trainers_flags(tmp_path):
    plain = trainer.training_arguments(load_config(PretrainConfig).train, tmp_path)
    assert plain.torch_compile is False and plain.use_liger_kernel is False
    train = load_config(PretrainConfig, None, ["train.compile=true", "train.fused_loss=true"]).train
    assert trainer.kernel_flags(train) == {
        "torch_compile": True, "use_liger_kernel": True, "liger_kernel_config": {
            "fused_linear_cross_entropy": True, "cross_entropy": False, "rms_norm": True, "rope": True,
            "swiglu": True}}
    args = trainer.training_arguments(train, tmp_path)
    assert args.torch_compile and args.use_liger_kernel
    assert trainer.kernel_flags(load_config(FinetuneConfig).train) == {"torch_compile": False}


@no_cuda
@pytest.mark.parametrize("attn, expected", [
    ("flash_attention_2", "model.attn_implementation=flash_attention_2 needs a CUDA GPU and the flash-attn package"),
    ("flex_attention", "model.attn_implementation=flex_attention needs a CUDA GPU"),
])
def test_gpu_attention_refused_on_a_cpu_in_one_line(attn, expected):
    with pytest.raises(ClinpeftError) as err:
        check_attention(attn, torch.float32)
    assert "\n" not in str(err.value) and str(err.value).startswith(expected) and "use sdpa" in str(err.value)
    check_attention("sdpa", torch.float32)
    check_attention("eager", torch.bfloat16)


@no_cuda
def test_fused_loss_and_compile_without_a_compiler_refused_in_one_line(monkeypatch):
    with pytest.raises(ClinpeftError, match="^train.fused_loss needs a CUDA GPU"):
        trainer.check_kernels(load_config(PretrainConfig, None, ["train.fused_loss=true"]).train)
    monkeypatch.setattr("shutil.which", lambda *args, **kwargs: None)  # no g++, no c++, no $CXX
    with pytest.raises(ClinpeftError, match="^train.compile on a CPU needs a C[+][+] compiler"):
        trainer.check_kernels(load_config(PretrainConfig, None, ["train.compile=true"]).train)
    trainer.check_kernels(load_config(PretrainConfig).train)


@no_cuda
@pytest.mark.parametrize("command, extra, setting, expected", [
    ("pretrain", ["configs/demo/pretrain_lora.yaml", "data.paths=[/nonexistent/notes.csv]"],
     "model.attn_implementation=flash_attention_2", "error: model.attn_implementation=flash_attention_2 needs"),
    ("pretrain", ["configs/demo/pretrain_lora.yaml", "data.paths=[/nonexistent/notes.csv]"],
     "train.fused_loss=true", "error: train.fused_loss needs a CUDA GPU"),
    ("finetune", ["configs/demo/finetune_lora.yaml", "task.path=/nonexistent/task"],
     "model.attn_implementation=flex_attention", "error: model.attn_implementation=flex_attention needs"),
])
def test_cli_stops_before_reading_data_or_creating_the_run(command, extra, setting, expected, tmp_path, capsys):
    """The data paths do not exist: the error is the option's, so nothing was read before it."""
    out = tmp_path / "run"
    assert main([command, *extra, setting, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(expected)
    assert not out.exists()


@pytest.mark.slow
def test_compiled_training_follows_the_uncompiled_loss_curve(tiny_llama, synthetic_corpus, tmp_path):
    """train.compile=true (inductor; ~20 s of compilation here) trains the same model: the same loss at every
    step and the same test perplexity to float rounding. Scoring runs the uncompiled model."""
    runs = {}
    for compiled in (False, True):
        overrides = pretrain_overrides(tiny_llama, synthetic_corpus) + [
            "train.logging_steps=1", "peft.lora_dropout=0", "eval.base_model=false", f"train.compile={compiled}"]
        out = tmp_path / f"compile-{compiled}"
        pretrain.main(load_config(PretrainConfig, None, overrides), out, progress=False)
        runs[compiled] = json.loads((out / "run.json").read_text())
    curves = {compiled: [point["loss"] for point in run["loss_curve"]] for compiled, run in runs.items()}
    assert len(curves[True]) == len(curves[False]) == 4
    # measured: 1e-6 apart (the Trainer logs 4 decimals); inductor reorders float sums
    np.testing.assert_allclose(curves[True], curves[False], rtol=1e-4)
    assert runs[True]["test_ppl"] == pytest.approx(runs[False]["test_ppl"], rel=1e-4)
    assert runs[True]["kernels"] == {"attn_implementation": "sdpa", "compile": True, "fused_loss": False}

