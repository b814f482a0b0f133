"""What both training recipes do the same way: fit (resume -> train -> end mixed precision -> raise if interrupted)
and the tail of the run record (parameters, checkpoints, time, threads, precision, kernels, device, version)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clinpeft._version import __version__
from clinpeft.config import TrainSection
from clinpeft.modeling.base import device_summary
from clinpeft.training.checkpointing import Checkpointing, resume_point
from clinpeft.training.precision import Precision, end_mixed_precision
from clinpeft.training.runtime import loss_curve


@dataclass
class Fitted:
    """A finished fit: the trained model (whole, under FSDP too), the Trainer and what the run record says of it."""

    model: object
    trainer: object
    checkpointing: Checkpointing
    training_loss: float  # the Trainer's mean training loss over this process's steps
    resumed_from: int  # the optimizer step the run resumed from (0: trained in one go)
    train_time: float  # seconds of this process's share of the steps (since the resumption)

    @property
    def steps(self) -> int:
        """Optimizer steps in all, counted once across resumptions."""
        return self.trainer.state.global_step


def fit(trainer, checkpointing: Checkpointing, model, checkpoints: Path, run_dir: Path, progress: bool,
        before_train: Callable[[str | None], None] | None = None) -> Fitted:
    """Train from the newest checkpoint in `checkpoints` (an interrupted run: same data order, schedule, RNG), or
    from the start. `before_train(resume)`: the recipe's last step before the Trainer's own (finetune: the kept
    epoch's state, LP-FT's epoch 0), timed with the fit. After training, scoring runs in the model's own dtype
    (accelerate's autocast wrapper removed, as evaluate/predict score the saved run) on the whole model; an
    interrupted run raises Interrupted, its checkpoint written."""
    resume = resume_point(checkpoints)
    resumed_from = int(Path(resume).name.split("-")[-1]) if resume else 0
    checkpointing.resume = resume
    if resume and progress:
        print(f"resuming from {resume} (optimizer step {resumed_from})")
    started = time.time()
    if before_train is not None:
        before_train(resume)
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    finally:  # training that raised never reached on_train_end: the signal handlers go back here too
        checkpointing.restore_signals()
    end_mixed_precision(trainer)
    model = trainer.consolidated(model)  # FSDP: the whole trained model on every process (else unchanged)
    train_time = time.time() - started
    checkpointing.raise_if_interrupted(trainer.state, run_dir)
    return Fitted(model, trainer, checkpointing, output.training_loss, resumed_from, train_time)


def run_record(fitted: Fitted, train: TrainSection, precision: Precision, threads: int, params: tuple[int, int],
               started: float, attn_implementation: str) -> dict:
    """The keys run.json and metrics.json share: steps and checkpoints, parameters, time, threads, precision,
    kernels, device and version. params: (trainable, total); started: the run's time.time() at its start."""
    trainable, total = params
    kernels = {"attn_implementation": attn_implementation, "compile": train.compile}
    if hasattr(train, "fused_loss"):  # pretraining's train section only
        kernels["fused_loss"] = train.fused_loss
    return {
        "optimizer_steps": fitted.steps,  # in all, counted once across resumptions
        "resumed_from_step": fitted.resumed_from,  # 0: trained in one go
        "fsdp": fitted.trainer.sharding,  # sharded training: FSDP version, processes, units per layer class (None: not)
        "loss_curve": loss_curve(fitted.trainer.state),  # every logged step once (a resumption continues the history)
        "checkpoints_written": fitted.checkpointing.saves,  # by this process
        "checkpoint_time_s": fitted.checkpointing.save_seconds,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "train_time_s": fitted.train_time,  # this process's share (since the resumption)
        "wall_time_s": time.time() - started,
        "cpu_threads": threads,
        "precision": precision.train,  # train.precision as resolved on this machine and model (auto -> fp32 or bf16)
        "kernels": kernels,
        **device_summary(),
        "clinpeft_version": __version__,
    }
