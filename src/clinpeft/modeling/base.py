"""Loading a base model from local disk: the same code path for the tiny demo model and LLaMA-7B.

Nothing here touches the network: `model.base` is a local directory (config.json, tokenizer
files, safetensors weights), a .gguf file or a named real base. The demo models ("demo", "demo-bert")
are built and resolved by clinpeft/bases.py (the named-base table the recipes use), not here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from clinpeft.errors import ClinpeftError

DEMO_NAMES = ("demo", "demo-bert")  # built by clinpeft/bases.py, not by the loader


def resolve_base(base: str, *, progress: bool = True) -> Path:
    """`model.base` -> a local Hugging Face model directory (the demo models: clinpeft/bases.resolve_base).

    A named real base (`smollm2-135m`, modeling/gguf.NAMED_BASES), a `.gguf` file or a folder holding one:
    dequantized once into a cached folder (modeling/gguf.py). Anything else: a folder with config.json."""
    if base in DEMO_NAMES:
        raise ClinpeftError(f"model.base={base}: the demo models are built by clinpeft.bases.resolve_base "
                            "(the recipes and clinpeft.load resolve them), not by the model loader")
    from clinpeft.modeling.gguf import NAMED_BASES, is_gguf_spec, resolve_gguf

    if is_gguf_spec(base):
        return resolve_gguf(base, progress=progress)
    path = Path(base).expanduser()
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise ClinpeftError(
            f"model.base {base} {what}; give the local directory of a Hugging Face model "
            f"(config.json, tokenizer, *.safetensors), a .gguf file, a named base ({', '.join(NAMED_BASES)}), "
            "or model.base=demo for the tiny demo model"
        )
    check_base_folder(path)
    return path


# what AutoTokenizer needs at least one of: a fast tokenizer, a SentencePiece model, a WordPiece or BPE vocabulary
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model")


def check_base_folder(path: Path) -> None:
    """The files of a base model folder, through the reading layer, before any work: config.json a JSON object
    with a model_type, a tokenizer, weights whose safetensors headers are whole. One line naming the file."""
    from clinpeft.files import check_safetensors, read_json

    hint = "re-copy the model folder (config.json, tokenizer, *.safetensors) from its source"
    read_json(path / "config.json", dict, keys=("model_type",), what="model config", hint=hint)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ClinpeftError(f"model.base {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); {hint}")
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights, hint)


def check_base(base: str) -> None:
    """One line, before any work, when `model.base` cannot be read: a missing folder or config.json, a
    GGUF file that is not one, truncated, of an unreadable architecture or tensor type, a named base whose
    package is missing. Cheap: reads headers only (the demo bases are built later, on first use)."""
    if base in DEMO_NAMES:
        return
    from clinpeft.modeling.gguf import find_gguf, is_gguf_spec, read_header

    if is_gguf_spec(base):
        read_header(find_gguf(base))
    else:
        resolve_base(base, progress=False)


def reopen_base(recorded: str | None, base: str | None = None, spec: str | None = None) -> Path:
    """The base model folder of a saved run: `base` (--base: a folder, .gguf file or named base) when given,
    else the folder the run recorded, else, when that folder is gone (a cleared cache, another machine),
    the run's `base_spec` (the model.base it was trained with) resolved again: a GGUF is dequantized anew
    to the same weights. The caller still checks the fingerprint."""
    if base:
        return resolve_base(base)
    if recorded and (Path(recorded) / "config.json").is_file():
        return Path(recorded)
    if spec and spec not in DEMO_NAMES:
        from clinpeft.modeling.gguf import is_gguf_spec

        if is_gguf_spec(spec):
            return resolve_base(spec)
    raise ClinpeftError(f"its base model {recorded} is not there; pass --base with the local path of that model "
                        "(a Hugging Face folder or the .gguf file it was trained from)")


def base_record(spec: str, base_path: Path) -> dict:
    """What run.json / metrics.json / bundle.json record of the base beyond its folder: `base_spec`, the
    model.base as written (a named base, a .gguf file, a folder), and `base_source` for a dequantized GGUF
    (file, sha256, architecture, quantization type, cache key; modeling/gguf.py)."""
    from clinpeft.modeling.gguf import base_source

    record = {"base_spec": spec}
    source = base_source(base_path)
    if source is not None:
        record["base_source"] = source
    return record


def base_display_name(base_path: Path) -> str:
    """Table rows' name of a base: the folder's name, or for a dequantized GGUF its named base or file stem
    (the cache folder is named by a hash)."""
    from clinpeft.modeling.gguf import base_source

    source = base_source(base_path)
    if source is None:
        return Path(base_path).name
    return source.get("named_base") or Path(source.get("gguf_file", base_path)).stem


def is_encoder(base: str | Path) -> bool:
    """Whether `model.base` is a BERT-family encoder (BlueBERT, UmlsBERT, Bio+ClinicalBERT, CORe, RoBERTa...)
    rather than a LLaMA-family decoder, read from its config.json without loading weights.

    Encoder = a model_type that transformers can build as a masked LM (bert, roberta, electra,
    deberta, ...), not configured as a decoder (`is_decoder`), and not saved as a causal LM
    (`architectures` ending in ForCausalLM / LMHeadModel). "demo-bert" is the demo's encoder.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if str(base) == "demo-bert":
        return True
    if str(base) == "demo":
        return False
    config_file = Path(base).expanduser() / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return False  # resolve_base / from_pretrained report the missing or broken model
    causal = any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures") or [])
    return config.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.get("is_decoder") and not causal


