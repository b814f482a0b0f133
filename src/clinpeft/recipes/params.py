"""`clinpeft params`: trainable parameters of a pretraining recipe, without weights (Table 2's column).

    clinpeft params llama-7b configs/llama-7b/pretrain_lora.yaml            # 8,388,608 (8.4M), 0.12%
    clinpeft params /models/llama-7b configs/llama-7b/pretrain_p_tuning.yaml --json

The model is built on PyTorch's meta device (`accelerate.init_empty_weights`: shapes only, no
weights, no memory), the recipe's PEFT method is applied with peft itself, and the parameters are
counted exactly as `clinpeft pretrain` counts them (`modeling.base.count_parameters`). So a 7B or
13B count takes a second on a laptop, and a recipe can be checked against the paper's Table 2
before a GPU is booked.

MODEL is a local model directory (only its config.json is read), "demo", or an architecture
preset (`ARCHITECTURES`): the published LLaMA hyperparameters, for when no checkpoint is at hand.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from clinpeft.config import PretrainConfig
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.adapters import add_pretraining_adapter
from clinpeft.modeling.base import count_parameters, resolve_base
from clinpeft.reporting.tables import format_params, format_percent

# LLaMA (Touvron et al. 2023, Table 2) as transformers' LlamaConfig fields. 7B: 6,738,415,616 parameters.
ARCHITECTURES = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6),
    "llama-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                      num_key_value_heads=40, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6),
}


def model_config(model: str):
    """A preset name or a local model directory -> its transformers config (no weights read)."""
    from transformers import AutoConfig, LlamaConfig

    if model in ARCHITECTURES:
        return LlamaConfig(**ARCHITECTURES[model], tie_word_embeddings=False)
    if model != "demo" and not (Path(model).expanduser() / "config.json").is_file():
        raise ClinpeftError(f"model {model}: no such preset, and not a directory with a config.json; "
                            f"use a local model directory or one of the presets {', '.join(ARCHITECTURES)}")
    return AutoConfig.from_pretrained(resolve_base(model, progress=False))


def count(model: str, config: PretrainConfig) -> dict:
    """{"trainable_params", "total_params", "percent"} of `config.peft` applied to `model`.

    Prompt tuning is counted with random initialisation: text initialisation only changes the
    starting values (and needs a tokenizer, which a preset does not have), not the count.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    section = config.peft
    if section.method == "prompt_tuning":
        section = section.model_copy(update={"prompt_tuning_init": "RANDOM"})
    with init_empty_weights(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes about meta tensors and unused options
        model_lm = AutoModelForCausalLM.from_config(model_config(model))
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
