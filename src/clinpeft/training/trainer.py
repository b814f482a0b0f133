"""The HF Trainer as the recipes use it: TrainingArguments from train.*, kernel and sharding checks, FSDP on CPUs."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from transformers import Trainer

from clinpeft.config import TrainSection
from clinpeft.errors import ClinpeftError
from clinpeft.training.checkpointing import named_weights
from clinpeft.training.precision import precision_flags, resolve_precision


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




def meta_copy(model):
    """A deep copy of `model` whose parameters are empty meta tensors (same shapes, dtypes, requires_grad, ties):
    the module tree without a second copy of the weights. Buffers (rotary frequencies) are copied."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)



def silence_trainer(trainer, progress: bool):
    """Without progress bars the Trainer prints its log dicts instead; drop those too."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer
