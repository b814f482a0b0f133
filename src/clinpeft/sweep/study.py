"""A sweep's definition and its Optuna study: storage, sampler, pruner, counting, and dead workers.

    sweep = setup("configs/demo/sweep_lora.yaml", [], trials=6)   # everything checked, no trial yet
    prepare_out(sweep, out, overwrite=False)                       # sweep.json, or a matching resume
    study = open_study(sweep, out)                                 # the journal file or the database

Dead workers. Journal file (one machine): a RUNNING trial whose worker process (host, pid, start
time: one user attribute, `worker`) no longer exists is failed and re-queued, under the same file
lock the workers ask under. Database (RDBStorage): Optuna's heartbeat, every HEARTBEAT_INTERVAL_S.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from clinpeft.config import Section, config_from_tree, format_override, parse_override, read_recipe
from clinpeft.errors import ClinpeftError
from clinpeft.run_files import read_record
from clinpeft.rundir import atomic_write, write_json
from clinpeft.sweep.space import STEPS, Param, build_search_space

SAMPLERS = ("gp", "tpe", "random")
PRUNERS = ("none", "median")
OBJECTIVES = {"pretrain": ("val_ppl", "minimize"), "finetune": ("val_auroc", "maximize")}
DEFAULT_VAL_FRACTION = 0.1  # pretrain sweeps need a validation split; the share of train patients


class SweepSection(Section):
    """A sweep recipe's `sweep:` section: its values typed and ranged like every config section's, so a bad one is
    one line naming sweep.KEY before any trial (tests/test_fault_suite.py walks these fields too)."""

    step: Literal["pretrain", "finetune"] | None = None  # None: told by the recipe's sections (infer_step)
    tasks: list[str] | None = None  # finetune: task directories the objective averages over (None: task.path)
    paper_space: bool = True  # start from the paper's space for the method (A.2 / B.2); false: `search:` only
    n_startup_trials: int | None = Field(None, ge=1)  # random trials before the GP / TPE (None: --trials // 3, >= 2)


class SweepRecipe(Section):
    """The sweep keys of a sweep recipe (the rest is a pretrain or finetune recipe)."""

    sweep: SweepSection = SweepSection()


SWEEP_KEYS = set(SweepSection.model_fields)

HEARTBEAT_INTERVAL_S = 60  # RDB storage: a worker records its trial's heartbeat this often
GRACE_PERIOD_S = 180  # RDB storage: a trial without a heartbeat for this long is stale
MAX_RETRIES = 2  # re-queue a trial whose worker died at most this many times
ORPHAN_AFTER_S = 60  # journal: a RUNNING trial that never recorded its `worker` is stale after this
LOCK_NAME = ".ask.lock"  # in the sweep directory: asking for a trial and recovering dead ones


# --------------------------------------------------------------------------------------------
# the sweep: recipe + search space + objective, fixed for the life of the study


@dataclass
class Sweep:
    step: str  # pretrain | finetune
    recipe: str
    base: dict  # the recipe without its sweep keys
    overrides: list[str]  # config overrides from the command line (and defaults the sweep set)
    params: list[Param]
    tasks: list[str]  # finetune: the task directories the objective averages over
    objective: str
    direction: str
    trials: int
    sampler: str = "gp"
    seed: int = 0
    n_startup_trials: int = 2
    pruner: str = "none"
    study_name: str = ""
    storage: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rdb(self) -> bool:
        """A database URL (RDBStorage, with heartbeats), not the journal file."""
        return bool(self.storage) and "://" in self.storage

    def config(self, point: dict | None = None, task: str | None = None):
        extra = [format_override(key, value) for key, value in (point or {}).items()]
        extra += [format_override("task.path", task)] if task else []
        return config_from_tree(STEPS[self.step], self.base, [*self.overrides, *extra], self.recipe)

    def identity(self) -> dict:
        """What a resumed study must share with the first run (not --trials, --workers, --sampler)."""
        return {"step": self.step, "objective": self.objective, "direction": self.direction,
                "params": [asdict(p) for p in self.params], "tasks": self.tasks,
                "base_config": self.config().model_dump(mode="json")}


def infer_step(tree: dict, where: str) -> str:
    if {"peft", "data"} & set(tree):
        return "pretrain"
    if {"task", "variant", "lora", "clinical_adapter"} & set(tree):
        return "finetune"
    raise ClinpeftError(f"{where}: cannot tell a pretrain from a finetune recipe; add `sweep: {{step: finetune}}` "
                        "(or pretrain)")


def split_overrides(overrides: list[str], search: dict, section: dict) -> list[str]:
    """search.KEY=... goes into `search`, sweep.KEY=... into `section`; returns the config overrides."""
    config_overrides = []
    for item in overrides:
        path, value = parse_override(item)
        if path[0] == "search" and len(path) > 1:
            search[".".join(path[1:])] = value
        elif path[0] == "sweep" and len(path) == 2:
            section[path[1]] = value
        else:
            config_overrides.append(item)
    return config_overrides


def check_tasks(tasks: list[str], recipe: str) -> None:
    if not all(tasks):
        raise ClinpeftError(f"{recipe}: no task to tune on; set task.path=DIR or sweep.tasks=[DIR, ...]")
    if len(set(Path(t).name for t in tasks)) != len(tasks):
        raise ClinpeftError(f"{recipe}: sweep.tasks: two tasks share a directory name ({tasks}); "
                            "each trial writes one run per task name")
    for task in tasks:
        if not Path(task).is_dir():
            raise ClinpeftError(f"{recipe}: task directory {task} not found (sweep.tasks / task.path)")


def setup(recipe: str, overrides: list[str], *, trials: int, sampler: str = "gp", seed: int = 0, pruner: str = "none",
          study_name: str | None = None, storage: str | None = None, out: str | Path = "sweep") -> Sweep:
    """Read and validate everything a sweep needs; raises ClinpeftError before any trial otherwise."""
    tree = read_recipe(recipe)
    search, section = tree.pop("search", None) or {}, tree.pop("sweep", None) or {}
    if not isinstance(section, dict):
        raise ClinpeftError(f"{recipe}: sweep: expected a mapping of {', '.join(sorted(SWEEP_KEYS))}")
    if not isinstance(search, dict):
        raise ClinpeftError(f"{recipe}: search: expected a mapping of config keys to choices or ranges, e.g. "
                            "search: {train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}}")
    config_overrides = split_overrides(overrides, search, section)
    section = config_from_tree(SweepRecipe, {"sweep": section}, (), recipe).sweep
    if trials < 1:
        raise ClinpeftError(f"--trials {trials}: need at least 1")
    if sampler not in SAMPLERS or pruner not in PRUNERS:
        raise ClinpeftError(f"--sampler {sampler} / --pruner {pruner}: choose from {SAMPLERS} / {PRUNERS}")
    step = section.step or infer_step(tree, recipe)
    if step not in STEPS:
        raise ClinpeftError(f"{recipe}: sweep.step={step!r}; use pretrain or finetune")
    notes = []
    base_config = config_from_tree(STEPS[step], tree, config_overrides, recipe)
    tasks: list[str] = []
    if step == "pretrain":
        if pruner != "none":
            raise ClinpeftError("--pruner: pretraining reports no intermediate validation perplexity to prune on; "
                                "use --pruner none")
        if base_config.data.val_fraction == 0:
            # tune on a validation split, never on the test split: carve one from the train patients
            config_overrides.append(f"data.val_fraction={DEFAULT_VAL_FRACTION}")
            notes.append(f"data.val_fraction was 0: the sweep holds out {DEFAULT_VAL_FRACTION} of the train patients "
                         "as the validation split it tunes on (set data.val_fraction to choose)")
    else:
        tasks = [str(t) for t in section.tasks or [base_config.task.path]]
        check_tasks(tasks, recipe)
    params = build_search_space(step, tree, config_overrides, search, section.paper_space, recipe)
    objective, direction = OBJECTIVES[step]
    # GP: a few random points first, then the Gaussian process. Optuna's default (10) would leave a
    # 20-trial budget half random; a third of the budget (at least 2) keeps the GP in charge.
    startup = section.n_startup_trials or max(2, trials // 3)
    return Sweep(step=step, recipe=str(recipe), base=tree, overrides=config_overrides, params=params, tasks=tasks,
                 objective=objective, direction=direction, trials=trials, sampler=sampler, seed=seed,
                 n_startup_trials=startup, pruner=pruner, study_name=study_name or Path(out).resolve().name,
                 storage=storage, notes=notes)


# --------------------------------------------------------------------------------------------
# the study: storage, sampler, pruner


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask/tell with a heartbeat: Optuna warns because optimize() beats for you; Heartbeat below does it
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def open_storage(url: str | None, out: Path):
    """Default: a journal file in the sweep directory (file locks, several processes, nothing to
    start). A URL (postgresql://, mysql://, sqlite:///): RDBStorage with Optuna's heartbeat, so a
    trial of a dead worker is failed after GRACE_PERIOD_S and re-queued."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if url is None or "://" not in url:
        path = Path(url) if url else out / "study.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
    except (ImportError, ModuleNotFoundError) as exc:
        raise ClinpeftError(f"--storage {redact(url)}: database driver missing ({exc}); for PostgreSQL: "
                            "pip install 'clinpeft[postgres]'") from None
    except optuna.exceptions.StorageInternalError as exc:
        raise ClinpeftError(f"--storage {redact(url)}: cannot connect ({exc}); check the URL and that the server "
                            "is reachable") from None


def redact(url: str | None) -> str | None:
    """The storage URL without its password (sweep.json and messages)."""
    if not url or "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url


def make_sampler(sweep: Sweep, seed: int):
    import optuna

    if sweep.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=sweep.n_startup_trials)
    if sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.n_startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(sweep: Sweep):
    import optuna

    if sweep.pruner == "median":
        # below the median of earlier trials at the same evaluation (task, epoch): stop. Two full
        # trials first, so that there is a median to compare with.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def open_study(sweep: Sweep, out: Path, worker: int = 0):
    import optuna

    storage = open_storage(sweep.storage, out)
    probe = optuna.load_study(study_name=sweep.study_name, storage=storage) if sweep.study_name in \
        optuna.get_all_study_names(storage) else None
    # Seeded, but never the same sequence twice: per worker, and moved on by what the study has
    # (a resumed random start would otherwise propose the first points again).
    seed = sweep.seed + 7919 * worker + (len(probe.trials) if probe else 0)
    return optuna.create_study(study_name=sweep.study_name, storage=storage, direction=sweep.direction,
                               sampler=make_sampler(sweep, seed), pruner=make_pruner(sweep), load_if_exists=True)


