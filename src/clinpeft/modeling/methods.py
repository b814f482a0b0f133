"""The registry: every PEFT method of pretraining (Table 2) and every fine-tuning variant (Table 3).

One entry per method and per variant says everything the rest of clinpeft needs to know about it:
config validation (`config.py`), adapter building and stacking (`modeling/adapters.py`), the
sweep's search spaces, the reports' row names and order all read these tables. Adding a method or
a variant is one entry here (plus its config keys in `config.PeftSection` and a builder below).

A LoRA flavour (DoRA, rsLoRA) is not a method: it is a flag of peft's `LoraConfig` kept on the LoRA
sections (`config.LoraSection`), so the clinical and the downstream LoRA both get it; `LORA_KEYS`
lists the keys passed through to `LoraConfig`.

Pure data and small functions: no torch or peft import at module level (`config.py` reads it,
and `clinpeft --help` must not load torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# peft's LoraConfig arguments kept on every LoRA section, under peft's own names.
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_dora", "use_rslora")
# LoRA flavours: the flag, and how Table 2/3 name a LoRA trained with it.
LORA_FLAVOURS = {"use_dora": "DoRA", "use_rslora": "rsLoRA"}


@dataclass(frozen=True)
class PeftMethod:
    """A domain-adaptive-pretraining method (`peft.method`)."""

    name: str  # the peft.method value
    table2_name: str  # Table 2 row, as in the paper
    keys: tuple[str, ...]  # the peft.* keys it reads (others must stay at their defaults)
    build: Callable | None  # (PeftSection, tokenizer_path) -> peft config; None: trains the model itself
    # why it cannot train on packed blocks (None: it packs); pretraining falls back to one note per row
    packing_fallback: str | None = None
    prompt_learning: bool = False  # peft prepends virtual tokens: classifiers pad on the left
    # the clinical_* variants it can carry downstream (a full model: through Variant.on_full_model)
    clinical_variants: tuple[str, ...] = ()
    refusal: str | None = None  # why it cannot be used downstream at all (None: it can)


@dataclass(frozen=True)
class Variant:
    """A downstream fine-tuning variant (`variant`): one row under each base model in Table 3."""

    name: str
    table3_row: str | None  # the row's name under its base model (None: the base model's own row)
    clinical: str | None = None  # None, "frozen" or "trainable": the clinical adapter under it
    downstream_lora: bool = False  # a new LoRA is trained (lora.* configures it)
    trains_base: bool = False  # every weight of the base model trains (saved whole)
    # on a full clinical model (a new base model, not an adapter) this variant becomes that plain one
    on_full_model: str | None = None

    @property
    def needs_clinical(self) -> bool:
        return self.clinical is not None

    @property
    def trains_clinical(self) -> bool:
        return self.clinical == "trainable"


def _lora(section, tokenizer_path=None, task_type: str | None = "CAUSAL_LM"):
    from peft import LoraConfig

    return LoraConfig(**{key: _copy(getattr(section, key)) for key in LORA_KEYS}, task_type=task_type)


def _copy(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _prefix_tuning(section, tokenizer_path=None):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=section.num_virtual_tokens,
                              prefix_projection=section.prefix_projection,
                              encoder_hidden_size=section.encoder_hidden_size)


def _prompt_tuning(section, tokenizer_path=None):
    from peft import PromptTuningConfig

    from clinpeft.errors import ClinpeftError

    from_text = section.prompt_tuning_init == "TEXT"
    if from_text and tokenizer_path is None:
        raise ClinpeftError("peft.prompt_tuning_init=TEXT needs the base model's tokenizer; "
                            "set peft.prompt_tuning_init=RANDOM")
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=section.num_virtual_tokens,
                              prompt_tuning_init=section.prompt_tuning_init,
                              prompt_tuning_init_text=section.prompt_tuning_init_text if from_text else None,
                              tokenizer_name_or_path=str(tokenizer_path) if from_text else None)


def _p_tuning(section, tokenizer_path=None):
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=section.num_virtual_tokens,
                               encoder_reparameterization_type=section.encoder_reparameterization_type,
                               encoder_hidden_size=section.encoder_hidden_size,
                               encoder_num_layers=section.encoder_num_layers,
                               encoder_dropout=section.encoder_dropout)


def _adaption_prompt(section, tokenizer_path=None):
    from peft import AdaptionPromptConfig

    return AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=section.adapter_len,
                                adapter_layers=section.adapter_layers)


_PROMPT_PACKING = ("{} prepends its virtual tokens once per row and peft drops position_ids, "
                   "so packed notes would share one prompt and attend to each other")
_HEAD_ONLY = ("clinical_frozen", "clinical_trainable")  # a non-LoRA adapter cannot be active beside a LoRA

# Table 2's rows, in the paper's order. Packing: LoRA, adaption_prompt and full pack exactly
# (adaption_prompt's prompt is attended by every token whatever its position, and its queries take
# the packed position ids); tests/test_methods.py shows the others' packed logits differ.
METHODS: dict[str, PeftMethod] = {m.name: m for m in (
    PeftMethod("lora", "LoRA", LORA_KEYS, _lora,
               clinical_variants=("clinical_frozen", "clinical_frozen+downstream",
                                  "clinical_trainable", "clinical_trainable+downstream")),
    PeftMethod("adaption_prompt", "Adaptation Prompt", ("adapter_len", "adapter_layers"), _adaption_prompt,
               clinical_variants=_HEAD_ONLY),
    PeftMethod("prefix_tuning", "Prefix Tuning", ("num_virtual_tokens", "prefix_projection", "encoder_hidden_size"),
               _prefix_tuning, prompt_learning=True,
               packing_fallback="prefix tuning hands its prefix to the model as a KV cache, and transformers "
                                "builds the per-note attention mask of packed blocks only without a cache, so "
                                "packed notes would attend to each other",
               refusal="cannot classify with transformers 5.x (peft passes the prefix as past_key_values, an "
                       "argument LlamaForSequenceClassification no longer has); fine-tune on a clinical adapter of "
                       "another method (lora, adaption_prompt, prompt_tuning, p_tuning)"),
    PeftMethod("prompt_tuning", "Prompt Tuning",
               ("num_virtual_tokens", "prompt_tuning_init", "prompt_tuning_init_text"), _prompt_tuning,
               prompt_learning=True, packing_fallback=_PROMPT_PACKING.format("prompt tuning"),
               clinical_variants=_HEAD_ONLY),
    PeftMethod("p_tuning", "P-tuning",
               ("num_virtual_tokens", "encoder_reparameterization_type", "encoder_hidden_size",
                "encoder_num_layers", "encoder_dropout"), _p_tuning,
               prompt_learning=True, packing_fallback=_PROMPT_PACKING.format("p-tuning"),
               clinical_variants=_HEAD_ONLY),
    PeftMethod("full", "Full fine-tuning", (), None,
               clinical_variants=("clinical_frozen", "clinical_frozen+downstream")),
)}
# Spellings of a method found in older run directories, and the Table 2 name they get.
METHOD_ALIASES = {"adaptation_prompt": "adaption_prompt"}

# Table 3's rows under each base model, in the paper's order.
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("head", None),
    Variant("lora", "+ LoRA", downstream_lora=True),
    Variant("clinical_frozen", "+ Clinical LoRA (Frozen)", clinical="frozen", on_full_model="head"),
    Variant("clinical_frozen+downstream", "+ Clinical LoRA (Frozen) + Downstream LoRA", clinical="frozen",
            downstream_lora=True, on_full_model="lora"),
    Variant("clinical_trainable", "+ Clinical LoRA (Trainable)", clinical="trainable"),
    Variant("clinical_trainable+downstream", "+ Clinical LoRA (Trainable) + Downstream LoRA", clinical="trainable",
            downstream_lora=True),
    Variant("full", "+ Full fine-tuning", trains_base=True),
)}

METHOD_NAMES = tuple(METHODS)
VARIANT_NAMES = tuple(VARIANTS)
LORA_VARIANTS = tuple(v.name for v in VARIANTS.values() if v.downstream_lora)  # those that read `lora.*`


def method(name: str) -> PeftMethod:
    """The registry entry of a peft.method (ClinpeftError naming the known ones if there is none)."""
    entry = METHODS.get(METHOD_ALIASES.get(name, name))
    if entry is None:
        from clinpeft.errors import ClinpeftError

        raise ClinpeftError(f"unknown PEFT method {name!r}; known: {', '.join(METHODS)}")
    return entry


def variant(name: str) -> Variant:
    """The registry entry of a fine-tuning variant."""
    entry = VARIANTS.get(name)
    if entry is None:
        from clinpeft.errors import ClinpeftError

        raise ClinpeftError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return entry


def method_display_name(name, flavours: list[str] | tuple[str, ...] = ()) -> str:
    """Table 2 name of a method key ("lora" -> "LoRA"; with flavour "use_dora": "DoRA"); unknown keys
    are shown as given (an old or foreign run directory)."""
    key = str(name or "").strip()
    entry = METHODS.get(METHOD_ALIASES.get(key.lower(), key.lower()))
    if entry is None:
        return key or "?"
    if entry.name == "lora" and flavours:
        return " + ".join(LORA_FLAVOURS[f] for f in flavours if f in LORA_FLAVOURS) or entry.table2_name
    return entry.table2_name


def lora_flavours(section) -> list[str]:
    """The LoRA flavour flags set on a LoRA section (e.g. ["use_dora"]), for run.json / metrics.json."""
    return [flag for flag in LORA_FLAVOURS if getattr(section, flag, False)]


def _rank(order: list[str], name: str) -> tuple:
    return (order.index(name), "") if name in order else (len(order), name.lower())


def method_rank(display_name: str) -> tuple:
    """Sort key of a Table 2 row by its method's display name: the paper's order, unknown names last."""
    return _rank([m.table2_name for m in METHODS.values()], display_name)


def variant_rank(name: str) -> tuple:
    """Sort key of a Table 3 variant: the paper's row order, unknown variants last."""
    return _rank(list(VARIANTS), name)
