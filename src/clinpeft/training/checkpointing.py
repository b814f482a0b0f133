"""Checkpoints of an interrupted run: the Trainer callback that writes them (steps, minutes, signals), the newest
one to resume from, and whole weights under their unwrapped names (FSDP shards gathered)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from clinpeft.config import TrainSection
from clinpeft.errors import Interrupted
from clinpeft.rundir import last_checkpoint

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
        self.restore_signals()

    def restore_signals(self) -> None:
        """Put back the SIGTERM/SIGINT handlers on_train_begin replaced (idempotent). Called at the end of training
        and, by training.fit, also when training raised: else Ctrl-C would stay caught by this object for the rest
        of the process (an in-process caller's next command would no longer stop on SIGINT)."""
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