def torch_dtype(setting: str) -> torch.dtype:
    """`auto`: bf16 on a GPU that supports it (the paper's A100 setting), else fp32 (CPU)."""
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[setting]


def end_of_text_id(path: Path) -> int | None:
    """The base model's end-of-text id from its generation_config.json, else config.json (first of a list).

    Used when the tokenizer declares no EOS: Llama 3 instruct lists several ids there
    ([<|end_of_text|>, <|eom_id|>, <|eot_id|>]); the first is the document separator.
    """
    for name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((Path(path) / name).read_text()).get("eos_token_id")
        except (OSError, ValueError):
            continue
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return None


def load_tokenizer(path: Path, padding_side: str = "right"):
    """The base model's tokenizer, with its end-of-text token and a pad token.

    EOS (the separator between packed notes, `data.packing`): the tokenizer's own; when it has
    none, the id in the model's generation_config.json / config.json (`end_of_text_id`).
    pad: the tokenizer's pad token when it has one; else EOS is reused as pad (Llama 3, Mistral,
    Qwen base models ship none). Padding never reaches the model as content: classifier batches
    carry an attention mask and the head reads the last non-pad position, packed blocks label pad
    -100. A new token would resize the embeddings, which an adapter trained on the original
    vocabulary could not follow.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token is None:
        eos_id = end_of_text_id(path)
        if eos_id is not None:
            tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ClinpeftError(f"{path}: the tokenizer has neither a pad nor an end-of-text token, and "
                                "generation_config.json / config.json give no eos_token_id; add eos_token_id there")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


QUANTIZATIONS = ("none", "4bit", "8bit")  # model.quantization


def quantization_config(setting: str, skip_modules: list[str] | None = None):
    """transformers' BitsAndBytesConfig of `model.quantization` (None for "none"): QLoRA's setting.

    4bit: NF4 weights, double quantization (the quantization constants quantized too), bf16 compute
    (Dettmers et al. 2023). 8bit: LLM.int8(). skip_modules: modules kept in full precision (a
    classifier's freshly initialised head); None keeps transformers' default (the LM head).
    Building the config needs no GPU and no bitsandbytes; loading with it needs both (check_quantization).
    """
    if setting not in QUANTIZATIONS:
        raise ClinpeftError(f"model.quantization={setting}: use one of {', '.join(QUANTIZATIONS)}")
    if setting == "none":
        return None
    from transformers import BitsAndBytesConfig

    if setting == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=skip_modules)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)


def check_quantization(setting: str) -> None:
    """One line, before any work, when `model.quantization` cannot run here (no CUDA GPU, no bitsandbytes)."""
    if setting == "none":
        return
    import importlib.util

    if not torch.cuda.is_available():
        raise ClinpeftError(f"model.quantization={setting} needs a CUDA GPU and bitsandbytes "
                            "(pip install 'clinpeft[gpu]'); this machine has no CUDA GPU: "
                            "run on a GPU machine, or set model.quantization=none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ClinpeftError(f"model.quantization={setting} needs bitsandbytes, which is not installed: "
                            "pip install 'clinpeft[gpu]', or set model.quantization=none")


ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2")  # model.attn_implementation


def check_attention(attn_implementation: str, dtype: torch.dtype) -> None:
    """One line, before any work, when `model.attn_implementation` cannot run here.

    flash_attention_2 (varlen: packed notes as separate sequences, no mask) needs a CUDA GPU, the
    flash-attn package and half-precision weights (`dtype`: the weights' dtype the run loads).
    flex_attention (a block mask that skips other notes' blocks) needs a CUDA GPU: PyTorch 2.13 has no
    backward for it on a CPU, and its compiled CPU forward failed to build for a second note length
    (inductor's C++ for dynamic shapes). sdpa and eager run everywhere."""
    if attn_implementation not in ATTENTION:
        raise ClinpeftError(f"model.attn_implementation={attn_implementation}: use one of {', '.join(ATTENTION)}")
    cuda = torch.cuda.is_available()
    if attn_implementation == "flash_attention_2":
        import importlib.util

        if not cuda or importlib.util.find_spec("flash_attn") is None:
            raise ClinpeftError("model.attn_implementation=flash_attention_2 needs a CUDA GPU and the flash-attn "
                                "package (pip install flash-attn --no-build-isolation)"
                                + ("" if cuda else "; this machine has no CUDA GPU") + ": use sdpa (the default)")
        if dtype not in (torch.bfloat16, torch.float16):
            name = str(dtype).removeprefix("torch.")
            raise ClinpeftError(f"model.attn_implementation=flash_attention_2 runs in bf16/fp16 only, the model "
                                f"would load in {name}: set train.precision=bf16 (model.dtype=auto), or use sdpa")
    if attn_implementation == "flex_attention":
        from transformers.utils import is_torch_flex_attn_available

        if not cuda:
            raise ClinpeftError("model.attn_implementation=flex_attention needs a CUDA GPU (PyTorch has no "
                                "flex-attention backward on a CPU): use sdpa (the default) here")
        if not is_torch_flex_attn_available():
            raise ClinpeftError(f"model.attn_implementation=flex_attention needs PyTorch >= 2.5 (this is "
                                f"{torch.__version__}): use sdpa (the default)")


def _quantized_kwargs(quantization: str, skip_modules: list[str] | None = None) -> dict:
    """from_pretrained arguments of a quantized load: the config, and this process's GPU (bitsandbytes
    places weights at load time; a quantized model cannot be moved afterwards)."""
    from accelerate import PartialState

    check_quantization(quantization)
    return {"quantization_config": quantization_config(quantization, skip_modules),
            "device_map": {"": PartialState().device}}


def prepare_quantized(model):
    """peft's prepare_model_for_kbit_training: norms and other small weights to fp32, inputs that require
    grad. Gradient checkpointing stays `train.gradient_checkpointing`'s choice (the Trainer turns it on)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def load_causal_lm(path: Path, dtype: str = "auto", attn_implementation: str = "sdpa", quantization: str = "none"):
    """The base causal LM; `quantization` 4bit/8bit: a bitsandbytes-quantized base (QLoRA) on the GPU."""
    from transformers import AutoModelForCausalLM

    extra = _quantized_kwargs(quantization) if quantization != "none" else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype(dtype), attn_implementation=attn_implementation, **extra
    )
    model.config.use_cache = False  # a KV cache would let packed notes attend to each other
    return prepare_quantized(model) if extra else to_device(model)


def load_sequence_classifier(
    path: Path, num_labels: int, pad_token_id: int, problem_type: str, dtype: str = "auto",
    attn_implementation: str = "sdpa", quantization: str = "none",
):
    """A base LM with a fresh classification head (`score` for LLaMA, `classifier` for BERT).

    `pad_token_id` must be set: LLaMA's head pools the last non-pad token (with a pad-less tokenizer
    it is EOS, see load_tokenizer). `quantization`: the base quantized, the head kept in full precision.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    extra = _quantized_kwargs(quantization, skip_modules=list(HEAD_NAMES)) if quantization != "none" else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized: score.weight" warning is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=num_labels,
            problem_type=problem_type,
            dtype=torch_dtype(dtype),
            attn_implementation=attn_implementation,
            **extra,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = pad_token_id
    model.config.use_cache = False
    return prepare_quantized(model) if extra else to_device(model)


def to_device(model):
    """This process's accelerator (its own GPU under `accelerate launch`), or the CPU."""
    from accelerate import PartialState

    return model.to(PartialState().device)


HEAD_NAMES = ("score", "classifier")  # LLaMA-family, BERT-family


def classification_head(model) -> tuple[str, torch.nn.Module]:
    """The (name, module) of a transformers sequence-classification head."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            return name, module
    raise ClinpeftError(f"{type(model).__name__} has no classification head named one of {HEAD_NAMES}")


def base_fingerprint(model) -> str:
    """A short hash identifying a base model's architecture and weights.

    Architecture: the config's shape fields. Weights: the first rows of the input embedding,
    rounded to bf16 so that fp32 and bf16 loads of the same checkpoint agree. Two models of the
    same shape but different training (LLaMA vs PMC-LLaMA) get different fingerprints, so a
    clinical adapter is never silently applied to a model it was not trained on.
    """
    config = model.config
    shape = {
        key: getattr(config, key, None)
        for key in (
            "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"
        )
    }
    embedding = model.get_input_embeddings().weight.detach()[:16].to(torch.bfloat16).float().cpu()
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode())
    digest.update(embedding.numpy().tobytes())
    return digest.hexdigest()[:16]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; total includes adapter parameters."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def device_summary() -> dict:
    """run.json / metrics.json: the device, GPUs on this machine, and `processes`: the data-parallel processes
    that trained together (torchrun / accelerate launch; 1 otherwise)."""
    import torch.distributed as dist

    processes = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0), "n_gpus": torch.cuda.device_count(), "processes": processes}
    return {"device": "cpu", "n_gpus": 0, "processes": processes}


def check_positions(base_path: Path, max_seq_len: int, key: str) -> None:
    """Refuse a sequence length beyond the model's max_position_embeddings, before any work. An encoder has
    learned position embeddings for that many tokens only (BERT: 512, [CLS] and [SEP] included); a decoder
    (LLaMA: rotary positions) was never trained past it, so longer blocks would silently train and score
    on positions it has not seen."""
    import json

    config_file = Path(base_path) / "config.json"
    try:
        limit = json.loads(config_file.read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return  # resolve_base / loading reports an unreadable config
    if isinstance(limit, int) and max_seq_len > limit:
        what = "encoder" if is_encoder(base_path) else "model"
        raise ClinpeftError(f"{key}={max_seq_len}: the {what} {base_path} has {limit} positions "
                            f"(max_position_embeddings); set {key}={limit} or less")
