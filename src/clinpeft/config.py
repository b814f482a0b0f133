"""Typed configs: a YAML recipe plus `key=value` overrides, validated before any work starts.

    clinpeft pretrain configs/demo/pretrain_lora.yaml peft.r=8 train.lr=1e-4

Defaults are the paper's hyperparameters (Gema et al. 2023, Appendix A.1 and B.1); a recipe is a
small diff on them. Unknown keys and ill-typed values fail with a message naming the key. The
resolved config is saved as `config.yaml` in every run directory.

PEFT hyperparameters carry peft's own names (`r`, `lora_alpha`, `num_virtual_tokens`,
`encoder_hidden_size`, `adapter_len`, ...), so a recipe reads like the peft docs.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clinpeft.errors import ClinpeftError
from clinpeft.files import read_yaml, yaml_error
from clinpeft.methods import METHOD_NAMES, METHODS, VARIANT_NAMES, lora_init
from clinpeft.run_files import CONFIG

# Table 3's fine-tuning variants and Table 2's pretraining methods: methods.py says what each does.
Variant = Literal[VARIANT_NAMES]  # type: ignore[valid-type]
PeftMethod = Literal[METHOD_NAMES]  # type: ignore[valid-type]


# Ranges live in the types (issue 26: validation at the boundary, once): every number of every section has
# one, so a value out of range is refused while the config is read, naming the key and the range, never
# deep inside numpy, pandas or torch after the work started. tests/test_fault_suite.py walks every field and
# fails when a new number has no range.
# numpy's seeds (np.random.default_rng, RandomState) are 0 .. 2**32 - 1; torch's and Python's take them too
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# a count that caps work (rows, documents, blocks): None is "no cap"; 0 or negative would silently drop data
# (pandas' head(-1) drops the last row)
Cap = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are re-validated, and no float
    may be inf or NaN (`train.epochs=.inf` would train forever; NaN passes every comparison)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(Section):
    # local directory of a HF causal LM or BERT-family encoder (config.json + safetensors), "demo" or "demo-bert"
    base: str = "demo"
    name: str | None = None  # display name in the reports (Table 3 row); default: the base model's directory name
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPUs with bf16, else fp32
    # Attention kernel (README "Attention and kernels"). Each keeps packed notes apart by the position-id
    # restarts: sdpa and eager as a block-diagonal mask over the whole block, flex_attention as a block
    # mask that skips the blocks of other notes, flash_attention_2 as variable-length sequences (varlen,
    # no mask at all). flash_attention_2: a CUDA GPU, flash-attn and bf16/fp16; flex_attention: a CUDA GPU
    # (PyTorch has no CPU backward for it). Saved runs are scored with sdpa on any machine.
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2"] = "sdpa"
    # QLoRA: the frozen base model loaded quantized by bitsandbytes (needs a CUDA GPU and clinpeft[gpu]).
    # 4bit: NF4 + double quantization, bf16 compute (~0.55 bytes/weight: an 8B base in ~5.5 GB); 8bit:
    # LLM.int8() (~1 byte/weight). Adapters and the head train in full precision on top of it.
    quantization: Literal["none", "4bit", "8bit"] = "none"


class ClassifierModelSection(ModelSection):
    """`model:` of a fine-tuning recipe: the base model plus how a decoder's head reads the note
    (pretraining has no head, so `model.pooling` there is an unknown key, not a silent no-op)."""

    # What a LLaMA-family classifier's head `score` reads. last: the last non-pad token (the paper's
    # and transformers' default); mean: the mean of the final hidden states over the note's tokens
    # (attention_mask == 1; prompt methods' virtual tokens excluded). Encoders pool [CLS]: last only.
    pooling: Literal["last", "mean"] = "last"


class LoraSection(Section):
    """LoRA hyperparameters under peft's names. 7B defaults give the paper's 8.4M trainable params."""

    r: int = Field(16, ge=1)  # rank; params = r * (d_in + d_out) per target module
    lora_alpha: int = Field(32, ge=1)  # scale = lora_alpha / r
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "v_proj"]
    bias: Literal["none", "all", "lora_only"] = "none"
    # LoRA flavours (peft's flags; methods.LORA_FLAVOURS). DoRA: the weight split into a
    # magnitude (one trainable value per output unit) and a LoRA-updated direction (Liu et al. 2024).
    use_dora: bool = False
    # rsLoRA: scale lora_alpha / sqrt(r) instead of lora_alpha / r, stable at large ranks (Kalajdzievski 2023)
    use_rslora: bool = False
    # How A and B start (peft's values; methods.LORA_INITS, README "LoRA initialisations"). true: peft's
    # default (Kaiming A, B = 0); gaussian; pissa / pissa_niter_N (top singular vectors of W, base keeps the rest);
    # olora (QR of W); eva (activations' top directions, ranks redistributed); corda (W x input covariance);
    # lora_ga (the full gradient's SVD); mica (minor singular vectors, B frozen). eva/corda/lora_ga read a capped,
    # seeded sample of the run's own training notes; pissa/olora/corda/lora_ga adapters are saved as plain
    # LoRAs of rank 2r on the unchanged base.
    init_lora_weights: bool | str = True

    @field_validator("init_lora_weights")
    @classmethod
    def _known_init(cls, value):
        if value is False:
            raise ValueError("false (peft's random-B debugging init) is not exposed; use true or a named init")
        try:
            entry = lora_init(value)
        except ClinpeftError as exc:
            raise ValueError(str(exc).removeprefix(f"init_lora_weights={value}: ")) from None
        if entry is not None and entry.refusal:
            raise ValueError(f"{value}: {entry.refusal}")
        if entry is not None and entry.requires and importlib.util.find_spec(entry.requires) is None:
            raise ValueError(f"{value}: peft's {entry.table_name} imports the `{entry.requires}` module, which is not "
                             f"installed here; pip install {'attrs' if entry.requires == 'attr' else entry.requires}")
        if isinstance(value, str) and value.startswith("pissa_niter_") and not value[12:].isdigit():
            raise ValueError(f"{value}: pissa_niter_N takes a whole number of subspace iterations, e.g. pissa_niter_4")
        return True if entry is None else value


# The peft.* keys each method reads; a key of another method left at its default is ignored, a
# changed one is an error (it would silently do nothing).
METHOD_FIELDS = {name: entry.keys for name, entry in METHODS.items()}


class PeftSection(LoraSection):
    """The clinical adapter of domain-adaptive pretraining. `method` picks the PEFT technique.

    One flat section under peft's own parameter names; each method reads only its own keys
    (METHOD_FIELDS). Defaults are peft's where peft has one, else the paper's Table 2 setting for
    LLaMA-7B. Search spaces (Appendix A.2): configs/search_spaces.yaml.
    """

    method: PeftMethod = "lora"
    # prefix_tuning, prompt_tuning, p_tuning: virtual tokens put before every row
    num_virtual_tokens: int = Field(20, ge=1)
    # prefix_tuning: False = the key/value prefix itself is trained (num_virtual_tokens x 2 x layers x hidden
    # params); True = it is produced by a 2-layer MLP of width encoder_hidden_size
    prefix_projection: bool = False
    # prompt_tuning: start the soft prompt from the embeddings of this text (TEXT) or at random (RANDOM)
    prompt_tuning_init: Literal["TEXT", "RANDOM"] = "TEXT"
    prompt_tuning_init_text: str = "Finish this clinical note:"  # the paper's (Appendix A.2)
    # p_tuning: the prompt encoder that produces the virtual tokens (MLP: always 2 hidden layers)
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = "MLP"
    encoder_hidden_size: int | None = Field(None, ge=1)  # None: the model's hidden size (peft's default)
    encoder_num_layers: int = Field(2, ge=1)  # LSTM layers (bidirectional); MLP ignores it
    encoder_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # between LSTM layers
    # adaption_prompt (LLaMA-Adapter): adapter_len prompt tokens in each of the top adapter_layers layers,
    # adapter_layers x (adapter_len x hidden + 1 gate) params
    adapter_len: int = Field(10, ge=1)
    adapter_layers: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _only_this_methods_keys(self) -> "PeftSection":
        own = set(METHOD_FIELDS[self.method]) | {"method"}
        changed = [name for name, field in type(self).model_fields.items()
                   if name not in own and getattr(self, name) != field.get_default(call_default_factory=True)]
        if changed:
            owners = {name: next(m for m, keys in METHOD_FIELDS.items() if name in keys) for name in changed}
            keys = ", ".join(f"peft.{name} (a {owners[name]} key)" for name in changed)
            raise ValueError(f"{keys} does nothing with peft.method={self.method}; remove it, or set peft.method "
                             f"to the method it belongs to (keys of {self.method}: "
                             f"{', '.join(METHOD_FIELDS[self.method]) or 'none'})")
        return self


class FsdpConfigSection(Section):
    """`train.fsdp_config`: the Trainer's `fsdp_config` keys (transformers' names), read only when train.fsdp is on.
    README "Sharded training (FSDP)"."""

    # FSDP2 (torch.distributed.fsdp.fully_shard, per-parameter sharding: a frozen base and LoRA weights share
    # a unit). FSDP1 is deprecated in transformers 5.x and not offered.
    version: Literal[2] = 2
    # the wrapping unit: class names of the model's decoder layer; None: the model's own `_no_split_modules`
    # (LlamaDecoderLayer, Qwen2DecoderLayer, ...)
    transformer_layer_cls_to_wrap: list[str] | None = None
    reshard_after_forward: bool = True  # free each layer's gathered weights after its forward (less memory)
    # Trainer checkpoints (resume): SHARDED_STATE_DICT, one file per process (torch.distributed.checkpoint),
    # or FULL_STATE_DICT (gathered on the main process). The run's adapter / model is always saved whole.
    state_dict_type: Literal["SHARDED_STATE_DICT", "FULL_STATE_DICT"] = "SHARDED_STATE_DICT"
    cpu_offload: bool = False  # sharded weights, gradients and optimizer state in CPU memory (GPU runs)
    cpu_ram_efficient_loading: bool = False  # the main process loads the weights, the others receive them
    activation_checkpointing: bool = False  # FSDP's own (instead of train.gradient_checkpointing)


class TrainSection(Section):
    """Optimisation, shared by both steps. Defaults: the paper's pretraining values (A.1)."""

    lr: float = Field(3e-4, gt=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)  # a fraction of optimiser steps, not a step count
    batch_size: int = Field(10, ge=1)  # per device
    grad_accum: int = Field(4, ge=1)  # optimiser step every grad_accum micro-batches
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1)  # optimiser steps; >= 1 overrides epochs, -1: train.epochs decides
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    seed: Seed = 42
    gradient_checkpointing: bool = False  # trade ~30% speed for activation memory
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: README "bf16 on CPU"
    logging_steps: int = Field(10, ge=1)
    report_to: list[str] = []  # opt-in trackers (e.g. ["tensorboard"]); none by default
    dataloader_num_workers: int = Field(0, ge=0)
    # checkpoints into OUT.partial/ (the HF Trainer's: adapter, optimizer, scheduler, RNG, data position);
    # rerunning the same command resumes from the last one. Optimizer steps between checkpoints (0: by time only)
    checkpoint_every: int = Field(0, ge=0)
    checkpoint_minutes: float = Field(30.0, ge=0)  # wall-clock minutes between checkpoints (0: by steps only)
    keep_checkpoints: int = Field(2, ge=1)  # the newest N checkpoints are kept, older ones deleted
    # CPU threads of this process (torch.set_num_threads). None: CLINPEFT_THREADS, else OMP_NUM_THREADS, else
    # the cores divided among the processes of this machine (`sweep --workers N`, `accelerate launch`)
    threads: int | None = Field(None, ge=1)
    # torch.compile the model for training (TrainingArguments.torch_compile; inductor; a C++ compiler on a
    # CPU). Off by default: on a CPU steps ran 1.07x (fp32) to 1.18x (bf16) faster once compiled, but
    # compiling (at the first step and again for an epoch's last, smaller batch) took longer than a 50-step
    # run saved (README "Attention and kernels"); not yet measured on a GPU. Scoring runs uncompiled.
    compile: bool = False
    # Fully sharded data parallel (TrainingArguments.fsdp): weights, gradients and optimizer state split over
    # the processes of `torchrun` / `accelerate launch` (CPU processes too, over gloo) instead of copied into
    # each. For runs that outgrow one device (full fine-tuning of 7B: ~16 bytes per parameter). Or choose it with
    # `accelerate config` (FSDP). peft.method lora or full; README "Sharded training (FSDP)".
    fsdp: bool = False
    fsdp_config: FsdpConfigSection = FsdpConfigSection()

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (train.epochs decides) or 1 or more optimiser steps")
        return value


