"""Sharded training (FSDP2) with two CPU processes: `torchrun --standalone --nproc_per_node 2` over gloo, the
Trainer/accelerate FSDP path of several GPUs (README "Sharded training (FSDP)").

Each sharded run is compared with one process training on the same global batch (batch 8 = 2 processes x 4):
same data order, so the loss curves, test perplexities and saved weights differ only by fp32 sums in another
order (dropout off: its random masks differ between one and two processes). Largest differences measured on the
tiny LLaMA (6 optimizer steps): losses 8e-8 relative, test perplexity 5e-8 relative, saved weights 2.2e-7
absolute (LoRA; full fine-tuning 6e-8); the tolerances below leave 4-15x of room. A run resumed from a sharded
checkpoint was bit-identical to the uninterrupted one; it is held to the same tolerances.

The one-line refusals (one process, a prompt method, a quantized base, two activation checkpointings) are fast
tests at the end.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import load_clinical_lm, pretrain_overrides
from test_distributed import LAUNCHERS, kill_all, launch, wait_for_checkpoint

# FSDP chosen by accelerate's launcher (the answers of `accelerate config`) instead of train.fsdp; the decoder
# layer as the unit needs TRANSFORMER_BASED_WRAP (accelerate's default is no auto-wrap policy)
LAUNCHERS.setdefault("accelerate-fsdp", [
    *[a for a in LAUNCHERS["accelerate"] if a != "--multi_gpu"], "--use_fsdp", "--fsdp_version", "2",
    "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "SHARDED_STATE_DICT"])

LOSS_RTOL = 1e-6  # loss per optimizer step, sharded vs one process
PPL_RTOL = 1e-6  # test perplexity
WEIGHT_ATOL = 1e-6  # every saved weight, sharded vs one process (weights of order 0.02-1)
DECODER_LAYERS = 2  # the tiny LLaMA's: each is one FSDP unit (its _no_split_modules class)


def overrides(base, corpus, method: str) -> list[str]:
    """Six optimizer steps, a logged loss and a sharded checkpoint every 2 steps, no dropout, 4 blocks per process,
    fp32 (on GPUs `auto` would train in bf16, beyond these tolerances)."""
    common = [*pretrain_overrides(base, corpus), "train.max_steps=6", "train.logging_steps=1",
              "train.checkpoint_every=2", "train.batch_size=4", "train.precision=fp32", "model.dtype=float32"]
    if method == "full":  # every weight trains: the paper's full fine-tuning row, lower rate
        return [o for o in common if not o.startswith("peft.")] + ["peft.method=full", "train.lr=1e-3"]
    return [*common, "peft.lora_dropout=0"]


def one_process(recipe: str, args: list[str], out: Path) -> dict:
    """The same run in one process with the two processes' global batch (8 blocks)."""
    from clinpeft.config import PretrainConfig, load_config
    from clinpeft.recipes import pretrain

    return pretrain.main(load_config(PretrainConfig, recipe, [*args, "train.batch_size=8"]), out, progress=False)


def saved_weights(run: Path) -> dict:
    folder = run / ("model" if (run / "model").is_dir() else "adapter")
    name = "model.safetensors" if folder.name == "model" else "adapter_model.safetensors"
    return load_file(str(folder / name))


