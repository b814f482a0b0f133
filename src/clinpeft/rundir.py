"""Run directories: written whole or not at all, each complete on its own.

A workflow writes into a sibling of `--out` and renames it into place only when everything
succeeded, so a crash, a bad input or Ctrl-C never leaves a half-written run that `report` would
later read as finished.

Every command writes into `OUT.partial/` and holds an flock on `OUT.partial/.lock` from the start to
the rename, so two processes never both write one `--out` (the second is refused in one line), and
`--out` is checked again under the lock just before the work:
- short jobs (prepare, evaluate, predict, explain, export, report): `OUT.partial/` is deleted on any
  failure or signal; one left by a SIGKILL holds no checkpoint and is cleared by the next run;
- training (pretrain, finetune; `resumable=True`): `OUT.partial/` also holds the resolved config, the
  Trainer's checkpoints (`OUT.partial/checkpoints/checkpoint-N/`) and the Arrow caches. A failure or
  signal (up to the rename) that leaves a checkpoint keeps only what resumes (RESUMABLE: no copy of the
  notes); one that leaves none removes it. After a SIGKILL the next run clears the rest (_prune, _clear).

What may be overwritten: every finished output holds `.clinpeft-output.json` ({"command": "predict", ...},
MARKER), and `--overwrite` replaces only a folder whose marker names the same command. `--out` equal to,
inside or containing one of the command's inputs is refused with or without `--overwrite`
(check_out_not_input).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from clinpeft.errors import ClinpeftError
from clinpeft.run_files import BUNDLE, CONFIG, METRICS, RUN_RECORD

PARTIAL_SUFFIX = ".partial"
CHECKPOINTS = "checkpoints"  # inside OUT.partial/: the HF Trainer's checkpoint-N folders
LOCK_FILE = ".lock"
RANK_SCRATCH = ".rank-"  # inside OUT.partial/: scratch of the other data-parallel processes, .rank-1, ...
# keys that may change between an interrupted run and its resumption: they do not change the result, or (the
# kernels: threads, attention, compilation, fused loss) compute the same mathematics with other rounding, so a run
# pre-empted on one kind of machine can resume on another
RESUME_FREE_KEYS = {"train.checkpoint_every", "train.checkpoint_minutes", "train.keep_checkpoints", "train.threads",
                    "train.report_to", "train.logging_steps", "train.dataloader_num_workers", "data.num_proc",
                    "model.attn_implementation", "train.compile", "train.fused_loss"}


MARKER = ".clinpeft-output.json"  # in every finished output: the command that wrote it (what --overwrite may replace)
_COMMAND: str | None = None  # the CLI command of this process (set_command); None: called as a library


def set_command(name: str | None) -> None:
    """The command whose outputs this process writes (`predict`, `prepare notes`, ...): recorded in each
    output's MARKER, and the only command whose outputs --overwrite replaces."""
    global _COMMAND
    _COMMAND = name


def written_by(out: Path) -> str | None:
    """The command recorded in `out`'s marker; "" when the folder has none (not a clinpeft output, or older)."""
    try:
        record = json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return ""
    return record.get("command") if isinstance(record, dict) else ""


def check_out_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing non-empty `--out` unless `overwrite`: results are never silently replaced.
    A `--out` that is a file is refused even with --overwrite (a run is a directory), and so is a folder
    another command (or no clinpeft command) wrote: --overwrite replaces only the same command's output."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClinpeftError(f"--out {out} is an existing file, not a directory; choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ClinpeftError(f"--out {out} already exists; choose a new directory or pass --overwrite")
    if out.exists() and any(out.iterdir()):
        writer = written_by(out)
        this = f"`clinpeft {_COMMAND}`" if _COMMAND else "this command"
        if writer == "":
            raise ClinpeftError(f"--out {out} holds files no clinpeft command wrote (no {MARKER}); --overwrite "
                                f"only replaces a previous output of {this}: remove the folder yourself or choose "
                                "another --out")
        if _COMMAND is not None and writer != _COMMAND:
            raise ClinpeftError(f"--out {out} was written by `clinpeft {writer}`; --overwrite only replaces a "
                                f"previous output of {this}: choose another --out")
    if not os.access(out if out.exists() else _existing_parent(out), os.W_OK):
        raise ClinpeftError(f"--out {out}: {_existing_parent(out)} is not writable; choose another --out")
    return out


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


RUN_RECORDS = (RUN_RECORD, BUNDLE, METRICS, MARKER)  # a folder holding one is a run (or an output)


