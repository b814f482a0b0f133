"""Precision, decided once per run: the Trainer's mixed precision and the dtype the base model loads in.

`run_precision(...)` is called once at the top of each training recipe (when the base model's folder is known) and the
Precision it returns is passed down; `check_precision(...)` refuses, before any work, a setting this machine cannot run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from clinpeft.errors import ClinpeftError

CPUINFO = Path("/proc/cpuinfo")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively: the AVX512-BF16 or AMX-BF16 flag in
    /proc/cpuinfo (the instructions oneDNN's bf16 GEMMs use; without them PyTorch emulates bf16 and
    it runs slower than fp32). Not Linux, or no flags line: False."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


# Smallest hidden size for which `auto` trains in bf16 on a CPU with native bf16. Measured on an idle 2-core
# AVX512-BF16 CPU (README "bf16 on CPU"): packed LoRA steps under bf16 autocast ran at 1.10x fp32's tokens/s at
# hidden 64, 1.08x at 128 (the small GEMMs gain little, the casts cost), 1.45x at 256, 1.50x at 512. Below 256
# the gain is too small to pay for results that would differ between CPUs with and without bf16 (the demo's
# Table 3, the test suite's exact comparisons): those models stay in fp32 everywhere.
CPU_BF16_MIN_HIDDEN = 256


def hidden_size_of(base_path) -> int | None:
    """The model's hidden size from its config.json (multimodal configs: text_config), None if unreadable
    (resolve_base and loading report a broken model; here it only means `auto` cannot see the width)."""
    from clinpeft.files import read_json

    try:
        config = read_json(Path(base_path) / "config.json", dict, what="model config")
    except ClinpeftError:
        return None
    value = config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size") or config.get("d_model")
    return value if isinstance(value, int) else None


def resolve_precision(setting: str, hidden_size: int | None = None) -> str:
    """train.precision -> fp32 | bf16 | fp16 on this machine, or a ClinpeftError saying why not.

    auto: bf16 on a GPU that supports it; on a CPU, bf16 (autocast, fp32 weights and optimizer state) where it
    multiplies bf16 natively (cpu_has_native_bf16) and the model is wide enough to gain from it
    (`hidden_size` >= CPU_BF16_MIN_HIDDEN; unknown counts as wide), fp32 elsewhere (emulated bf16 is slower
    than fp32, and so is bf16 on tiny models). Called before any work, so a wrong setting fails at once."""
    import torch

    cuda = torch.cuda.is_available()
    if setting == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        wide = hidden_size is None or hidden_size >= CPU_BF16_MIN_HIDDEN
        return "bf16" if cpu_has_native_bf16() and wide else "fp32"
    if setting == "fp16" and not cuda:
        raise ClinpeftError("train.precision=fp16 needs a GPU (fp16 training on a CPU is neither supported nor "
                            "faster); use train.precision=bf16 or fp32")
    if setting == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ClinpeftError("train.precision=bf16: this GPU has no bf16 support; use train.precision=fp16 or fp32")
    return setting


def load_dtype(setting: str, precision: str) -> str:
    """model.dtype for the run, given the resolved train precision: the one meaning of `auto` for both recipes.
    `auto`: bf16 (fp16) weights under bf16 (fp16) on a GPU, fp32 weights under fp32; on a CPU always fp32 weights,
    the Trainer autocasting to bf16 (bf16 weights with fp32 adapters on a CPU are not measured yet: see
    benchmarks/throughput.py --precisions). Explicit settings stay. Without training (evaluate, predict) `auto`
    reads as train.precision=auto, which is modeling.base.torch_dtype("auto")."""
    import torch

    if setting != "auto":
        return setting
    if not torch.cuda.is_available():
        return "float32"
    return {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")


@dataclass(frozen=True)
class Precision:
    """A run's precision, resolved once (see run_precision) and passed down to loading, training and scoring."""

    train: str  # fp32 | bf16 | fp16: the Trainer's mixed precision, and the autocast of perplexity
    weights: str  # float32 | bfloat16 | float16: the dtype the base model loads in (model.dtype resolved)


def check_precision(train_setting: str, dtype_setting: str, attn_implementation: str = "sdpa") -> None:
    """Before any work: a ClinpeftError when train.precision (fp16 on a CPU, bf16 on a GPU without it) or the
    attention kernel with the weights this run would load cannot run here. Decides nothing: see run_precision."""
    from clinpeft.modeling.base import check_attention, torch_dtype

    check_attention(attn_implementation, torch_dtype(load_dtype(dtype_setting, resolve_precision(train_setting))))


def run_precision(train_setting: str, dtype_setting: str, base_path: str | Path | None = None) -> Precision:
    """train.precision and model.dtype on this machine for the base model in `base_path` (its width decides
    `auto` on a CPU, see resolve_precision): called once per run, at the top of the recipe."""
    train = resolve_precision(train_setting, hidden_size_of(base_path) if base_path is not None else None)
    return Precision(train=train, weights=load_dtype(dtype_setting, train))


@contextlib.contextmanager
def own_forward(model):
    """Within the block, `model` runs its own forward, without accelerate's mixed-precision wrapper.

    Under train.precision=bf16 (fp16) accelerate wraps `model.forward` in autocast for training (keeping the
    original as `model._original_forward`). Scoring notes (the per-epoch validation that selects the epoch,
    val/test predictions) runs in the model's own dtype instead, as `evaluate` and `predict` do on the saved
    run: otherwise their numbers would differ (by ~1e-3 in logits on the tiny test models). The model's dtype
    is the portable choice: the same scores on a machine without bf16."""
    original = model.__dict__.get("_original_forward")
    if original is None:
        yield model
        return
    wrapped = model.__dict__["forward"]
    model.forward = original
    try:
        yield model
    finally:
        model.forward = wrapped


def end_mixed_precision(trainer) -> None:
    """After training: remove accelerate's mixed-precision wrapper for good (see own_forward), in place (the
    recipes hold the unwrapped model)."""
    trainer.accelerator.unwrap_model(trainer.model_wrapped, keep_fp32_wrapper=False)


def upcast_trainable(model) -> int:
    """Trainable weights of a half-precision model to fp32 (adapters, heads): the optimizer and its state
    then work in fp32 while the frozen base stays bf16; autocast runs the matmuls in bf16. Returns how many.

    Pretraining only. A classifier's head reads the base's hidden states directly (nn.Linear, no cast as peft's
    LoRA layers do), and fine-tuning scores val/test in the model's own dtype, outside autocast (own_forward):
    an fp32 head on bf16 hidden states would fail there."""
    import torch

    count = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            count += 1
    return count


def precision_flags(precision: str) -> dict:
    """TrainingArguments flags for a resolved precision (bf16/fp16, see resolve_precision) and the device:
    use_cpu on a machine without CUDA. Two reasons: transformers refuses bf16 without a GPU unless told
    the run is on the CPU (it then autocasts to bf16), and accelerate sets up multi-process CPU training
    (a gloo process group, gradients all-reduced) only when told so: without use_cpu, `torchrun
    --nproc_per_node N` on a CPU machine starts N processes that each train alone on the whole data."""
    import torch

    flags = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if not torch.cuda.is_available():
        flags["use_cpu"] = True
    return flags
