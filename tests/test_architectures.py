"""Today's LLaMA-family shapes: Llama 3 (GQA, tied / untied), Qwen2, Qwen3, Mistral, Gemma 3 (text).

Each is a tiny random-init model (hidden 32, 2 layers) built from its own transformers config class,
with a tokenizer that has no pad token and its own end-of-text token (and BOS or none, as the real
one). For each: packed logits equal per-note logits (the notes kept apart by position ids), the
packing separator is the model's end-of-text token, and pretrain (packed) -> finetune (stacked,
frozen and trainable) -> evaluate runs through the recipes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.data.packing import tokenize_and_pack
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.base import load_causal_lm, load_tokenizer
from conftest import TOKENIZER_TEXT, pretrain_overrides

# special tokens of each family's *base* tokenizer: (bos or None, eos, unk or None); none has a pad token
SPECIALS = {
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>", None),
    "llama3-tied": ("<|begin_of_text|>", "<|end_of_text|>", None),
    "qwen2": (None, "<|endoftext|>", None),
    "qwen3": (None, "<|endoftext|>", None),
    "mistral": ("<s>", "</s>", "<unk>"),
    "gemma3": ("<bos>", "<eos>", "<unk>"),
}
ARCHS = list(SPECIALS)
SLOW = {"qwen3", "mistral", "llama3-tied"}  # same code paths as llama3 / qwen2: the end-to-end run is slow


def build_tokenizer(arch: str):
    """A byte-level BPE tokenizer with the family's special tokens, no pad token, BOS added when the family does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos, unk = SPECIALS[arch]
    specials = [t for t in (unk, bos, eos) if t] + ["<|extra_0|>"]  # eos not at id 2 for every family
    if arch.startswith("qwen"):
        specials = ["<|extra_0|>", *specials]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TOKENIZER_TEXT, trainer=trainer)
    if bos:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                                               special_tokens=[(bos, backend.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk,
                                        clean_up_tokenization_spaces=False)
    assert tokenizer.pad_token is None
    return tokenizer


def arch_config(arch: str, tokenizer):
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=None, max_position_embeddings=512)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)  # grouped-query attention: 2 query heads per key/value head
    if arch.startswith("llama3"):
        from transformers import LlamaConfig

        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        return LlamaConfig(**shape, **ids, rope_parameters=rope, tie_word_embeddings=arch == "llama3-tied")
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**shape, **ids, tie_word_embeddings=False)  # bias on q/k/v
    if arch == "qwen3":
        from transformers import Qwen3Config

        # q/k RMSNorm; head_dim 16, not hidden / heads
        return Qwen3Config(**shape, **ids, head_dim=16, tie_word_embeddings=True)
    if arch == "mistral":
        from transformers import MistralConfig

        return MistralConfig(**shape, **ids, sliding_window=None, tie_word_embeddings=False)  # v0.3: no window
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        # local sliding-window layer then a global one; a window shorter than the notes so it matters
        return Gemma3TextConfig(**shape, **ids, head_dim=8, query_pre_attn_scalar=8, sliding_window=6,
                                layer_types=["sliding_attention", "full_attention"])
    raise ValueError(arch)