def assert_same_run(sharded: dict, single: dict) -> None:
    assert sharded["processes"] == 2 and single["processes"] == 1
    assert sharded["optimizer_steps"] == single["optimizer_steps"] > 2
    assert [p["loss"] for p in sharded["loss_curve"]] == pytest.approx([p["loss"] for p in single["loss_curve"]],
                                                                         rel=LOSS_RTOL)
    assert sharded["test_ppl"] == pytest.approx(single["test_ppl"], rel=PPL_RTOL)
    assert sharded["test_ppl"] < sharded["base_test_ppl"]  # it trained


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= WEIGHT_ATOL, worst


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the training processes through /proc")
def test_fsdp_full_fine_tuning_equals_one_process_and_resumes(tmp_path, tiny_llama, synthetic_corpus):
    """Full fine-tuning (every weight, the memory case): the decoder layers are the FSDP units; curve, test
    perplexity and the saved model (one consolidated model/ directory) are one process's; the same run with FSDP
    chosen by `accelerate launch --use_fsdp` (accelerate config), SIGKILLed after a sharded checkpoint, resumes
    under the same command to the train.fsdp run's curve and model."""
    recipe, args = "configs/demo/pretrain_full.yaml", overrides(tiny_llama, synthetic_corpus, "full")
    launch("torchrun", "pretrain", recipe, *args, "train.fsdp=true", "--out", str(tmp_path / "fsdp"))
    sharded = json.loads((tmp_path / "fsdp" / "run.json").read_text())
    assert sharded["fsdp"]["processes"] == 2 and sharded["fsdp"]["units"]["LlamaDecoderLayer"] == DECODER_LAYERS
    single = one_process(recipe, args, tmp_path / "single")
    assert single["fsdp"] is None
    assert_same_run(sharded, single)
    # one consolidated directory, the layout of a single-process save (config, tokenizer, one safetensors file)
    assert sorted(p.name for p in (tmp_path / "fsdp" / "model").iterdir()) == \
        sorted(p.name for p in (tmp_path / "single" / "model").iterdir())
    assert_same_weights(saved_weights(tmp_path / "fsdp"), saved_weights(tmp_path / "single"))

    # pre-empted after its first sharded checkpoint (one file per process: torch.distributed.checkpoint)
    out = tmp_path / "resumed"
    killed = launch("accelerate-fsdp", "pretrain", recipe, *args, "--out", str(out), wait=False)
    wait_for_checkpoint(killed, out)
    checkpoint = next(Path(f"{out}.partial").glob("checkpoints/checkpoint-*"))
    assert list(checkpoint.glob("pytorch_model_fsdp_0/*.distcp")), sorted(p.name for p in checkpoint.iterdir())
    kill_all(killed)
    launch("accelerate-fsdp", "pretrain", recipe, *args, "--out", str(out))
    resumed = json.loads((out / "run.json").read_text())
    assert resumed["fsdp"] == sharded["fsdp"]  # the same units
    assert 2 <= resumed["resumed_from_step"] < resumed["optimizer_steps"] == sharded["optimizer_steps"]
    assert [p["loss"] for p in resumed["loss_curve"]] == pytest.approx([p["loss"] for p in sharded["loss_curve"]],
                                                                         rel=LOSS_RTOL)
    assert resumed["test_ppl"] == pytest.approx(sharded["test_ppl"], rel=PPL_RTOL)
    assert_same_weights(saved_weights(out), saved_weights(tmp_path / "fsdp"))


