"""Run directories: written whole or not at all, each complete on its own.

A workflow writes into a hidden temporary sibling of `--out` and renames it into place only
when everything succeeded, so a crash, a bad input or Ctrl-C never leaves a half-written run
that `report` would later read as finished.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from clinpeft.errors import ClinpeftError


def check_out_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing non-empty `--out` unless `overwrite`: results are never silently replaced."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ClinpeftError(f"--out {out} already exists; choose a new directory or pass --overwrite")
    return out


def is_main_process() -> bool:
    """True on the one process that writes results (always, outside `accelerate launch`)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


@contextlib.contextmanager
def atomic_run_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` when the block finishes without error.

    Under `accelerate launch` every process runs the whole recipe (collectives need them all),
    but only the main process's directory is renamed into place; the others are discarded.
    """
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
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


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
