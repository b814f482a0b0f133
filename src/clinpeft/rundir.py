"""Run directories: written whole or not at all, each complete on its own.

A workflow writes into a sibling of `--out` and renames it into place only when everything
succeeded, so a crash, a bad input or Ctrl-C never leaves a half-written run that `report` would
later read as finished.

Two kinds:
- short jobs (prepare, evaluate): a hidden temporary sibling, deleted on any failure;
- training (pretrain, finetune; `resumable=True`): a visible `OUT.partial/` holding the resolved
  config, the Trainer's checkpoints (`OUT.partial/checkpoints/checkpoint-N/`) and the Arrow caches.
  A failure that leaves a checkpoint keeps it (the same command resumes from it); one that leaves
  none removes it. A lock file (`OUT.partial/.lock`, an flock) keeps two processes off one `--out`.
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


def check_out_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing non-empty `--out` unless `overwrite`: results are never silently replaced.
    A `--out` that is a file is refused even with --overwrite (a run is a directory)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClinpeftError(f"--out {out} is an existing file, not a directory; choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ClinpeftError(f"--out {out} already exists; choose a new directory or pass --overwrite")
    if not os.access(out if out.exists() else _existing_parent(out), os.W_OK):
        raise ClinpeftError(f"--out {out}: {_existing_parent(out)} is not writable; choose another --out")
    return out


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


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


def complete_checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoint-N folders whose trainer_state.json (the Trainer writes it last) parses, oldest first.
    A folder a kill interrupted mid-write has none, or half of one, and is left out."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT.match(path.name)
        if not match or not path.is_dir():
            continue
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def last_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint in `folder` (None: none); newer incomplete ones are removed."""
    complete = complete_checkpoints(folder)
    last = complete[-1] if complete else None
    newest_step = int(_CHECKPOINT.match(last.name).group(1)) if last else -1
    for path in Path(folder).glob("checkpoint-*") if Path(folder).is_dir() else []:
        match = _CHECKPOINT.match(path.name)
        if match and int(match.group(1)) > newest_step and is_main_process():
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


def _lock(partial: Path):
    """An exclusive, non-blocking flock on OUT.partial/.lock; refuses when another process holds it.
    The OS releases it when the process dies (SIGKILL included), so a stale lock never blocks a rerun."""
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
    main = is_main_process()
    out = check_out_dir(out, overwrite) if main else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not main:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp made it 0700; the folder follows the umask like every file in it
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


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
        saved = partial / "config.yaml"
        if not fresh and restart:
            for child in partial.iterdir():  # another process's scratch may already be in use
                if child.name != LOCK_FILE and not child.name.startswith(RANK_SCRATCH):
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        elif not fresh and saved.exists() and config is not None:
            try:
                old = yaml.safe_load(saved.read_text()) or {}
            except (OSError, yaml.YAMLError):
                old = None
            differing = config_differences(old, config) if isinstance(old, dict) else ["config.yaml (unreadable)"]
            if differing and complete_checkpoints(partial / CHECKPOINTS):
                raise ClinpeftError(
                    f"{partial} holds an unfinished run with another config ({', '.join(differing)} differ); "
                    f"rerun with the same settings to resume it, or pass --restart to discard it")
        if config is not None:
            atomic_write(saved, lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False)))
        try:
            yield partial
        except BaseException:
            if not complete_checkpoints(partial / CHECKPOINTS):  # nothing to resume from: leave nothing behind
                shutil.rmtree(partial, ignore_errors=True)
            raise
        _barrier()  # the other processes have left their scratch directories
        shutil.rmtree(partial / CHECKPOINTS, ignore_errors=True)
        for scratch in partial.glob(f"{RANK_SCRATCH}*"):  # a pre-empted process's, from an earlier attempt
            shutil.rmtree(scratch, ignore_errors=True)
        (partial / LOCK_FILE).unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(partial, out)
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


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ClinpeftError(f"{path} not found; is this a finished clinpeft run directory?") from None
    except json.JSONDecodeError as exc:
        raise ClinpeftError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