class PretrainTrainSection(TrainSection):
    """Pretraining's `train:`: the shared options plus the language-model loss's kernels."""

    # Liger-Kernel's fused linear cross-entropy (the LM head and the loss in chunks, never the whole
    # tokens x vocabulary logits: most of the activation memory of a 128k-vocabulary model such as Llama 3)
    # and its RMSNorm, RoPE and SwiGLU kernels (TrainingArguments.use_liger_kernel). A CUDA GPU and
    # `pip install 'clinpeft[gpu]'`. Off by default until measured (benchmarks/gpu_check.sh).
    fused_loss: bool = False


class FinetuneTrainSection(TrainSection):
    """Downstream defaults: the paper's B.1 values."""

    lr: float = Field(5e-5, gt=0)
    grad_accum: int = Field(10, ge=1)
    epochs: float = Field(3.0, gt=0)
    # learning rate of the classification head (None: train.lr). The head is a fresh linear layer on features
    # of scale ~1 per unit; adapters move a pretrained model: a head often wants 10-100x the LoRA's rate
    head_lr: float | None = Field(None, gt=0)
    # learning rate of a trainable clinical adapter (clinical_trainable* variants; None: train.lr). It was
    # pretrained to a minimum of the language-model loss over every layer; at a downstream LoRA's rate its first
    # steps move the features the (LP-FT) head was fit on, and the loss jumps before it recovers
    clinical_lr: float | None = Field(None, gt=0)
    # how the head starts. random: transformers' init; probe: LP-FT (Kumar et al. 2022): the head is first fit
    # as a logistic regression on the frozen model's features (training/probe.py), then everything trains
    head_init: Literal["random", "probe"] = "random"


