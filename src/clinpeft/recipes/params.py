"""`clinpeft params`: trainable parameters of a pretraining recipe, without weights (Table 2's column).

    clinpeft params llama-7b configs/llama-7b/pretrain_lora.yaml            # 8,388,608 (8.4M), 0.12%
    clinpeft params /models/llama-7b configs/llama-7b/pretrain_p_tuning.yaml --json

The model is built on PyTorch's meta device (`accelerate.init_empty_weights`: shapes only, no
weights, no memory), the recipe's PEFT method is applied with peft itself, and the parameters are
counted exactly as `clinpeft pretrain` counts them (`modeling.base.count_parameters`). So a 7B or
13B count takes a second on a laptop, and a recipe can be checked against the paper's Table 2
before a GPU is booked.

MODEL is a local model directory (only its config.json is read), "demo", or an architecture
preset (`ARCHITECTURES`): the published shapes of LLaMA 1/2, Llama 3.x, Qwen2.5, Mistral and
Gemma 3 (text), for when no checkpoint is at hand.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from clinpeft.bases import resolve_base
from clinpeft.config import PretrainConfig
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.adapters import add_pretraining_adapter
from clinpeft.modeling.base import count_parameters
from clinpeft.reporting.tables import format_params, format_percent


def _llama3_rope(factor: float) -> dict:
    """Llama 3.1/3.2's RoPE scaling (config.json `rope_scaling`), under transformers 5's name."""
    return {"rope_type": "llama3", "rope_theta": 500000.0, "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


# Architecture presets: (transformers config class, fields copied from each model's published config.json).
# Totals (tests/test_params.py) checked against the model cards: LLaMA 7B 6.74B, 13B 13.0B (Touvron et al.
# 2023); Llama 2 7B 6.74B, 13B 13.0B; Llama 3.1 8B 8.03B; Llama 3.2 1B 1.24B, 3B 3.21B (tied embeddings);
# Qwen2.5 7B 7.61B; Mistral 7B v0.3 7.25B; Gemma 3 4B: 3.88B, its *text* model only (the hub checkpoint is
# multimodal: + a 417M SigLIP vision encoder = 4.3B; clinpeft fine-tunes the text model, Gemma3ForCausalLM).
ARCHITECTURES = {
    "llama-7b": ("LlamaConfig", dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
        tie_word_embeddings=False)),
    "llama-13b": ("LlamaConfig", dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
        tie_word_embeddings=False)),
    "llama-2-7b": ("LlamaConfig", dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
        tie_word_embeddings=False)),
    "llama-2-13b": ("LlamaConfig", dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
        tie_word_embeddings=False)),
    "llama-3.1-8b": ("LlamaConfig", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters=_llama3_rope(8.0), tie_word_embeddings=False)),
    "llama-3.2-1b": ("LlamaConfig", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters=_llama3_rope(32.0), tie_word_embeddings=True)),
    "llama-3.2-3b": ("LlamaConfig", dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters=_llama3_rope(32.0), tie_word_embeddings=True)),
    "qwen2.5-7b": ("Qwen2Config", dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, max_position_embeddings=131072, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False)),
    "mistral-7b-v0.3": ("MistralConfig", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=32768, max_position_embeddings=32768, rms_norm_eps=1e-5,
        sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False)),
    "gemma-3-4b": ("Gemma3TextConfig", dict(  # text_config of google/gemma-3-4b-pt
        hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=262208, max_position_embeddings=131072, rms_norm_eps=1e-6,
        query_pre_attn_scalar=256, sliding_window=1024, tie_word_embeddings=True,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
}


def model_config(model: str):
    """A preset name or a local model directory -> its transformers config (no weights read)."""
    import transformers
    from transformers import AutoConfig

    if model in ARCHITECTURES:
        class_name, fields = ARCHITECTURES[model]
        return getattr(transformers, class_name)(**fields)
    if model != "demo" and not (Path(model).expanduser() / "config.json").is_file():
        raise ClinpeftError(f"model {model}: no such preset, and not a directory with a config.json; "
                            f"use a local model directory or one of the presets {', '.join(ARCHITECTURES)}")
    return AutoConfig.from_pretrained(resolve_base(model, progress=False))


def count(model: str, config: PretrainConfig) -> dict:
    """{"trainable_params", "total_params", "percent"} of `config.peft` applied to `model`.

    Prompt tuning is counted with random initialisation: text initialisation only changes the
    starting values (and needs a tokenizer, which a preset does not have), not the count. So is a
    data-driven init_lora_weights (eva, corda, lora_ga: no notes here); EVA then moves rank between
    layers within the same r x modules budget (the count is exact where the targets share a shape).
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    section = config.peft
    if section.method == "prompt_tuning":
        section = section.model_copy(update={"prompt_tuning_init": "RANDOM"})
    if section.method == "lora" and section.init_lora_weights in ("eva", "corda", "lora_ga"):
        section = section.model_copy(update={"init_lora_weights": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes about meta tensors and unused options
        with init_empty_weights():
            model_lm = AutoModelForCausalLM.from_config(model_config(model))
        # tied lm_head/embeddings (Llama 3.2, Gemma 3, Qwen3 0.6B): init_empty_weights leaves them two
        # parameters, and tie_weights cannot tie them inside it
        model_lm.tie_weights()
        with init_empty_weights():
            model_lm = add_pretraining_adapter(model_lm, section)
    trainable, total = count_parameters(model_lm)
    return {"trainable_params": trainable, "total_params": total, "percent": 100.0 * trainable / total}


def main(model: str, config: PretrainConfig) -> dict:
    """count(), with the model and the method it counted (for the summary line)."""
    return {"model": model, "method": config.peft.method, **count(model, config)}


def summary(result: dict, out: str | Path | None = None, *, as_json: bool = False) -> list[str]:
    """One line: Table 2's digits, or (as_json) the counts as one JSON object."""
    trainable, total = result["trainable_params"], result["total_params"]
    if as_json:
        return [json.dumps({"trainable_params": trainable, "total_params": total, "percent": result["percent"]})]
    return [f"{result['model']} + {result['method']}: trainable params: {trainable:,} ({format_params(trainable)}) "
            f"|| total params: {total:,} ({format_params(total)}) || trainable: {format_percent(result['percent'])}"]