@pytest.mark.slow
def test_fsdp_lora_pretraining_and_stacked_fine_tuning(tmp_path, tiny_llama, synthetic_corpus, synthetic_tasks):
    """LoRA pretraining under FSDP (frozen base and LoRA weights in the same decoder-layer unit) equals one
    process, adapter included (loads as any clinical adapter: same logits); fine-tuning clinical frozen +
    downstream LoRA under FSDP (with FSDP's activation checkpointing, which wraps each layer) leaves the clinical
    adapter bit-identical, trains the downstream one, and the bundle scores the test notes again to the same
    test AUROC."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import clinpeft
    from clinpeft.recipes import evaluate, export

    recipe, args = "configs/demo/pretrain_lora.yaml", overrides(tiny_llama, synthetic_corpus, "lora")
    launch("torchrun", "pretrain", recipe, *args, "train.fsdp=true", "--out", str(tmp_path / "clinical"))
    sharded = json.loads((tmp_path / "clinical" / "run.json").read_text())
    assert sharded["fsdp"]["units"]["LlamaDecoderLayer"] == DECODER_LAYERS
    single = one_process(recipe, args, tmp_path / "single")
    assert_same_run(sharded, single)
    assert_same_weights(saved_weights(tmp_path / "clinical"), saved_weights(tmp_path / "single"))
    ids = torch.arange(2, 40).reshape(2, 19)
    with torch.no_grad():
        logits = [load_clinical_lm(tmp_path / run)(input_ids=ids).logits for run in ("clinical", "single")]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-5)

    task = synthetic_tasks["mor"]
    out = tmp_path / "mor"
    launch("torchrun", "finetune", "configs/demo/finetune_clinical.yaml", f"model.base={tiny_llama}",
           f"clinical_adapter={tmp_path / 'clinical'}", "variant=clinical_frozen+downstream", f"task.path={task}",
           "model.pooling=last",  # what an exported transformers classifier reads
           "task.max_seq_len=64", "train.batch_size=8", "train.grad_accum=1", "train.epochs=1", "lora.lora_dropout=0",
           "eval.bootstrap_resamples=0", "train.precision=fp32", "model.dtype=float32", "train.fsdp=true",
           "train.fsdp_config.activation_checkpointing=true", "--out", str(out))  # FSDP's own: layers wrapped
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fsdp"]["units"]["LlamaDecoderLayer"] == DECODER_LAYERS
    assert metrics["optimizer_steps"] == math.ceil(metrics["n_train"] / (8 * 2))
    clinical = saved_weights(tmp_path / "clinical")
    kept = load_file(str(out / "adapters/clinical/adapter_model.safetensors"))
    assert clinical.keys() == kept.keys() and all(torch.equal(clinical[k], kept[k]) for k in clinical)
    downstream = load_file(str(out / "adapters/downstream/adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in downstream.items())  # B starts at 0
    again = evaluate.main(out, task / "test.csv", tmp_path / "eval", progress=False, bootstrap_resamples=0)
    assert again["eval"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-9)
    # predict (Python API) and export read the bundle as any other: the run's test probabilities, merged logits
    test = pd.read_csv(task / "test.csv", dtype={"id": str})
    saved = pd.read_csv(out / "predictions.csv", dtype={"id": str})
    probs = clinpeft.load(out).predict(test["text"].tolist())
    np.testing.assert_allclose(probs, saved[[c for c in saved.columns if c.startswith("p_")]], atol=1e-5)
    export.main(out, tmp_path / "exported", progress=False)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "exported")
    with torch.no_grad():
        logits = merged(**tokenizer(test["text"].tolist()[:1], truncation=True, max_length=64,
                                    return_tensors="pt")).logits
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), probs[:1], atol=1e-4)


@pytest.mark.parametrize("setting, world, message", [
    (["peft.method=lora"], "1", "train.fsdp shards a model over several processes and this is one"),
    (["peft.method=prompt_tuning"], "2", "train.fsdp with the prompt_tuning adapter"),
    (["peft.method=lora", "model.quantization=4bit"], "2", "train.fsdp with model.quantization=4bit"),
    (["peft.method=lora", "train.gradient_checkpointing=true", "train.fsdp_config.activation_checkpointing=true"],
     "2", "train.gradient_checkpointing and train.fsdp_config.activation_checkpointing are both on"),
])
def test_fsdp_settings_that_cannot_run_fail_in_one_line(monkeypatch, setting, world, message):
    from clinpeft.config import PretrainConfig, load_config
    from clinpeft.errors import ClinpeftError
    from clinpeft.training.trainer import check_sharding

    monkeypatch.setenv("WORLD_SIZE", world)
    config = load_config(PretrainConfig, None, ["train.fsdp=true", *setting])
    with pytest.raises(ClinpeftError, match=message) as error:
        check_sharding(config.train, config.peft.method, config.model.quantization)
    assert "\n" not in str(error.value)
    check_sharding(config.train.model_copy(update={"fsdp": False}), config.peft.method, config.model.quantization)


def test_fsdp_config_uses_transformers_names():
    """train.fsdp_config reaches TrainingArguments as its fsdp_config: FSDP2, the decoder layer from the model
    (no class named unless the recipe names one), sharded checkpoints."""
    from clinpeft.config import PretrainConfig, load_config
    from clinpeft.training.trainer import fsdp_flags

    config = load_config(PretrainConfig, None, ["train.fsdp=true"])
    assert fsdp_flags(config.train) == {"fsdp": True, "fsdp_config": {
        "version": 2, "reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT", "cpu_offload": False,
        "cpu_ram_efficient_loading": False, "activation_checkpointing": False}}
    named = load_config(PretrainConfig, None, ["train.fsdp=true",
                                               "train.fsdp_config.transformer_layer_cls_to_wrap=[X]"])
    assert fsdp_flags(named.train)["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["X"]
    assert fsdp_flags(load_config(PretrainConfig, None, []).train) == {}
