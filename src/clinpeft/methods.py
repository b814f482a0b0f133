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
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_dora", "use_rslora", "init_lora_weights")
# LoRA flavours: the flag, and how Table 2/3 name a LoRA trained with it.
LORA_FLAVOURS = {"use_dora": "DoRA", "use_rslora": "rsLoRA"}


@dataclass(frozen=True)
class LoraInit:
    """A value of peft's `init_lora_weights` (config.LoraSection.init_lora_weights): how A and B start."""

    name: str  # the init_lora_weights value ("pissa"; "pissa_niter_N" matches "pissa_niter")
    table_name: str  # appended to the method's Table 2 name: "LoRA (PiSSA)"
    # calibration batches from the run's own training notes are needed (modeling/lora_init.py)
    needs_data: bool = False
    # the base weights are changed (W_res = W - s B0 A0): the saved adapter is converted to a plain LoRA of
    # rank 2r on the original base (peft's path_initial_model_for_weight_conversion)
    mutates_base: bool = False
    refusal: str | None = None  # why it cannot be used here (None: it can)
    requires: str | None = None  # a module peft imports for it that clinpeft does not install
    downstream_refusal: str | None = None  # why the downstream LoRA (lora.init_lora_weights) cannot use it


# peft 0.21's LoRA initialisations, each one entry (orthogonal / False: peft's, not exposed here).
LORA_INITS: dict[str, LoraInit] = {i.name: i for i in (
    LoraInit("gaussian", "Gaussian"),  # A ~ N(0, 1/r), B = 0 (Microsoft's is Kaiming-uniform A)
    LoraInit("pissa", "PiSSA", mutates_base=True),  # A, B: the top-r singular vectors of W (exact SVD)
    LoraInit("pissa_niter", "PiSSA", mutates_base=True),  # pissa_niter_N: fast randomized SVD, N subspace iterations
    LoraInit("olora", "OLoRA", mutates_base=True),  # A, B: from the QR decomposition of W
    LoraInit("eva", "EVA", needs_data=True),  # A: top right-singular vectors of the layer inputs; ranks redistributed
    # SVD of W times the input covariance; peft's corda.py imports the attrs package
    LoraInit("corda", "CorDA", needs_data=True, mutates_base=True, requires="attr",
             downstream_refusal="peft's preprocess_corda does not see layers a clinical LoRA already wraps; use it "
                                "on the clinical LoRA (peft.init_lora_weights=corda)"),
    # A, B: SVD of the estimated full gradient
    LoraInit("lora_ga", "LoRA-GA", needs_data=True, mutates_base=True,
             downstream_refusal="LoRA-GA estimates the task loss's gradient before training, through a "
                                "classification head that is still random then, and peft's preprocess_loraga does "
                                "not see layers a clinical LoRA already wraps; use it on the clinical LoRA "
                                "(peft.init_lora_weights=lora_ga), or pissa/olora/eva here"),
    LoraInit("mica", "MiCA"),  # B: the r minor left-singular vectors of W (frozen), A = 0: only A trains
    LoraInit("loftq", "LoftQ", refusal="LoftQ initialises the LoRA against a quantized copy of the base and replaces "
                                       "the base weights with it, so its adapter is only valid on that re-saved base; "
                                       "clinpeft loads its base unchanged (QLoRA: model.quantization=4bit with the "
                                       "default init)"),
)}


def lora_init(value) -> LoraInit | None:
    """The registry entry of an init_lora_weights value (None: peft's default, True)."""
    if value is True or value in ("true", "default"):
        return None
    key = "pissa_niter" if str(value).startswith("pissa_niter_") else str(value)
    entry = LORA_INITS.get(key)
    if entry is None:
        from clinpeft.errors import ClinpeftError

        usable = [n if n != "pissa_niter" else "pissa_niter_N" for n, i in LORA_INITS.items() if not i.refusal]
        raise ClinpeftError(f"init_lora_weights={value}: choose one of true, {', '.join(usable)}")
    return entry


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

    return LoraConfig(**{key: _copy(getattr(section, key)) for key in LORA_KEYS}, task_type=task_type,
                      **_init_subconfig(section.init_lora_weights))


def _init_subconfig(init) -> dict:
    """The sub-config a data-driven init needs, at peft's defaults (stated here so peft does not warn)."""
    from peft import EvaConfig, LoraGAConfig

    if init == "corda":
        from peft.tuners.lora.config import CordaConfig

        return {"corda_config": CordaConfig()}  # ipm: instruction-previewed, the adapter learns the task
    return {"eva": {"eva_config": EvaConfig()},  # rho 2: a layer may get up to 2r of the budget
            "lora_ga": {"lora_ga_config": LoraGAConfig()}}.get(init, {})


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


def method_display_name(name, flavours: list[str] | tuple[str, ...] = (), init=None) -> str:
    """Table 2 name of a method key ("lora" -> "LoRA"; with flavour "use_dora": "DoRA"; with
    init_lora_weights "pissa": "LoRA (PiSSA)"); unknown keys are shown as given (an old or foreign run directory)."""
    key = str(name or "").strip()
    entry = METHODS.get(METHOD_ALIASES.get(key.lower(), key.lower()))
    if entry is None:
        return key or "?"
    if entry.name != "lora":
        return entry.table2_name
    shown = " + ".join(LORA_FLAVOURS[f] for f in flavours if f in LORA_FLAVOURS) or entry.table2_name
    known = init not in (None, True, "true", "default") and LORA_INITS.get(
        "pissa_niter" if str(init).startswith("pissa_niter_") else str(init))
    return f"{shown} ({known.table_name})" if known else shown


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
