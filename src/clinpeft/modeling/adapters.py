"""PEFT adapters: the clinical adapter of step 1, and stacking it with a downstream LoRA in step 2.

Adapter names used throughout:
- "clinical": the domain-adaptive-pretraining adapter (Clinical LLaMA-LoRA);
- "downstream": the task LoRA of step 2 (Downstream LLaMA-LoRA).

The classification head is not given to peft's `modules_to_save`: with two adapters, exactly one
may own it and `set_adapter([...])` fails otherwise, and some adapter types do not save it at
all. We unfreeze and save the head ourselves (`head.safetensors`), the same way for every variant.

peft pitfalls handled here (DESIGN.md 5): `PeftModel.set_adapter` takes one name, so two active
adapters go through `model.base_model.set_adapter([...])`, which also makes both trainable; we
set `requires_grad` explicitly afterwards. A CAUSAL_LM adapter loads onto a classifier only with
`task_type=None`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model

from clinpeft.config import LoraSection, PeftSection
from clinpeft.errors import ClinpeftError

CLINICAL = "clinical"
DOWNSTREAM = "downstream"
ADAPTER_META = "clinpeft_adapter.json"  # written beside adapter_config.json


def lora_config(section: LoraSection, task_type: str | None) -> LoraConfig:
    return LoraConfig(
        r=section.r,
        lora_alpha=section.lora_alpha,
        lora_dropout=section.lora_dropout,
        target_modules=list(section.target_modules),
        bias=section.bias,
        task_type=task_type,
    )


def pretraining_peft_config(section: PeftSection):
    """The peft config of a domain-adaptive-pretraining method (peft's own parameter names)."""
    if section.method == "lora":
        return lora_config(section, task_type="CAUSAL_LM")
    raise ClinpeftError(f"peft.method: {section.method!r} is not supported; use lora")


def add_pretraining_adapter(model, section: PeftSection):
    """Wrap a causal LM with a fresh trainable clinical adapter (the only trainable weights)."""
    try:
        return get_peft_model(model, pretraining_peft_config(section))
    except ValueError as exc:  # e.g. target_modules not in this architecture
        raise ClinpeftError(f"peft: cannot add {section.method} to {type(model).__name__}: {exc}") from None


def write_adapter_meta(adapter_dir: Path, base_fingerprint: str, base_model: str, method: str) -> None:
    meta = {"base_fingerprint": base_fingerprint, "base_model": base_model, "method": method}
    (Path(adapter_dir) / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n")


@dataclass
class ClinicalAdapter:
    path: Path  # folder with adapter_config.json + adapter_model.safetensors
    base_fingerprint: str | None
    base_model: str | None
    method: str


def find_clinical_adapter(location: str | Path) -> ClinicalAdapter:
    """A pretrain run directory, or its adapter folder -> the adapter to load."""
    location = Path(location)
    for candidate in (location / "adapter", location):
        if (candidate / "adapter_config.json").is_file():
            meta_file = candidate / ADAPTER_META
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
            peft_type = PeftConfig.from_pretrained(candidate).peft_type
            return ClinicalAdapter(
                path=candidate,
                base_fingerprint=meta.get("base_fingerprint"),
                base_model=meta.get("base_model"),
                method=meta.get("method", str(peft_type).lower()),
            )
    raise ClinpeftError(
        f"clinical_adapter {location}: no adapter_config.json in it or in its adapter/ folder; "
        "pass the directory written by `clinpeft pretrain --out`"
    )


def check_same_base(adapter: ClinicalAdapter, fingerprint: str, base: str) -> None:
    if adapter.base_fingerprint and adapter.base_fingerprint != fingerprint:
        raise ClinpeftError(
            f"clinical_adapter {adapter.path} was trained on base model {adapter.base_model} "
            f"(fingerprint {adapter.base_fingerprint}), not on {base} (fingerprint {fingerprint}); "
            "set model.base to the model it was trained on, or pretrain a clinical adapter for this one"
        )


def load_clinical_adapter(model, adapter: ClinicalAdapter):
    """Put the clinical adapter on a classifier. task_type=None: a CAUSAL_LM adapter config
    would make peft build a causal-LM wrapper around a classification model."""
    if adapter.method != "lora":
        raise ClinpeftError(f"clinical_adapter {adapter.path}: {adapter.method} adapters cannot be stacked yet; use a LoRA")
    config = PeftConfig.from_pretrained(adapter.path)
    config.task_type = None
    config.inference_mode = False
    return PeftModel.from_pretrained(model, adapter.path, adapter_name=CLINICAL, config=config, is_trainable=True)


def stack_adapters(model, variant: str, clinical: ClinicalAdapter | None, downstream: LoraSection):
    """Build the model of one Table 3 variant. Returns (model, active adapter names)."""
    active: list[str] = []
    if variant.startswith("clinical"):
        if clinical is None:
            raise ClinpeftError(f"variant {variant} needs clinical_adapter=<pretrain run dir>")
        model = load_clinical_adapter(model, clinical)
        active.append(CLINICAL)
    if variant == "lora" or variant.endswith("+downstream"):
        config = lora_config(downstream, task_type=None)
        if isinstance(model, PeftModel):
            model.add_adapter(DOWNSTREAM, config)  # added inactive and frozen: activated below
        else:
            model = get_peft_model(model, config, adapter_name=DOWNSTREAM)
        active.append(DOWNSTREAM)
    if len(active) > 1:
        model.base_model.set_adapter(active)  # PeftModel.set_adapter takes one name only
    elif active:
        model.set_adapter(active[0])
    return model, active


def trainable_adapters(variant: str) -> list[str]:
    """The adapters a variant trains (the head always trains)."""
    names = []
    if variant.startswith("clinical_trainable"):
        names.append(CLINICAL)
    if variant == "lora" or variant.endswith("+downstream"):
        names.append(DOWNSTREAM)
    return names


def is_adapter_param(name: str, adapter: str) -> bool:
    """LoRA weights are named `...q_proj.lora_A.<adapter>.weight`."""
    return f".{adapter}." in name and ".lora_" in name


def set_trainable(model, adapters: list[str], head_name: str) -> None:
    """Freeze everything, then unfreeze the listed adapters and the classification head.

    Done by hand, after all adapters are in place, because `set_adapter([...])` marks every
    active adapter trainable, including a clinical adapter meant to stay frozen.
    """
    for name, param in model.named_parameters():
        in_head = f".{head_name}." in f".{name}" or name.startswith(f"{head_name}.")
        param.requires_grad = in_head or any(is_adapter_param(name, a) for a in adapters)
