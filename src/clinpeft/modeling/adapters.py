"""PEFT adapters: the clinical adapter of step 1, and stacking it with a downstream LoRA in step 2.

Adapter names used throughout:
- "clinical": the domain-adaptive-pretraining adapter (Clinical LLaMA-LoRA);
- "downstream": the task LoRA of step 2 (Downstream LLaMA-LoRA).

The classification head is not given to peft's `modules_to_save`: with two adapters, exactly one
may own it and `set_adapter([...])` fails otherwise, and some adapter types do not save it at
all. We unfreeze and save the head ourselves (`head.safetensors`), the same way for every variant.

peft pitfalls handled here (each shown by a test in tests/test_finetune*.py): \
`PeftModel.set_adapter` takes one name, so two active
adapters go through `model.base_model.set_adapter([...])`, which also makes both trainable; we
set `requires_grad` explicitly afterwards. A CAUSAL_LM adapter loads onto a classifier only with
`task_type=None`.

Clinical adapters of the other Table 2 methods, downstream:
- adaption_prompt loads like a LoRA (task_type=None); it has no `modules_to_save`, which does not
  matter here since we save the head ourselves.
- prompt_tuning / p_tuning only prepend their virtual tokens in peft's task wrapper, so they are
  loaded as SEQ_CLS (which wraps the head in a ModulesToSaveWrapper: the copy it trains is the
  head, see `head_module`). peft loads prompt adapters frozen only, and saves p-tuning's *output*
  embeddings, not its MLP/LSTM encoder: "trainable" therefore trains those embeddings directly.
  The classifier pools the last position of `inputs_embeds`, so these need left padding.
- prefix_tuning cannot classify with transformers 5.x (LlamaForSequenceClassification has no
  `past_key_values` argument any more, which peft needs for the prefix): refused.
- A downstream LoRA cannot be stacked on a non-LoRA clinical adapter: peft cannot make adapters
  of two types active in one model. Refused, with the variants that do work.
- `full` is not an adapter but a whole clinical model (the paper's "Clinical LLaMA"): it becomes
  the base model of the run (`full_model_variant`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import load_peft_weights

from clinpeft import methods
from clinpeft.config import LoraSection, PeftSection
from clinpeft.errors import ClinpeftError
from clinpeft.modeling import lora_init

CLINICAL = "clinical"
DOWNSTREAM = "downstream"
ADAPTER_META = "clinpeft_adapter.json"  # written beside adapter_config.json (or a full model's config.json)

def lora_config(section: LoraSection, task_type: str | None):
    """peft's LoraConfig of a LoRA section (clinical or downstream), every key under peft's own name."""
    return methods.METHODS["lora"].build(section, task_type=task_type)


def pretraining_peft_config(section: PeftSection, tokenizer_path: str | Path | None = None):
    """The peft config of a domain-adaptive-pretraining method (peft's own parameter names).

    `tokenizer_path`: the base model's directory, for prompt tuning's text initialisation.
    """
    entry = methods.method(section.method)
    if entry.build is None:
        raise ClinpeftError(f"peft.method={section.method} trains the model itself; it has no peft config")
    return entry.build(section, tokenizer_path)


def linear_module_names(model) -> list[str]:
    """The distinct last names of the model's linear layers (q_proj, k_proj, ..., down_proj), heads excluded:
    what a LoRA's target_modules may name. Under a peft wrapper, a LoRA-wrapped layer counts by its own name
    (`q_proj.base_layer` -> q_proj; lora_A/lora_B are not targets). bitsandbytes' Linear4bit/Linear8bitLt
    are nn.Linear subclasses."""
    names = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if not isinstance(module, torch.nn.Linear) or any(p.startswith("lora_") for p in parts):
            continue
        if parts[-1] == "base_layer" and len(parts) > 1:
            parts = parts[:-1]
        if parts[-1] not in ("lm_head", "score", "classifier", ""):
            names.add(parts[-1])
    return sorted(names)


def check_target_modules(model, targets, key: str) -> None:
    """One line naming the missing target and the model's linear module names, before peft fails deeper.

    Every architecture clinpeft tests (LLaMA 1-3, Qwen2/3, Mistral, Gemma 3) has the paper's q_proj/v_proj."""
    if isinstance(targets, str):  # a peft regex: peft itself checks it
        return
    names = linear_module_names(model)
    missing = [t for t in targets if t not in names]
    if missing:
        raise ClinpeftError(f"{key}: {', '.join(missing)} not in {type(model).__name__}; its linear modules "
                            f"are {', '.join(names)}; set {key} to some of these "
                            "(LLaMA-family: [q_proj,v_proj], BERT: [query,value])")


def add_pretraining_adapter(model, section: PeftSection, tokenizer_path: str | Path | None = None,
                            init_batches: list[dict] | None = None):
    """Wrap a causal LM with a fresh trainable clinical adapter (the only trainable weights).

    `full` returns the model itself with every parameter trainable (the paper's Clinical LLaMA).
    `init_batches`: calibration batches of the training notes for a data-driven `init_lora_weights`
    (eva, corda, lora_ga: modeling/lora_init.py).
    """
    if section.method == "full":
        for param in model.parameters():
            param.requires_grad = True
        return model
    layers = getattr(model.config, "num_hidden_layers", None)
    if section.method == "adaption_prompt" and layers is not None and section.adapter_layers > layers:
        raise ClinpeftError(f"peft.adapter_layers={section.adapter_layers}: {type(model).__name__} has only "
                            f"{layers} layers; set peft.adapter_layers to at most {layers}")
    if section.method == "lora":
        check_target_modules(model, section.target_modules, "peft.target_modules")
    config = pretraining_peft_config(section, tokenizer_path)
    try:
        if section.method == "lora":
            lora_init.before_adapter(model, config, init_batches)  # corda, lora_ga: statistics of the base
        model = get_peft_model(model, config)
        if section.method == "lora":
            lora_init.after_adapter(model, config, init_batches)  # eva: A from the layers' inputs
        return model
    except ValueError as exc:  # e.g. target_modules not in this architecture
        raise ClinpeftError(f"peft: cannot add {section.method} to {type(model).__name__}: {exc}") from None


def packing_fallback(method: str) -> str | None:
    """Why `method` cannot train on packed blocks (None: it can)."""
    return methods.method(method).packing_fallback


def write_adapter_meta(adapter_dir: Path, base_fingerprint: str, base_model: str, method: str,
                       base_spec: str | None = None) -> None:
    """clinpeft's note beside a clinical adapter: the base it was trained on (folder, fingerprint, and
    `base_spec`: the model.base as written, so a dequantized GGUF base can be rebuilt where the folder is gone)."""
    meta = {"base_fingerprint": base_fingerprint, "base_model": base_model, "method": method, "base_spec": base_spec}
    (Path(adapter_dir) / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n")


@dataclass
class ClinicalAdapter:
    path: Path  # folder with adapter_config.json + adapter_model.safetensors (full: a model directory)
    base_fingerprint: str | None  # of the base model it was trained on
    base_model: str | None
    method: str  # a peft.method of pretraining
    base_spec: str | None = None  # model.base as written at pretraining (a named base, a .gguf file, a folder)


def find_clinical_adapter(location: str | Path) -> ClinicalAdapter:
    """A pretrain run directory, or its adapter/ (or, for `full`, model/) folder -> what to load."""
    location = Path(location)
    for candidate in (location / "adapter", location):
        if (candidate / "adapter_config.json").is_file():
            meta = _read_meta(candidate)
            peft_type = PeftConfig.from_pretrained(candidate).peft_type
            return ClinicalAdapter(
                path=candidate,
                base_fingerprint=meta.get("base_fingerprint"),
                base_model=meta.get("base_model"),
                method=meta.get("method", str(getattr(peft_type, "value", peft_type)).lower()),
                base_spec=meta.get("base_spec"),
            )
    for candidate in (location / "model", location):
        meta = _read_meta(candidate)
        if meta.get("method") == "full" and (candidate / "config.json").is_file():
            return ClinicalAdapter(candidate, meta.get("base_fingerprint"), meta.get("base_model"), "full")
    raise ClinpeftError(
        f"clinical_adapter {location}: no adapter_config.json (or full model) in it or in its adapter/ folder; "
        "pass the directory written by `clinpeft pretrain --out`"
    )


def _read_meta(folder: Path) -> dict:
    meta_file = folder / ADAPTER_META
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def check_variant(adapter: ClinicalAdapter, variant: str) -> None:
    """Refuse, before any work, a variant that cannot be built on this kind of clinical adapter."""
    where = f"clinical_adapter {adapter.path}"
    entry = methods.method(adapter.method)
    if entry.refusal:
        raise ClinpeftError(f"{where} is a {adapter.method} adapter, which {entry.refusal}")
    if variant in entry.clinical_variants:
        return
    if adapter.method == "full":
        raise ClinpeftError(
            f"{where} is a full clinical model, not an adapter: variant {variant} would fine-tune all of its "
            "weights; use variant=clinical_frozen (head only, Table 3's 'Clinical LLaMA' row) or "
            "clinical_frozen+downstream (a downstream LoRA on it)"
        )
    if methods.variant(variant).downstream_lora:
        raise ClinpeftError(
            f"{where} is a {adapter.method} adapter: peft cannot make a downstream LoRA and a {adapter.method} "
            f"adapter active in one model, so variant {variant} is not possible; use variant="
            f"{variant.removesuffix('+downstream')} with it, or pretrain a LoRA clinical adapter (peft.method=lora)"
        )
    raise ClinpeftError(f"{where}: variant {variant} does not use a clinical adapter; "
                        f"use one of {', '.join(entry.clinical_variants)}")


def full_model_variant(variant: str) -> str:
    """The plain variant a clinical_* variant becomes on a full clinical model (Variant.on_full_model)."""
    return methods.variant(variant).on_full_model


def padding_side(adapter: ClinicalAdapter | None) -> str:
    """Prompt methods feed the classifier `inputs_embeds`; it then pools the last position, so pad left."""
    return "left" if adapter is not None and methods.method(adapter.method).prompt_learning else "right"


def check_same_base(adapter: ClinicalAdapter, fingerprint: str, base: str) -> None:
    if adapter.base_fingerprint and adapter.base_fingerprint != fingerprint:
        raise ClinpeftError(
            f"clinical_adapter {adapter.path} was trained on base model {adapter.base_model} "
            f"(fingerprint {adapter.base_fingerprint}), not on {base} (fingerprint {fingerprint}); "
            "set model.base to the model it was trained on, or pretrain a clinical adapter for this one"
        )


def attach_adapter(model, adapter_dir: Path, name: str, trainable: bool = True):
    """Put a saved adapter (any method but prefix tuning) on a classifier, under `name`.

    LoRA and adaption_prompt: task_type=None (a CAUSAL_LM config would make peft build a causal-LM
    wrapper around a classification model). Prompt methods: peft's SEQ_CLS wrapper, the only one
    that prepends their virtual tokens; `inference_mode` so that the saved embeddings are used as
    they are (peft saves p-tuning's encoder output, not the encoder), and loaded by hand because
    peft's loader expects the head in the file and refuses prompt adapters as trainable.
    `requires_grad` is set by `set_trainable` afterwards.
    """
    config = PeftConfig.from_pretrained(adapter_dir)
    if not config.is_prompt_learning:
        config.task_type = None
        config.inference_mode = False
        if isinstance(model, PeftModel):
            model.load_adapter(adapter_dir, adapter_name=name, peft_config=config, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, adapter_dir, adapter_name=name, config=config, is_trainable=trainable)
    if config.peft_type == "PREFIX_TUNING" or isinstance(model, PeftModel):
        raise ClinpeftError(f"{adapter_dir}: a {config.peft_type} adapter cannot be put on this classifier")
    config.task_type = "SEQ_CLS"
    config.inference_mode = True
    if getattr(config, "prompt_tuning_init", None) is not None:
        config.prompt_tuning_init = "RANDOM"  # overwritten below; TEXT would reload the tokenizer
    model = get_peft_model(model, config, adapter_name=name)
    with torch.no_grad():
        model.prompt_encoder[name].embedding.weight.copy_(load_peft_weights(str(adapter_dir))["prompt_embeddings"])
    return model


def stack_adapters(model, variant: str, clinical: ClinicalAdapter | None, downstream: LoraSection,
                   init_batches: list[dict] | None = None):
    """Build the model of one Table 3 variant. Returns (model, active adapter names).

    init_batches: calibration batches of the training notes (input_ids, attention_mask) for a data-driven
    `lora.init_lora_weights` (eva)."""
    active: list[str] = []
    entry = methods.variant(variant)
    if entry.needs_clinical:
        if clinical is None:
            raise ClinpeftError(f"variant {variant} needs clinical_adapter=<pretrain run dir>")
        check_variant(clinical, variant)
        model = attach_adapter(model, clinical.path, CLINICAL)
        active.append(CLINICAL)
    if entry.downstream_lora:
        check_target_modules(model, downstream.target_modules, "lora.target_modules")
        check_downstream_init(downstream)
        config = lora_config(downstream, task_type=None)
        if isinstance(model, PeftModel):
            with lora_init.base_mutation_handled():  # pissa/olora beside the clinical LoRA: saved converted
                model.add_adapter(DOWNSTREAM, config)  # added inactive and frozen: activated below
        else:
            model = get_peft_model(model, config, adapter_name=DOWNSTREAM)
        lora_init.after_adapter(model, config, init_batches, adapter_name=DOWNSTREAM)  # eva
        active.append(DOWNSTREAM)
    if len(active) > 1:
        model.base_model.set_adapter(active)  # PeftModel.set_adapter takes one name only
    elif active:
        model.set_adapter(active[0])
    return model, active


def check_downstream_init(section: LoraSection) -> None:
    """The downstream LoRA's init_lora_weights, refused where it cannot work (FinetuneConfig checks it first)."""
    entry = lora_init.init_entry(section)
    if entry is not None and entry.downstream_refusal:
        raise ClinpeftError(f"lora.init_lora_weights={section.init_lora_weights}: {entry.downstream_refusal}")


def trainable_adapters(variant: str) -> list[str]:
    """The adapters a variant trains (the head always trains)."""
    entry = methods.variant(variant)
    return [name for name, trains in ((CLINICAL, entry.trains_clinical), (DOWNSTREAM, entry.downstream_lora)) if trains]


def is_adapter_param(name: str, adapter: str) -> bool:
    """Whether parameter `name` belongs to adapter `adapter`, for every method we load downstream.

    LoRA: `...q_proj.lora_A.<adapter>.weight`; prompt methods: `prompt_encoder.<adapter>.embedding.weight`;
    adaption_prompt: `...self_attn.adaption_prompt` / `adaption_gate` (no adapter name in the path: one
    model holds at most one adaption_prompt adapter here, the clinical one).
    """
    if ".lora_" in name:
        return f".{adapter}." in name
    if name.startswith("prompt_encoder."):
        return name.startswith(f"prompt_encoder.{adapter}.")
    return adapter == CLINICAL and (".adaption_prompt" in name or ".adaption_gate" in name)


def clinical_parameters(model) -> list:
    """The clinical adapter's trainable parameters (empty unless the variant trains it): train.clinical_lr's group."""
    return [param for name, param in model.named_parameters()
            if param.requires_grad and is_adapter_param(name, CLINICAL)]


def set_trainable(model, adapters: list[str], head_name: str) -> None:
    """Freeze everything, then unfreeze the listed adapters and the classification head.

    Done by hand, after all adapters are in place, because `set_adapter([...])` marks every
    active adapter trainable, including a clinical adapter meant to stay frozen. Under peft's
    SEQ_CLS wrapper (prompt methods) the head is `<head>.modules_to_save.<adapter>`, a copy;
    `<head>.original_module` is not used in the forward pass and stays frozen.
    """
    for name, param in model.named_parameters():
        in_head = ((f".{head_name}." in f".{name}" or name.startswith(f"{head_name}."))
                   and ".original_module." not in name)
        param.requires_grad = in_head or any(is_adapter_param(name, a) for a in adapters)
    for module in model.modules():  # weights peft keeps frozen by design (MiCA's lora_B) stay frozen
        for adapter, weights in (getattr(module, "frozen_peft_weight_names", None) or {}).items():
            for weight in weights:
                if adapter in getattr(module, weight, {}):
                    for param in getattr(module, weight)[adapter].parameters():
                        param.requires_grad = False


def head_module(model, head_name: str) -> torch.nn.Module:
    """The classification head the forward pass uses (unwrapping peft's ModulesToSaveWrapper)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(inner, head_name)
    copies = getattr(head, "modules_to_save", None)
    if isinstance(copies, torch.nn.ModuleDict) and len(copies) > 0:
        return copies[head.active_adapters[0]]
    return head