def check_out_not_input(out: str | Path, inputs, what: str = "--out", containers=()) -> None:
    """Refuse an `--out` equal to, inside, or containing one of the command's inputs (a run, a task folder, a
    notes file, the base model), with or without --overwrite: replacing it would delete the input.
    `containers`: inputs that may be folders *of* runs (`report runs --out runs/report`): --out may lie inside
    one of those unless it is itself a run."""
    target = Path(out).expanduser().resolve()
    for item in [*inputs, *containers]:
        if item is None or str(item) in ("", "demo", "demo-bert"):
            continue
        source = Path(str(item)).expanduser()
        if not source.exists():
            continue
        source = source.resolve()
        if target == source:
            relation = "is"
        elif source in target.parents and (item not in containers or any((source / r).exists() for r in RUN_RECORDS)):
            relation = "is inside"
        elif target in source.parents:
            relation = "contains"
        else:
            continue
        raise ClinpeftError(f"{what} {out} {relation} the input {item}; writing there would replace the input "
                            "(with or without --overwrite): choose an --out outside every input")


def check_free_space(path: str | Path, needed: int, what: str) -> None:
    """Refuse before the work when the filesystem of `path` has less free space than `needed` bytes
    (an estimate of what the run will write), instead of failing with ENOSPC after hours of training."""
    free = shutil.disk_usage(_existing_parent(Path(path))).free
    if free < needed:
        raise ClinpeftError(f"{path}: {free / 1e6:,.1f} MB free on its disk, {what} needs about "
                            f"{needed / 1e6:,.1f} MB; free space or choose an --out on another disk")


def expected_run_bytes(trainable: int, total: int, train, full: bool = False) -> int:
    """What a training run writes, roughly: the saved weights (fp32; the whole model for `full`), plus
    keep_checkpoints checkpoints of weights + Adam's two moments when checkpointing is on."""
    saved = 4 * (total if full else trainable)
    checkpointing = train.checkpoint_every > 0 or train.checkpoint_minutes > 0
    return saved + (train.keep_checkpoints * (saved + 8 * trainable) if checkpointing else 0)


def partial_dir(out: str | Path) -> Path:
    """Where an unfinished training run lives: `OUT.partial/` beside `OUT`."""
    out = Path(out)
    return out.parent / f"{out.name}{PARTIAL_SUFFIX}"


