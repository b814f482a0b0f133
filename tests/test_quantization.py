"""QLoRA (`model.quantization`): the bitsandbytes config of each setting, and a clean refusal without a GPU.

The quantized training itself needs CUDA and bitsandbytes: `benchmarks/qlora_gpu.py` runs it on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from clinpeft.cli import main
from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.base import check_quantization, quantization_config

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def test_4bit_is_nf4_with_double_quantization_and_bf16_compute():
    config = quantization_config("4bit")
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.llm_int8_skip_modules is None  # causal LM: transformers keeps lm_head unquantized itself


def test_8bit_is_llm_int8():
    config = quantization_config("8bit")
    assert config.load_in_8bit and not config.load_in_4bit
    assert config.llm_int8_threshold == 6.0  # LLM.int8()'s outlier threshold


def test_classifier_head_stays_in_full_precision():
    assert quantization_config("4bit", skip_modules=["score", "classifier"]).llm_int8_skip_modules == [
        "score", "classifier"]


def test_none_builds_no_config_and_needs_nothing():
    assert quantization_config("none") is None
    check_quantization("none")


def test_config_key_is_validated_before_any_work():
    assert load_config(PretrainConfig, None, ["model.quantization=4bit"]).model.quantization == "4bit"
    assert load_config(FinetuneConfig, None, ["model.quantization=8bit"]).model.quantization == "8bit"
    with pytest.raises(ClinpeftError, match="model.quantization"):
        load_config(PretrainConfig, None, ["model.quantization=3bit"])
    with pytest.raises(ClinpeftError, match="quantized weights cannot be trained"):
        load_config(PretrainConfig, None, ["model.quantization=4bit", "peft.method=full"])
    with pytest.raises(ClinpeftError, match="quantized weights cannot be trained"):
        load_config(FinetuneConfig, None, ["model.quantization=4bit", "variant=full"])


@no_cuda
@pytest.mark.parametrize("setting", ["4bit", "8bit"])
def test_refused_without_cuda_in_one_line(setting):
    with pytest.raises(ClinpeftError) as err:
        check_quantization(setting)
    message = str(err.value)
    assert "\n" not in message and f"model.quantization={setting} needs a CUDA GPU and bitsandbytes" in message


@no_cuda
@pytest.mark.parametrize("command, extra", [
    ("pretrain", ["configs/demo/pretrain_lora.yaml", "data.paths=[/nonexistent/notes.csv]"]),
    ("finetune", ["configs/demo/finetune_clinical.yaml", "task.path=/nonexistent/task",
                  "variant=clinical_frozen+downstream", "clinical_adapter=/nonexistent/run"]),
])
def test_cli_stops_before_reading_data_or_creating_the_run(command, extra, tmp_path, capsys):
    """The data paths do not exist: the error is the GPU's, so nothing was read before it."""
    out = tmp_path / "run"
    assert main([command, *extra, "model.quantization=4bit", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: model.quantization=4bit needs a CUDA GPU")
    assert not out.exists()


def _bitsandbytes() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _bitsandbytes(), reason="needs a CUDA GPU and bitsandbytes (clinpeft[gpu])")
@pytest.mark.parametrize("setting", ["4bit", "8bit"])
def test_qlora_pretrain_then_stacked_finetune_then_evaluate(setting, tiny_llama, synthetic_corpus, synthetic_tasks,
                                                            tmp_path):
    """On a GPU: a clinical LoRA trained on the quantized base, a downstream LoRA stacked on it, re-scored."""
    import json

    from clinpeft.recipes import evaluate, finetune, pretrain
    from conftest import pretrain_overrides

    config = load_config(PretrainConfig, None, pretrain_overrides(tiny_llama, synthetic_corpus)
                         + [f"model.quantization={setting}", "train.max_steps=3"])
    run = pretrain.main(config, tmp_path / "clinical", progress=False)
    assert run["trainable_params"] == 2 * 4 * (32 + 32) * 2 and run["test_ppl"] > 1
    items = {"model.base": tiny_llama, "task.path": synthetic_tasks["mor"], "task.max_seq_len": 64,
             "train.batch_size": 8, "train.grad_accum": 1, "train.max_steps": 3, "train.lr": 1e-2, "lora.r": 4,
             "variant": "clinical_trainable+downstream", "clinical_adapter": tmp_path / "clinical",
             "model.quantization": setting, "eval.bootstrap_resamples": 50}
    metrics = finetune.main(load_config(FinetuneConfig, None, [f"{k}={v}" for k, v in items.items()]),
                            tmp_path / "ft", progress=False)
    bundle = json.loads((tmp_path / "ft" / "bundle.json").read_text())
    assert bundle["quantization"] == setting and bundle["adapters"] == ["clinical", "downstream"]
    again = evaluate.main(tmp_path / "ft", synthetic_tasks["mor"] / "test.csv", tmp_path / "eval", progress=False,
                          bootstrap_resamples=0)
    assert again["eval"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-3)
