"""Small helpers both recipes share: Trainer arguments, precision, progress bars, checkpoints."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from transformers import TrainerCallback

from clinpeft.config import TrainSection
from clinpeft.errors import ClinpeftError, Interrupted
from clinpeft.rundir import last_checkpoint


def precision_flags(setting: str) -> dict:
    """TrainingArguments bf16/fp16 flags. auto: bf16 on GPUs that support it, fp32 elsewhere."""
    import torch  # here, not at the top: the CLI sets progress bars before any model work

    if setting == "auto":
        setting = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": setting == "bf16", "fp16": setting == "fp16"}


def training_arguments(train: TrainSection, output_dir: Path, progress: bool = True, **extra):
    """The paper's hyperparameters as HF TrainingArguments.

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
        **precision_flags(train.precision),
        **{"save_strategy": "no", **extra},
    )


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

    Under DDP the decision is all-reduced so every process saves at the same step.

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
            import torch
            from safetensors.torch import load_file

            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in load_file(str(saved)).items():
                    params[name].copy_(value.to(params[name].device))
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
        params = dict(model.named_parameters())
        trainable = {n: p.detach().cpu().contiguous() for n, p in params.items() if p.requires_grad}
        if args.should_save and len(trainable) < len(params):
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
    """The flags OR-ed over every DDP process (unchanged in a single process)."""
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