def checkpoint_dir(out: str | Path) -> Path:
    """The Trainer's output_dir for checkpoints of the run going to `out` (shared by every DDP process)."""
    return partial_dir(out) / CHECKPOINTS


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None: it can): no trainer_state.json (the Trainer writes it
    last) or one that does not parse, or a file cut short (a disk that filled, a copy that stopped): every
    safetensors file's tensors must lie inside it, every torch file (optimizer.pt, scheduler.pt, rng_state.pth)
    must be a complete zip with right checksums (read as a zip, never unpickled)."""
    from clinpeft.files import check_complete

    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no complete trainer_state.json"
    for file in sorted(path.rglob("*")):
        if file.is_file() and not file.name.startswith(".") and file.suffix in (".safetensors", ".pt", ".pth", ".bin",
                                                                               ".json"):
            try:
                check_complete(file)
            except ClinpeftError:
                return f"{file.relative_to(path)} is truncated or damaged"
    return None


def complete_checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoint-N folders that pass checkpoint_problem, oldest first. A folder a kill interrupted
    mid-write, or one whose files were damaged since, is left out."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT.match(path.name)
        if not match or not path.is_dir() or checkpoint_problem(path):
            continue
        found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def last_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint in `folder` (None: none). Newer incomplete or damaged ones are removed,
    each named in one warning line: resuming falls back to the previous checkpoint."""
    import sys

    complete = complete_checkpoints(folder)
    last = complete[-1] if complete else None
    newest_step = int(_CHECKPOINT.match(last.name).group(1)) if last else -1
    for path in Path(folder).glob("checkpoint-*") if Path(folder).is_dir() else []:
        match = _CHECKPOINT.match(path.name)
        if match and int(match.group(1)) > newest_step and is_main_process():
            problem = checkpoint_problem(path) if path.is_dir() else "not a folder"
            print(f"warning: {path}: {problem}; removed, resuming from "
                  f"{last.name if last else 'the start'}", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True)
    return last


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ between two resolved configs, ignoring RESUME_FREE_KEYS."""
    old, new = flatten(old), flatten(new)
    return sorted(k for k in set(old) | set(new) if k not in RESUME_FREE_KEYS and old.get(k) != new.get(k))


_HELD: dict[str, object] = {}  # OUT.partial paths whose lock this process holds (out_lock): taken once


class _Held:
    """The lock as seen by an inner taker in the same process (the command's out_lock is already held): its
    close() leaves the outer lock alone (flock would refuse a second open of the same file)."""

    def close(self) -> None:
        pass


@contextlib.contextmanager
def out_lock(out: str | Path) -> Iterator[None]:
    """The --out lock from the start of a command (the CLI takes it before the recipe runs, so a second writer is
    refused before loading a model), held until atomic_run_dir renamed the output into place. An OUT.partial/
    made only for the lock is removed again when the command fails early. When --out's parent folder does not
    exist yet, atomic_run_dir takes the lock once it has created it."""
    out = Path(out)
    partial = partial_dir(out)
    if not out.parent.is_dir() or (partial.exists() and not partial.is_dir()) or not is_main_process():
        yield
        return
    created = not partial.exists()
    partial.mkdir(exist_ok=True)
    try:
        handle = _lock(partial)
    except BaseException:
        if created:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    _HELD[str(partial)] = handle
    try:
        yield
    finally:
        _HELD.pop(str(partial), None)
        if partial.is_dir() and [p.name for p in partial.iterdir()] == [LOCK_FILE]:
            shutil.rmtree(partial, ignore_errors=True)  # the command stopped before writing anything
        handle.close()


def _lock(partial: Path):
    """An exclusive, non-blocking flock on OUT.partial/.lock; refuses when another process holds it.
    The OS releases it when the process dies (SIGKILL included), so a stale lock never blocks a rerun."""
    if str(partial) in _HELD and (partial / LOCK_FILE).exists():
        return _Held()
    handle = open(partial / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        out = partial.parent / partial.name[:-len(PARTIAL_SUFFIX)]
        raise ClinpeftError(f"--out {out} is being written by another process (pid {holder}, lock "
                            f"{partial / LOCK_FILE}); wait for it or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def process_rank() -> int:
    """This process's rank under torchrun / accelerate launch (RANK, else LOCAL_RANK); 0 outside them."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """True on the one process that writes results (always, outside `accelerate launch`)."""
    return process_rank() == 0


def _barrier() -> None:
    """Wait for every data-parallel process (no-op outside torchrun / accelerate launch). torch is already
    loaded by then: only training runs have a process group."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def atomic_run_dir(out: str | Path, overwrite: bool = False, *, resumable: bool = False, config: dict | None = None,
                   restart: bool = False) -> Iterator[Path]:
    """Yield a directory that becomes `out` when the block finishes without error.

    Under `accelerate launch` every process runs the whole recipe (collectives need them all),
    but only the main process's directory is renamed into place; the others are discarded.

    resumable: the directory is `OUT.partial/` (see the module docstring). `config` (the resolved
    config as a dict) is written there as config.yaml; a partial run with another config is refused,
    naming the differing keys, unless `restart` (which discards it). The other DDP processes get
    `OUT.partial/.rank-N/` for their scratch files (their checkpoints go to checkpoint_dir(out), shared):
    inside the partial run, so a pre-empted run leaves nothing (no Arrow copy of the notes) beside it, and
    the main process clears them, after every process has left the block, before renaming it to `out`.
    """
    if resumable:
        if is_main_process():
            with _resumable_run_dir(Path(out), overwrite, config, restart) as partial:
                yield partial
        else:
            scratch = partial_dir(out) / f"{RANK_SCRATCH}{process_rank()}"
            scratch.mkdir(parents=True, exist_ok=True)
            try:
                yield scratch
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            _barrier()  # on success only, as the main process (a failed process ends the whole launch)
        return
    if not is_main_process():  # discarded: only the main process's directory becomes `out`
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    out = check_out_dir(out, overwrite)
    partial = partial_dir(out)
    if partial.exists() and not partial.is_dir():
        raise ClinpeftError(f"{partial} is a file; remove it or choose another --out")
    partial.mkdir(parents=True, exist_ok=True)
    lock = _lock(partial)  # held from here to the rename: a second writer of `out` is refused at its start
    try:
        if complete_checkpoints(partial / CHECKPOINTS):
            raise ClinpeftError(f"{partial} holds an unfinished training run with checkpoints; rerun the training "
                                "command that started it to resume it, or choose another --out")
        _clear(partial)  # scratch of a killed earlier run (SIGKILL, power loss): nothing to resume there
        check_out_dir(out, overwrite)  # again, under the lock: another process may have finished `out` meanwhile
        try:
            yield partial
            _finish(partial, out)  # inside: a signal while renaming leaves no half output either
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    finally:
        lock.close()


def _clear(partial: Path) -> None:
    """Empty a stale OUT.partial/ (its lock and other processes' scratch left alone)."""
    for child in partial.iterdir():
        if child.name != LOCK_FILE and not child.name.startswith(RANK_SCRATCH):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


RESUMABLE = (CHECKPOINTS, CONFIG, LOCK_FILE)  # what an interrupted training run keeps in OUT.partial/


def _prune(partial: Path) -> None:
    """Leave in a resumable OUT.partial/ only what the rerun resumes from (RESUMABLE) and the other processes'
    scratch: the notes' Arrow caches, a half-saved adapter or bundle hold note text or a result the rerun
    writes again."""
    for child in partial.iterdir():
        if child.name not in RESUMABLE and not child.name.startswith(RANK_SCRATCH):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _finish(partial: Path, out: Path) -> None:
    """Record the command in the marker, then put OUT.partial/ in place of `out` (the lock still held: the lock
    file travels with the rename and is removed from `out` after it)."""
    from clinpeft._version import __version__

    write_json(partial / MARKER, {"command": _COMMAND, "clinpeft_version": __version__})
    if out.exists():
        shutil.rmtree(out) if out.is_dir() and not out.is_symlink() else out.unlink()
    os.replace(partial, out)
    (out / LOCK_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def _resumable_run_dir(out: Path, overwrite: bool, config: dict | None, restart: bool) -> Iterator[Path]:
    import yaml

    check_out_dir(out, overwrite)
    partial = partial_dir(out)
    if partial.exists() and not partial.is_dir():
        raise ClinpeftError(f"{partial} is a file; remove it or choose another --out")
    fresh = not partial.exists()
    partial.mkdir(parents=True, exist_ok=True)
    lock = _lock(partial)
    try:
        check_out_dir(out, overwrite)  # again, under the lock: another process may have finished `out` meanwhile
        saved = partial / CONFIG
        resuming = not fresh and not restart and bool(complete_checkpoints(partial / CHECKPOINTS))
        if not fresh and not resuming:
            # --restart, or nothing to resume (a run killed before its first checkpoint: its Arrow caches of the
            # notes are removed here, by the next run); another process's scratch may already be in use
            _clear(partial)
        elif resuming:
            _prune(partial)  # a killed run's scratch (Arrow copies of the notes, a half-saved adapter)
        if resuming and saved.exists() and config is not None:
            try:
                old = yaml.safe_load(saved.read_text()) or {}
            except (OSError, yaml.YAMLError):
                old = None
            differing = config_differences(old, config) if isinstance(old, dict) else ["config.yaml (unreadable)"]
            if differing:
                raise ClinpeftError(
                    f"{partial} holds an unfinished run with another config ({', '.join(differing)} differ); "
                    f"rerun with the same settings to resume it, or pass --restart to discard it")
        if config is not None:
            atomic_write(saved, lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False)))
        try:
            yield partial
            _barrier()  # the other processes have left their scratch directories
            # the rename first: a signal while the checkpoints are deleted (GBs for a full fine-tuning) then leaves
            # the finished run in place with a stray checkpoints/ folder, never a finished run a rerun would discard
            _finish(partial, out)  # inside: a signal just before the rename is handled as one during the work
        except BaseException:
            if not partial.is_dir():  # renamed into place already: the run is finished
                raise
            if not complete_checkpoints(partial / CHECKPOINTS):  # nothing to resume from: leave nothing behind
                shutil.rmtree(partial, ignore_errors=True)
            else:  # only what resumes: the Arrow caches of the notes are rebuilt by the rerun, never read back
                _prune(partial)
            raise
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        for scratch in out.glob(f"{RANK_SCRATCH}*"):  # a pre-empted process's, from an earlier attempt
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        lock.close()


def _json_default(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value):
    """JSON has no NaN/inf: write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.write_text(json.dumps(_finite(data), indent=2, default=_json_default) + "\n")
    return path


def atomic_write(path: Path, write) -> Path:
    """`write(tmp_path)` then rename onto `path`: a reader (another worker, a rerun after a crash)
    sees the old file or the new one, never half a file. tmp is a unique sibling (same filesystem)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
