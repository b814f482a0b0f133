"""Small helpers both recipes share: Trainer arguments, precision, progress bars, checkpoints."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import threading
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from clinpeft.config import TrainSection
from clinpeft.errors import ClinpeftError, Interrupted
from clinpeft.rundir import last_checkpoint

WARMUP_STEPS = 1  # optimizer steps left out of useful_tokens_per_s: first-step allocations, lazy kernel set-up


class StepClock:
    """Times optimizer steps after the first `warmup_steps` (pass `callback()` to the Trainer).
    rate(units_per_step) -> units per second over the timed steps; with too few steps to leave any
    out, it times all of them and says so by setting `warmup_steps` to 0."""

    def __init__(self, warmup_steps: int = WARMUP_STEPS):
        self.warmup_steps = warmup_steps
        self.ends: list[float] = []
        self.begin: float | None = None

    def callback(self):
        import time

        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                clock.ends.append(time.perf_counter())

        return _Clock()

    def rate(self, units_per_step: float) -> float | None:
        if not self.ends or self.begin is None:
            return None
        if len(self.ends) <= self.warmup_steps:
            self.warmup_steps = 0
        start = self.ends[self.warmup_steps - 1] if self.warmup_steps else self.begin
        seconds = self.ends[-1] - start
        steps = len(self.ends) - self.warmup_steps
        return units_per_step * steps / seconds if seconds > 0 else None


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
    """The model's hidden size from its config.json (multimodal configs: text_config), None if unreadable."""
    import json

    try:
        config = json.loads((Path(base_path) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
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

    from clinpeft.errors import ClinpeftError

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


def model_dtype(setting: str, precision: str) -> str:
    """model.dtype for the run. `auto`: bf16 weights under bf16 on a GPU; on a CPU fp32 weights, the
    Trainer autocasting to bf16 (bf16 weights with fp32 adapters on a CPU are not measured yet: see
    benchmarks/throughput.py --precisions). Explicit settings stay."""
    import torch

    if setting != "auto":
        return setting
    if not torch.cuda.is_available():
        return "float32"
    return {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")


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
    then work in fp32 while the frozen base stays bf16; autocast runs the matmuls in bf16. Returns how many."""
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


def check_kernels(train: TrainSection) -> None:
    """One line, before any work, when `train.compile` or `train.fused_loss` cannot run here: compiling on a
    CPU needs a C++ compiler (inductor writes C++), the fused loss a CUDA GPU and liger-kernel."""
    import importlib.util
    import os
    import shutil

    import torch

    from clinpeft.errors import ClinpeftError

    cuda = torch.cuda.is_available()
    if train.compile and not cuda and not any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++") if c):
        raise ClinpeftError("train.compile on a CPU needs a C++ compiler (g++), and none is on PATH: install one "
                            "(apt install g++) or set train.compile=false")
    if getattr(train, "fused_loss", False):
        if not cuda:
            raise ClinpeftError("train.fused_loss needs a CUDA GPU (Liger-Kernel's Triton kernels) and this machine "
                                "has none: set train.fused_loss=false")
        if importlib.util.find_spec("liger_kernel") is None:
            raise ClinpeftError("train.fused_loss needs liger-kernel, which is not installed: "
                                "pip install 'clinpeft[gpu]', or set train.fused_loss=false")


def kernel_flags(train: TrainSection) -> dict:
    """TrainingArguments flags of train.compile and (pretraining) train.fused_loss; see check_kernels."""
    flags = {"torch_compile": train.compile}
    if getattr(train, "fused_loss", False):
        # Liger's defaults for a causal LM, named so the run says what it used; cross_entropy stays off
        # because the fused linear one replaces it
        flags.update(use_liger_kernel=True, liger_kernel_config={
            "fused_linear_cross_entropy": True, "cross_entropy": False, "rms_norm": True, "rope": True, "swiglu": True})
    return flags


def fsdp_chosen(train: TrainSection) -> bool:
    """Whether this run shards with FSDP: train.fsdp, or FSDP chosen by `accelerate config` (accelerate launch
    then sets ACCELERATE_USE_FSDP=true and passes the FSDP_* settings in the environment)."""
    return train.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


# PEFT methods FSDP is tested with here (tests/test_fsdp.py); the prompt methods' virtual-token encoders are not
SHARDABLE_METHODS = ("lora", "full")


def check_sharding(train: TrainSection, method: str | None, quantization: str = "none") -> None:
    """One line, before any work, when FSDP is chosen and cannot run this job: a single process (nothing to
    shard over), a PEFT method other than LoRA or full fine-tuning (`method`: the adapter that trains or is
    stacked on; None: none), a quantized base (bitsandbytes weights need FSDP-QLoRA's storage settings, not
    set up here) or two activation checkpointings at once."""
    if not fsdp_chosen(train):
        return
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if processes < 2:
        raise ClinpeftError("train.fsdp shards a model over several processes and this is one: launch it with "
                            "`torchrun --nproc_per_node N -m clinpeft ...` or `accelerate launch`, "
                            "or set train.fsdp=false")
    if method is not None and method not in SHARDABLE_METHODS:
        raise ClinpeftError(f"train.fsdp with the {method} adapter: FSDP runs here with LoRA and full fine-tuning "
                            "only; use peft.method=lora or full, or set train.fsdp=false")
    if quantization != "none":
        raise ClinpeftError(f"train.fsdp with model.quantization={quantization}: a quantized base is not sharded "
                            "here; set model.quantization=none (FSDP already splits the weights) or train.fsdp=false")
    if train.gradient_checkpointing and train.fsdp_config.activation_checkpointing:
        raise ClinpeftError("train.gradient_checkpointing and train.fsdp_config.activation_checkpointing are both on: "
                            "keep FSDP's own (train.gradient_checkpointing=false)")


def fsdp_flags(train: TrainSection) -> dict:
    """TrainingArguments' `fsdp` / `fsdp_config` of train.fsdp (nothing otherwise: `accelerate config`'s FSDP
    reaches the Trainer through the environment). The wrapping unit is the model's decoder layer: transformers
    reads `_no_split_modules` when transformer_layer_cls_to_wrap is None."""
    if not train.fsdp:
        return {}
    config = {k: v for k, v in train.fsdp_config.model_dump().items() if v is not None}
    return {"fsdp": True, "fsdp_config": config}


def training_arguments(train: TrainSection, output_dir: Path, progress: bool = True, precision: str | None = None,
                       **extra):
    """The paper's hyperparameters as HF TrainingArguments, in `precision` (resolved by the recipe for its model;
    default: train.precision resolved without the model's width).

    warmup: `warmup_steps` < 1 is read by transformers as a fraction of the optimiser steps, so
    warmup_ratio=0.06 warms up over 6% of *optimiser* steps (the published code passed the ratio
    as a step count and counted the schedule in micro-batches).
    """
    import torch
    from transformers import TrainingArguments

    if train.gradient_checkpointing:
        # non-reentrant checkpointing needs no input grads, so it works under frozen embeddings
        # transformers renamed the flag; use whichever this version has
        fields = TrainingArguments.__dataclass_fields__
        name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
        extra.update({name: True, f"{name}_kwargs": {"use_reentrant": False}})
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=train.lr,
        warmup_steps=train.warmup_ratio,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.lr_scheduler,
        seed=train.seed,
        logging_steps=train.logging_steps,
        report_to=list(train.report_to) or "none",
        dataloader_num_workers=train.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        # checkpoints (for resuming) are the Trainer's own, triggered by Checkpointing (steps, time, signals) and,
        # for fine-tuning, every epoch (extra save_strategy="epoch"); the results are saved by the recipes
        save_total_limit=train.keep_checkpoints,
        remove_unused_columns=False,
        disable_tqdm=not progress,
        **precision_flags(precision or resolve_precision(train.precision)),
        **kernel_flags(train),
        **fsdp_flags(train),
        **{"save_strategy": "no", **extra},
    )


class ShardedTrainer(Trainer):
    """The HF Trainer, plus two things FSDP needs here.

    1. FSDP on CPU processes. accelerate (1.16) sets FSDP up only on accelerators: on a CPU machine it makes the
       gloo group a plain MULTI_CPU (data-parallel) one and drops the FSDP plugin, so `train.fsdp` would silently
       train unsharded. FSDP2 (`fully_shard`) itself runs on CPU tensors over gloo, so the plugin the Trainer
       built is put back into accelerate's state: from there on it is accelerate's own FSDP2 path (the same
       `prepare`, sharded checkpoints and loading as on GPUs).
    2. A consolidated model after sharded training (`consolidated`): FSDP2 shards the model in place (every
       weight a DTensor slice), and everything after training (perplexity, the best epoch's weights, scoring,
       the saved adapter / model) is the single-process code, which wants whole weights on every process."""

    def __init__(self, model=None, *args, **kwargs):
        self.sharding = None  # after consolidated(): FSDP version, processes, sharded units per module class
        super().__init__(model, *args, **kwargs)
        # a copy without weights (meta tensors) of the model, taken before FSDP shards it: consolidated() fills it
        self._skeleton = meta_copy(model) if self.is_fsdp_enabled else None

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        wanted = self.args.fsdp_plugin_args is not None or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
        if wanted and state.distributed_type == DistributedType.MULTI_CPU:
            # the plugin accelerate would have kept on a GPU (from the Trainer's arguments, else the environment)
            plugin = FullyShardedDataParallelPlugin(**(self.args.fsdp_plugin_args or {}))
            if state.mixed_precision != "no":
                plugin.set_mixed_precision(state.mixed_precision)
            state.fsdp_plugin, state.distributed_type = plugin, DistributedType.FSDP
            self.is_fsdp_enabled = True

    def consolidated(self, model):
        """After train(): under FSDP, the trained model whole (plain tensors) on every process, and the sharded
        one, its optimizer state and accelerate's references released; without FSDP, `model` itself. Weights
        are gathered one at a time while the sharded state is still held (peak per process: the whole weights
        plus this process's shard of weights, gradients and optimizer state)."""
        if self._skeleton is None:
            return model
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        # the class each FSDP unit wraps (through activation checkpointing's wrapper): LlamaDecoderLayer, ...
        units = [type(getattr(m, "_checkpoint_wrapped_module", m)).__name__.removeprefix("FSDP")
                 for m in self.model.modules() if isinstance(m, FSDPModule)]
        self.sharding = {"fsdp_version": self.accelerator.state.fsdp_plugin.fsdp_version,
                         "processes": self.accelerator.num_processes,
                         "units": {name: units.count(name) for name in dict.fromkeys(units)}}

        whole = self._skeleton
        gathered = {}  # id of a sharded parameter -> its whole tensor (tied weights gathered once)
        sharded = named_weights(self.model, remove_duplicate=False)
        made = {}  # id of a skeleton parameter -> its filled Parameter (keeps tied weights tied)
        for name, empty in list(whole.named_parameters(remove_duplicate=False)):
            source = sharded[name]
            if id(source) not in gathered:
                value = source.full_tensor() if isinstance(source, DTensor) else source
                gathered[id(source)] = value.detach()
            if id(empty) not in made:
                made[id(empty)] = torch.nn.Parameter(gathered[id(source)], requires_grad=empty.requires_grad)
            owner, _, attr = name.rpartition(".")
            whole.get_submodule(owner)._parameters[attr] = made[id(empty)]
        whole.train(self.model.training)
        self._skeleton = None
        self.model = self.model_wrapped = self.optimizer = self.lr_scheduler = None
        self.accelerator.free_memory()
        return whole


# module names wrappers insert into parameter names: activation checkpointing (FSDP's own or the Trainer's
# train.gradient_checkpointing under FSDP), torch.compile
WRAPPER_NAMES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def named_weights(model, remove_duplicate: bool = True) -> dict:
    """model.named_parameters() under the names of the unwrapped model (WRAPPER_NAMES taken out): the keys of
    checkpoints, the best epoch's weights and the consolidated model, whatever wrapped the layers in training."""
    named = {}
    for name, param in model.named_parameters(remove_duplicate=remove_duplicate):
        for wrapper in WRAPPER_NAMES:
            name = name.replace(wrapper, "")
        named[name] = param
    return named


def meta_copy(model):
    """A deep copy of `model` whose parameters are empty meta tensors (same shapes, dtypes, requires_grad, ties):
    the module tree without a second copy of the weights. Buffers (rotary frequencies) are copied."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def whole(tensor):
    """A parameter's whole value on the CPU (under FSDP2 its DTensor shards gathered: a collective, so every
    process calls it for the same parameters in the same order), detached."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu()


def load_whole(param, value) -> None:
    """Copy the whole tensor `value` into `param` in place (under FSDP2: into this process's shard)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        if isinstance(param, DTensor):
            value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
        param.copy_(value.to(param.device))


def silence_trainer(trainer, progress: bool):
    """Without progress bars the Trainer prints its log dicts instead; drop those too."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def set_progress_bars(enabled: bool) -> None:
    """Turn the Hugging Face libraries' own bars (loading weights, datasets.map) on or off."""
    import datasets
    from transformers.utils import logging as hf_logging

    if enabled:
        hf_logging.enable_progress_bar()
        datasets.enable_progress_bars()
    else:
        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()


class Checkpointing(TrainerCallback):
    """Triggers the Trainer's own checkpoint (control.should_save: adapter or model, optimizer, scheduler,
    RNG states, data position) every `checkpoint_every` optimizer steps, every `checkpoint_minutes`, and on
    SIGTERM / SIGINT, after which training stops (a second signal stops at once, without a checkpoint).

    Under DDP and FSDP the decision is all-reduced so every process saves at the same step. Under FSDP the
    Trainer's checkpoint is sharded (train.fsdp_config.state_dict_type: one file per process) and
    `trainable.safetensors` holds the whole weights, gathered by every process and written by the main one.

    The Trainer's checkpoint holds what `save_pretrained` saves: a peft model's adapters, which leaves out a
    classification head trained beside them (not in peft's modules_to_save, see modeling/adapters.py). So every
    checkpoint also gets `trainable.safetensors`, all parameters with requires_grad (unless every weight trains:
    then the Trainer's copy is whole), put back when training resumes from `resume`."""

    TRAINABLE = "trainable.safetensors"

    def __init__(self, train: TrainSection, resume: str | None = None):
        self.resume = resume  # the checkpoint the Trainer resumes from (set before trainer.train)
        self.every, self.seconds = train.checkpoint_every, train.checkpoint_minutes * 60
        self.last_save, self.signum, self.previous = time.monotonic(), None, {}
        self.saves, self.save_seconds = 0, 0.0  # checkpoints written in this process and the time they took
        self._save_started = None

    def _handle(self, signum, frame):
        if self.signum is not None:  # the second signal: give up on the checkpoint
            signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # after the Trainer loaded the checkpoint's weights, optimizer and scheduler: values copied in place,
        # so the optimizer's state still points at the same tensors
        saved = Path(self.resume or "") / self.TRAINABLE
        if self.resume and saved.exists():
            from safetensors.torch import load_file

            params = named_weights(model)
            for name, value in load_file(str(saved)).items():
                load_whole(params[name], value)
        self.last_save = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        due = (self.every > 0 and state.global_step % self.every == 0) or (
            self.seconds > 0 and time.monotonic() - self.last_save >= self.seconds)
        stop = self.signum is not None
        due, stop = agree(args, due, stop)
        if due or stop:
            control.should_save = True
            self._save_started = time.perf_counter()
        if stop:
            control.should_training_stop = True
            self.signum = self.signum or signal.SIGTERM  # another process got the signal
        return control

    def on_save(self, args, state, control, model=None, **kwargs):
        params = named_weights(model)
        # whole weights (gathered under FSDP, by every process); when every weight trains the Trainer's copy is whole
        names = [n for n, p in params.items() if p.requires_grad]
        trainable = {n: whole(params[n]).contiguous() for n in names} if len(names) < len(params) else {}
        if args.should_save and trainable:
            from safetensors.torch import save_file

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            save_file(trainable, str(folder / f".{self.TRAINABLE}.tmp"))
            (folder / f".{self.TRAINABLE}.tmp").replace(folder / self.TRAINABLE)
        self.last_save = time.monotonic()
        self.saves += 1
        if self._save_started is not None:
            self.save_seconds += time.perf_counter() - self._save_started
            self._save_started = None

    def raise_if_interrupted(self, state, out: Path) -> None:
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise Interrupted(f"{name} at optimizer step {state.global_step}: checkpoint written to {out}; "
                              "rerun the same command to resume", self.signum)


def agree(args, *flags: bool) -> tuple[bool, ...]:
    """The flags OR-ed over every process of a DDP / FSDP run (unchanged in a single process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flags
    tensor = torch.tensor([float(f) for f in flags], device=args.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in tensor.tolist())


def resume_point(checkpoints: Path) -> str | None:
    """The checkpoint to resume from (the newest complete one in `checkpoints`), as the Trainer wants it."""
    last = last_checkpoint(checkpoints)
    return str(last) if last else None


def loss_curve(state) -> list[dict]:
    """The logged training loss per optimizer step (a resumed run's history continues the checkpoint's)."""
    return [{"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate")}
            for e in state.log_history if "loss" in e and "step" in e]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a scheduler's allocation), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_count(threads: int | None = None) -> tuple[int, str]:
    """(threads, why): train.threads, else CLINPEFT_THREADS, else the user's OMP_NUM_THREADS, else the cores
    divided among the processes of this machine (LOCAL_WORLD_SIZE under accelerate/torchrun)."""
    if threads:
        return threads, "train.threads"
    for name in ("CLINPEFT_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                if int(value) >= 1:
                    return int(value), name
            except ValueError:
                pass
            raise ClinpeftError(f"{name}={value!r}: expected a whole number of threads >= 1")
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, available_cores() // processes), f"{available_cores()} cores / {processes} process(es)"


def set_threads(threads: int | None = None) -> int:
    """torch.set_num_threads(thread_count(...)): several CPU processes side by side each use their share
    instead of all of them each (on 2 cores, two processes with 2 threads each ran a tiny model's steps ~10x slower)."""
    import torch

    count, _ = thread_count(threads)
    torch.set_num_threads(count)
    return count