class CorpusSection(Section):
    """The pretraining corpus: CSV(.gz) / JSONL / TXT files, a directory of them, or corpora from
    `clinpeft prepare notes` (their train/test split is used as it is; test_fraction is ignored)."""

    paths: list[str] = []  # files or directories; required
    text_column: str = "text"
    patient_column: str | None = "subject_id"  # held-out split by patient when the column exists
    test_fraction: float = Field(0.1, gt=0, lt=1)
    # share of the *train* patients held out for validation (val_ppl, for sweeps); 0: no val split.
    # A second seeded hash, salted apart from the test one, so the test split never moves.
    val_fraction: float = Field(0.0, ge=0, lt=1)
    split_seed: Seed = 0  # fixed apart from train.seed so every run sees the same split
    max_seq_len: int = Field(512, ge=8)  # tokens per packed block
    # How notes fill the blocks (clinpeft/data/packing.py; README "Packing"). fill: end to end, cut at
    # block boundaries (99.6% of block positions labelled on the MIMIC-like mix; each cut adds one
    # unpredicted segment start, counted in run.json segment_starts_added); ffd: first-fit-decreasing
    # within 1,000-note windows, same predicted tokens as next_fit (86%); next_fit: in order (78%);
    # none: one note per row, padded. Old recipes' true means fill (the default), false means none.
    packing: Literal["fill", "ffd", "next_fit", "none"] = "fill"
    max_documents: Cap | None = None  # cap for quick trials

    @field_validator("packing", mode="before")
    @classmethod
    def _packing_from_bool(cls, value):
        return {True: "fill", False: "none"}.get(value, value) if isinstance(value, bool) else value
    num_proc: int = Field(1, ge=1)  # processes for tokenisation
    # raw files: a row that cannot be parsed (broken quoting, wrong field count, not JSON, NUL or non-UTF-8
    # bytes) stops the run naming its line (error), or is dropped and counted in run.json's bad_rows (skip)
    on_bad_rows: Literal["error", "skip"] = "error"