def build_model(arch: str, path: Path, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer(arch)
    config = arch_config(arch, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def arch_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arch-models")
    return {arch: build_model(arch, root / arch) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_gets_eos_as_pad_and_keeps_its_end_of_text(arch, arch_models):
    tokenizer = load_tokenizer(arch_models[arch])
    bos, eos, _ = SPECIALS[arch]
    assert tokenizer.eos_token == eos and tokenizer.pad_token == eos
    assert tokenizer.bos_token == bos
    notes = ["BP 128/76.", "Pt s/p CABG."]
    [row] = tokenize_and_pack({"text": notes}, tokenizer, "text", block_size=64)["input_ids"]
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    first, second = (tokenizer(n, add_special_tokens=False)["input_ids"] for n in notes)
    start = [tokenizer.convert_tokens_to_ids(bos)] if bos else []  # Qwen: no BOS, notes start with their text
    used = 2 * len(start) + len(first) + len(second) + 2
    assert row[:used] == start + first + [eos_id] + start + second + [eos_id]  # each note ends with end-of-text
    assert row[used:] == [eos_id] * (64 - used)  # padding: EOS reused (label -100)


def _segments(tokenizer, notes):
    return [([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else [])
            + tokenizer(n, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for n in notes]


def test_eos_from_generation_config_when_the_tokenizer_has_none(arch_models, tmp_path):
    """A tokenizer saved without eos_token: the end-of-text id comes from generation_config.json (first of a list)."""
    import shutil

    path = shutil.copytree(arch_models["llama3"], tmp_path / "m")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("eos_token", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    eos_id = build_tokenizer("llama3").convert_tokens_to_ids("<|end_of_text|>")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos_id, eos_id + 1]}))
    tokenizer = load_tokenizer(path)
    assert tokenizer.eos_token == "<|end_of_text|>" and tokenizer.pad_token_id == eos_id


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_logits_equal_each_notes_own_logits(arch, attn, arch_models):
    """Gemma 3's sliding window (6 tokens, shorter than the notes) and query scalar included: transformers
    builds the block-diagonal mask from the position-id restarts for sliding layers too."""
    tokenizer = load_tokenizer(arch_models[arch])
    model = load_causal_lm(arch_models[arch], "float32", attn).eval()
    notes = ["Chief complaint: shortness of breath.", "BP 128/76 HR 88 RR 18.", "Pt s/p CABG, hx CHF, HTN."]
    blocks = tokenize_and_pack({"text": notes}, tokenizer, "text", block_size=128)
    assert len(blocks["input_ids"]) == 1
    with torch.no_grad():
        packed = model(input_ids=torch.tensor(blocks["input_ids"]),
                       position_ids=torch.tensor(blocks["position_ids"])).logits[0]
        start = 0
        for own_ids in _segments(tokenizer, notes):
            assert len(own_ids) > 6
            own = model(input_ids=torch.tensor([own_ids])).logits[0]
            torch.testing.assert_close(packed[start : start + len(own_ids)], own, atol=1e-5, rtol=1e-5)
            start += len(own_ids)


def test_missing_target_module_names_the_models_linear_modules(arch_models, synthetic_corpus, tmp_path):
    from clinpeft.recipes import pretrain

    config = load_config(PretrainConfig, None, pretrain_overrides(arch_models["qwen2"], synthetic_corpus)
                         + ["peft.target_modules=[q_proj,c_attn]"])
    with pytest.raises(ClinpeftError) as err:
        pretrain.main(config, tmp_path / "run", progress=False)
    message = str(err.value)
    assert "\n" not in message and "c_attn not in" in message
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in message
    assert not (tmp_path / "run").exists()


def finetune_overrides(base, task_dir, clinical, variant):
    items = {"model.base": base, "task.path": task_dir, "task.max_seq_len": 64, "train.batch_size": 8,
             "train.grad_accum": 1, "train.max_steps": 2, "train.lr": 1e-2, "lora.r": 4, "variant": variant,
             "clinical_adapter": clinical, "eval.bootstrap_resamples": 50}
    return [f"{k}={v}" for k, v in items.items()]


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in ARCHS])
def test_pretrain_finetune_evaluate(arch, arch_models, synthetic_corpus, synthetic_tasks, tmp_path):
    """pretrain (packed) -> finetune frozen and trainable stacked -> evaluate reproduces the test predictions."""
    import pandas as pd

    from clinpeft.recipes import evaluate, finetune, pretrain

    base = arch_models[arch]
    config = load_config(PretrainConfig, None, pretrain_overrides(base, synthetic_corpus) + ["train.max_steps=2"])
    run = pretrain.main(config, tmp_path / "clinical", progress=False)
    assert run["packing"] is True and run["test_ppl"] < run["base_test_ppl"] * 1.5
    shape = json.loads((base / "config.json").read_text())
    head_dim = shape.get("head_dim") or 32 // 4
    # r4 on q (32 -> heads x head_dim) and v (32 -> kv heads x head_dim: narrower under GQA), in 2 layers
    assert run["trainable_params"] == 2 * 4 * ((32 + 4 * head_dim) + (32 + 2 * head_dim))
    for variant in ("clinical_frozen+downstream", "clinical_trainable+downstream"):
        out = tmp_path / variant
        metrics = finetune.main(load_config(FinetuneConfig, None, finetune_overrides(
            base, synthetic_tasks["mor"], tmp_path / "clinical", variant)), out, progress=False)
        assert 0.0 <= metrics["test"]["auroc"] <= 1.0
        bundle = json.loads((out / "bundle.json").read_text())
        assert bundle["adapters"] == ["clinical", "downstream"]
    again = evaluate.main(out, synthetic_tasks["mor"] / "test.csv", tmp_path / "eval", progress=False,
                          bootstrap_resamples=0)
    assert again["eval"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
    original, rescored = pd.read_csv(out / "predictions.csv"), pd.read_csv(tmp_path / "eval" / "predictions.csv")
    columns = [c for c in original.columns if c.startswith("p_")]
    assert columns and list(rescored["predicted"]) == list(original["predicted"])
    assert (rescored[columns] - original[columns]).abs().to_numpy().max() < 1e-5


def test_cpu_recipes_are_valid_and_target_modules_small_models_have():
    """configs/cpu/: SmolLM2-135M (Llama) and Qwen2.5-0.5B (Qwen2) shapes name q_proj / v_proj."""
    from clinpeft.config import BUNDLED_CONFIGS

    cpu = BUNDLED_CONFIGS / "cpu"
    for name in ("pretrain_lora.yaml", "pretrain_lora_qwen2.5-0.5b.yaml"):
        config = load_config(PretrainConfig, cpu / name)
        assert config.peft.target_modules == ["q_proj", "v_proj"] and config.model.dtype == "float32"
    finetune_config = load_config(FinetuneConfig, cpu / "finetune_clinical.yaml")
    assert finetune_config.variant == "clinical_trainable+downstream"