def ask_lock(out: Path):
    """The file lock the workers of this machine ask for trials and recover dead ones under."""
    import filelock

    return filelock.FileLock(str(out / LOCK_NAME))


# --------------------------------------------------------------------------------------------
# the sweep directory


def prepare_out(sweep: Sweep, out: Path, overwrite: bool) -> None:
    """Create the sweep directory, or check that an existing one holds this same sweep (resume)."""
    spec = out / "sweep.json"
    if out.exists() and overwrite:
        shutil.rmtree(out)
        if sweep.rdb:
            import optuna

            try:
                optuna.delete_study(study_name=sweep.study_name, storage=open_storage(sweep.storage, out))
            except KeyError:
                pass
    if out.exists() and any(out.iterdir()) and not spec.is_file():
        raise ClinpeftError(f"--out {out} exists and is not a sweep directory (no sweep.json); choose a new directory")
    identity = sweep.identity()
    if spec.is_file():
        previous = read_record(spec)
        if previous.get("identity") != identity:
            changed = [k for k in identity if previous.get("identity", {}).get(k) != identity[k]]
            raise ClinpeftError(f"{spec}: this directory holds a sweep with a different {', '.join(changed)}; "
                                "rerun the same recipe and search space to resume, or choose a new --out "
                                "(or --overwrite to start over)")
        print(f"resuming the sweep in {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    record = {"recipe": sweep.recipe, "overrides": sweep.overrides, "study": sweep.study_name,
              "storage": redact(sweep.storage) or "study.journal", "sampler": sweep.sampler,
              "seed": sweep.seed, "n_startup_trials": sweep.n_startup_trials, "pruner": sweep.pruner,
              "trials": sweep.trials, "search": [p.describe() for p in sweep.params], "identity": identity}
    atomic_write(spec, lambda tmp: write_json(tmp, record))