class PerplexitySection(Section):
    batch_size: int = Field(8, ge=1)
    train_max_blocks: Cap | None = 2000  # train ppl on a seeded sample of this many blocks (None: all)
    base_model: bool = True  # also measure the base model without the adapter (Table 2's first row)


class PretrainConfig(Section):
    model: ModelSection = ModelSection()
    peft: PeftSection = PeftSection()
    data: CorpusSection = CorpusSection()
    train: PretrainTrainSection = PretrainTrainSection()
    eval: PerplexitySection = PerplexitySection()

    @model_validator(mode="after")
    def _quantized_base_stays_frozen(self) -> "PretrainConfig":
        if self.model.quantization != "none" and self.peft.method == "full":
            raise ValueError(f"model.quantization={self.model.quantization} with peft.method=full: quantized "
                             "weights cannot be trained; use an adapter method (lora) or model.quantization=none")
        return self


class TaskSection(Section):
    """A task directory in van Aken's format: train/val/test.csv (id,text,label) + labels.txt."""

    path: str = ""  # required
    name: str | None = None  # default: the directory name (los, mor, pmv, diag, proc)
    kind: Literal["auto", "single_label", "multilabel"] = "auto"  # auto: multilabel if a label has a comma
    max_seq_len: int = Field(512, ge=8)  # tokens per window the model reads (special tokens included)
    max_examples: Cap | None = None  # per split, for quick trials
    # notes longer than max_seq_len (data/long_notes.py), the same in training, evaluate and predict:
    # truncate = one window (the paper's); chunks = windows over the whole note, logits pooled per note
    long_notes: Literal["truncate", "chunks"] = "truncate"
    truncate_side: Literal["right", "left"] = "right"  # which end is cut: right = the note's end, left = its start
    chunk_stride: int = Field(64, ge=0)  # tokens shared by consecutive windows (chunks); < max_seq_len
    chunk_pooling: Literal["max", "mean"] = "max"  # how the windows' logits make the note's (chunks)
    max_chunks: int = Field(16, ge=1)  # windows per note at most (chunks): cost cap, truncate_side says what is cut

    @model_validator(mode="after")
    def _stride_below_window(self) -> "TaskSection":
        if self.long_notes == "chunks" and self.chunk_stride >= self.max_seq_len:
            raise ValueError(f"task.chunk_stride={self.chunk_stride} must be below task.max_seq_len={self.max_seq_len}")
        return self


