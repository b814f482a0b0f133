"""Cores, threads, progress bars, step clocks and loss curves: the CLI and the sweep workers use them too, so this
module imports no deep-learning library at import time (torch / transformers only inside the functions)."""

from __future__ import annotations

import os

from clinpeft.errors import ClinpeftError

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