# --------------------------------------------------------------------------------------------
# counting trials, and the trials of dead workers


def counts(trial) -> bool:
    """Does a trial count toward --trials? Running, complete, pruned, or failed by its own error
    (the `error` attr); not the trials of dead workers, which are re-queued instead."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def n_counted(study, before: int | None = None) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t) and (before is None or t.number < before))


def process_alive(pid: int, started: float | None) -> bool:
    import psutil

    try:  # the same pid with another start time is a new process that reused the number
        process = psutil.Process(pid)
        same = started is None or abs(process.create_time() - started) < 1.0  # seconds
        return process.status() != psutil.STATUS_ZOMBIE and same
    except (psutil.NoSuchProcess, ValueError):
        return False


def this_process() -> dict:
    """This worker's identity: the value of a trial's `worker` user attribute."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time()}


def worker_of(attrs: dict) -> dict | None:
    """The `worker` attribute of a trial, or None while it has none. Journals written before it was one
    attribute hold `host`, `pid` and `pid_started` side by side: read those when all are there."""
    if "worker" in attrs:
        return attrs["worker"]
    if {"host", "pid"} <= set(attrs):
        return {"host": attrs["host"], "pid": attrs["pid"], "pid_started": attrs.get("pid_started")}
    return None


def requeue(study, trial, reason: str) -> None:
    """Fail a trial whose worker died (not counted) and queue its parameters again."""
    import optuna
    from optuna.trial import TrialState

    try:
        optuna.trial.Trial(study, trial._trial_id).set_user_attr("died", reason)  # Trial(study, id): public
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # finished meanwhile (told, or failed and re-queued by another worker): nothing to do
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    retries = trial.user_attrs.get("retries", 0)
    if retries < MAX_RETRIES:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.user_attrs.get("retry_of", trial.number),
                                                      "retries": retries + 1})
    print(f"trial {trial.number}: {reason}; " + ("re-queued with the same parameters" if retries < MAX_RETRIES
                                                   else f"not re-queued (died {retries + 1} times)"), flush=True)