class DownstreamLoraSection(LoraSection):
    """The downstream LoRA (B.2 search space: r 2-16, alpha 4-32, dropout 0-0.2)."""

    r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)

    @field_validator("init_lora_weights")
    @classmethod
    def _usable_downstream(cls, value):
        try:
            entry = lora_init(value)
        except ClinpeftError:
            return value  # LoraSection's own check names the known values
        if entry is not None and entry.downstream_refusal:
            raise ValueError(f"{value}: {entry.downstream_refusal}")
        return value


class ClassifierEvalSection(Section):
    batch_size: int = Field(16, ge=1)
    # 95% percentile bootstrap interval of every AUROC (clinpeft/evaluation/bootstrap.py): resamples of the
    # test notes (0 = no interval) and the seed that makes it reproducible
    bootstrap_resamples: int = Field(1000, ge=0)
    bootstrap_seed: Seed = 0
    # a class (or label) with fewer positive examples than this in a split is flagged in metrics.json, on the
    # console and in Table 3: its AUROC/AUPRC rests on a handful of notes (count of notes)
    min_positives: int = Field(5, ge=1)
    # operating point of binary tasks: the threshold reaching this specificity on validation, applied to test
    # (fraction of negatives called negative)
    specificity: float = Field(0.9, gt=0.0, lt=1.0)
    # the linear probe of the run's frozen model (training/probe.py): its val/test AUROC beside the run's in
    # metrics.json and Table 3, and the guard that warns when fine-tuning ends below it. Costs one forward pass
    # over train, val and test (no backward) plus a few logistic regressions
    probe: bool = True


class FinetuneConfig(Section):
    model: ClassifierModelSection = ClassifierModelSection()
    variant: Variant = "lora"
    clinical_adapter: str | None = None  # a pretrain run directory (or its adapter/ folder)
    lora: DownstreamLoraSection = DownstreamLoraSection()
    task: TaskSection = TaskSection()
    train: FinetuneTrainSection = FinetuneTrainSection()
    eval: ClassifierEvalSection = ClassifierEvalSection()

    @model_validator(mode="after")
    def _quantized_base_stays_frozen(self) -> "FinetuneConfig":
        if self.model.quantization != "none" and self.variant == "full":
            raise ValueError(f"model.quantization={self.model.quantization} with variant=full: quantized "
                             "weights cannot be trained; use a LoRA variant or model.quantization=none")
        return self


C = TypeVar("C", bound=Section)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (["train", "lr"], 0.0001). Values are parsed as YAML (so lists work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ClinpeftError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ClinpeftError(f"override {item!r}: value is not valid YAML ({yaml_error(exc)})") from None
    return key.strip().split("."), value


def format_override(key: str, value: Any) -> str:
    """The inverse of parse_override: (key, value) -> `key=value` that reads back as the same value.

    YAML flow style, one line: 1e-05 -> `1.0e-05` (PyYAML reads a bare `1e-05` as text), a model
    named 2024 -> `'2024'` (stays text), a path with ': ' quoted, lists as `[a, b]`.
    """
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).removesuffix("\n...\n").strip()
    return f"{key}={text}"


def _check_key(cls: type[Section], path: list[str], where: str) -> None:
    """Fail early, naming the key, when `path` is not a field of `cls`."""
    section: Any = cls
    for depth, part in enumerate(path):
        fields = getattr(section, "model_fields", None)
        if fields is None or part not in fields:
            dotted = ".".join(path[: depth + 1])
            known = ", ".join(sorted(fields)) if fields else "(none: this is a value)"
            raise ClinpeftError(f"{where}: unknown config key '{dotted}'; known keys here: {known}")
        section = fields[part].annotation