def recover_dead_trials(study, rdb: bool) -> None:
    """RUNNING trials whose worker is gone: RDB storage by Optuna's heartbeat (its retry callback
    re-queues them); the journal file by the worker's pid on this host.

    Journal: call it holding ask_lock(out). A worker asks for its trial and records its `worker`
    attribute (one write) under that lock, so here every RUNNING trial either has its whole identity
    or its worker was killed between the two writes; the latter is left alone for ORPHAN_AFTER_S.
    (Outside the lock, recovery once read a trial between separate `host` and `pid` writes, took the
    missing pid for a dead process and re-queued a trial that was running: one trial too many.)"""
    import optuna
    from optuna.trial import TrialState

    if rdb:
        optuna.storages.fail_stale_trials(study)
        return
    host, now = socket.gethostname(), time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = worker_of(trial.user_attrs)
        if worker is None:
            if trial.datetime_start and now - trial.datetime_start.timestamp() > ORPHAN_AFTER_S:
                requeue(study, trial, "its worker never recorded itself")
        elif worker.get("host") == host and not process_alive(worker.get("pid", -1), worker.get("pid_started")):
            requeue(study, trial, f"its worker (pid {worker.get('pid')}) is gone")


class Heartbeat:
    """RDB storage in ask/tell mode: record the trial's heartbeat every HEARTBEAT_INTERVAL_S
    (Optuna's optimize() does this itself; a sweep needs ask/tell to count trials exactly)."""

    def __init__(self, study, trial, enabled: bool):
        # study._storage: Optuna wraps the RDBStorage in a cache that forwards heartbeats
        self.storage = study._storage if enabled else None
        self.trial_id, self.stop = trial._trial_id, threading.Event()

    def __enter__(self):
        if self.storage is not None:
            self.storage.record_heartbeat(self.trial_id)
            threading.Thread(target=self._beat, daemon=True).start()
        return self

    def _beat(self):
        while not self.stop.wait(HEARTBEAT_INTERVAL_S):
            self.storage.record_heartbeat(self.trial_id)

    def __exit__(self, *exc):
        self.stop.set()