def _set_nested(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        child = tree.get(part)
        if not isinstance(child, dict):
            child = tree[part] = {}
        tree = child
    tree[path[-1]] = value


def field_range(cls: type[BaseModel], loc) -> str | None:
    """The range of the number at `loc` as its type says ('0 <= value <= 4294967295'), for messages; None when
    the field is not a number with bounds."""
    import annotated_types as at

    section: Any = cls
    if not loc:  # a model-level check (its message says what is wrong)
        return None
    for part in loc:
        fields = getattr(section, "model_fields", None)
        if not fields or part not in fields:
            return None
        field, section = fields[part], fields[part].annotation
    metadata = list(field.metadata)
    for arg in getattr(section, "__args__", ()):  # Optional[Annotated[int, Field(ge=...)]]
        for item in getattr(arg, "__metadata__", ()):
            metadata += list(getattr(item, "metadata", [item]))
    low = next((f"{m.ge} <= " for m in metadata if isinstance(m, at.Ge)), None) or next(
        (f"{m.gt} < " for m in metadata if isinstance(m, at.Gt)), "")
    high = next((f" <= {m.le}" for m in metadata if isinstance(m, at.Le)), None) or next(
        (f" < {m.lt}" for m in metadata if isinstance(m, at.Lt)), "")
    return f"{low}value{high}" if low or high else None


def _format_validation_error(exc: ValidationError, where: str, cls: type[BaseModel] | None = None) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        span = field_range(cls, err["loc"]) if cls is not None else None
        problems.append(f"'{key}': {err['msg']}{shown}{f'; range: {span}' if span else ''}")
    return f"{where}: invalid config: " + "; ".join(problems)


# The recipes shipped with the package (`clinpeft recipes` lists them): a recipe path such as
# configs/demo/pretrain_lora.yaml or demo/pretrain_lora.yaml is found here when it is not a local file.
BUNDLED_CONFIGS = Path(__file__).resolve().parent / "configs"


def recipe_candidates(path: str | Path, beside: Path | None = None) -> list[Path]:
    """Where a recipe path may point, in the order tried: the folder `beside` (a grid recipe's
    folder), the path as given (relative to the working directory), the bundled configs/."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return [path]
    inside = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) and len(path.parts) > 1 else path
    candidates = [beside / path] if beside is not None else []
    return list(dict.fromkeys([*candidates, path, BUNDLED_CONFIGS / inside]))


def find_recipe(path: str | Path, beside: Path | None = None) -> Path:
    """The first of recipe_candidates that is a file, or an error naming every place tried."""
    candidates = recipe_candidates(path, beside)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ClinpeftError(f"recipe {path} not found (tried {tried}); "
                        "`clinpeft recipes` lists the bundled recipes, e.g. configs/demo/pretrain_lora.yaml")


def read_recipe(path: str | Path | None) -> dict:
    """The YAML recipe as a dict ({} when no recipe is given); see find_recipe for where it is looked up."""
    if path is None:
        return {}
    path = find_recipe(path)
    # files.read_yaml: UTF-8 or UTF-16 with a byte-order mark, parse errors folded into one line
    data = read_yaml(path, "recipe", "a recipe is YAML text, e.g. `train: {lr: 1.0e-4}`") or {}
    if not isinstance(data, dict):
        raise ClinpeftError(f"recipe {path}: expected a mapping of sections (model:, train:, ...) at the top")
    return data


def load_config(cls: type[C], recipe: str | Path | None = None, overrides: list[str] | tuple = ()) -> C:
    """Recipe + overrides -> a validated config of type `cls`, or a ClinpeftError naming the key."""
    return config_from_tree(cls, read_recipe(recipe), overrides, str(recipe) if recipe else "config")


def config_from_tree(cls: type[C], tree: dict, overrides: list[str] | tuple = (), where: str = "config") -> C:
    """Like load_config, from a recipe already read (e.g. a sweep recipe with its own keys popped);
    `where` names it in error messages."""
    tree = copy.deepcopy(tree)
    _check_tree(cls, tree, [], where)
    for item in overrides:
        path, value = parse_override(item)
        _check_key(cls, path, f"override {item!r}")
        _set_nested(tree, path, value)
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:
        raise ClinpeftError(_format_validation_error(exc, where, cls)) from None


def _check_tree(cls: type[Section], tree: dict, prefix: list[str], where: str) -> None:
    for key, value in tree.items():
        path = prefix + [str(key)]
        _check_key(cls, path, where)
        if isinstance(value, dict):
            section = cls
            for part in path:
                section = section.model_fields[part].annotation
            if isinstance(section, type) and issubclass(section, Section):
                _check_tree(cls, value, path, where)


def config_to_yaml(config: Section) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: Section, run_dir: Path) -> Path:
    path = Path(run_dir) / CONFIG
    path.write_text(config_to_yaml(config))
    return path
