"""Finding finished run directories and reading what their JSON files recorded.

A pretraining run holds run.json (kind "pretrain"), a fine-tuning run metrics.json (kind "finetune").
Each run is read as its parsed JSON object plus "_dir" (the run directory, a Path). Values are read
leniently (a missing or malformed optional value reads as None) so that old run directories still report.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from clinpeft import methods
from clinpeft.errors import ClinpeftError
from clinpeft.run_files import METRICS, RUN_RECORD, read_record


@dataclass
class Row:
    """The runs of one Table 3 row: its printed name and its runs by task (lower-case task name)."""

    name: str
    runs: dict[str, dict]


# --------------------------------------------------------------------------- finding runs


def find_runs(paths: Iterable[str | Path]) -> tuple[list[dict], list[dict]]:
    """Each path is a run dir or any folder above run dirs (searched recursively for run.json /
    metrics.json). Returns (pretrain_runs, finetune_runs), each dict the parsed JSON plus "_dir"
    (a Path). A path that does not exist, or holds no runs -> ClinpeftError naming it. A corrupt
    JSON -> ClinpeftError naming the file.

    A run.json counts as a pretraining run when its "kind" is "pretrain" (or absent); a
    metrics.json as a fine-tuning run when its "kind" is "finetune" (or absent). Hidden folders
    (e.g. the `.name.tmp-*` folders of runs still being written) and unfinished `NAME.partial/`
    training runs are not searched. A run reached
    through two of the paths is read once. Runs are sorted by directory.
    """
    pretrain: dict[Path, dict] = {}
    finetune: dict[Path, dict] = {}
    paths = list(paths)
    if not paths:
        raise ClinpeftError("no run directories given; pass the --out folder of a pretrain or finetune run")
    for path in map(Path, paths):
        if not path.exists():
            raise ClinpeftError(f"{path} does not exist; pass a run directory or a folder above run directories")
        n_found = 0
        for file in _run_files(path):
            record = read_record(file, hint="re-run that step or remove its directory")
            kind = record.get("kind")
            if file.name == RUN_RECORD and kind in (None, "pretrain"):
                found = pretrain
            elif file.name == METRICS and kind in (None, "finetune"):
                found = finetune
            else:
                continue
            n_found += 1
            record["_dir"] = file.parent
            found.setdefault(file.resolve(), record)
        if n_found == 0:
            raise ClinpeftError(
                f"{path} holds no {RUN_RECORD} (pretraining) or {METRICS} (fine-tuning) run; "
                "pass the --out folder of a finished run, or a folder above such folders"
            )
    by_dir = lambda run: str(run["_dir"])  # noqa: E731
    return sorted(pretrain.values(), key=by_dir), sorted(finetune.values(), key=by_dir)


def _run_files(path: Path) -> list[Path]:
    """run.json / metrics.json files at or below `path`, skipping hidden subfolders."""
    if path.is_file():
        if path.name in (RUN_RECORD, METRICS):
            return [path]
        raise ClinpeftError(f"{path} is a file; pass a run directory (holding {RUN_RECORD} or {METRICS})")
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".partial"))
        files += [Path(root) / name for name in sorted(names) if name in (RUN_RECORD, METRICS)]
    return files


# --------------------------------------------------------------------------- reading values


def number(value) -> float | None:
    """A finite-or-infinite float from a JSON value; None for missing, null, NaN, bools, text."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


def integer(value) -> int | None:
    """A JSON value rounded to an int; None when `number` gives None or an infinity."""
    result = number(value)
    return int(round(result)) if result is not None and math.isfinite(result) else None


def required_text(run: dict, key: str) -> str:
    """A fine-tuning run's non-blank text value `key`, stripped; missing -> ClinpeftError naming the file."""
    value = run.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ClinpeftError(
            f"{Path(run['_dir']) / METRICS}: no \"{key}\"; it was not written by `clinpeft finetune`, "
            f"add \"{key}\" or remove the directory"
        )
    return value.strip()


def recorded_test(run: dict) -> dict:
    """A fine-tuning run's "test" metrics as recorded in metrics.json; {} when missing or not an object."""
    test = run.get("test")
    return test if isinstance(test, dict) else {}


def recorded_auroc(run: dict) -> float | None:
    """The recorded test AUROC (a fraction), None when missing."""
    return number(recorded_test(run).get("auroc"))


def recorded_ci(run: dict) -> tuple[float, float] | None:
    """The 95% interval of the test AUROC recorded in metrics.json (fractions), None when missing or not finite."""
    ci = recorded_test(run).get("auroc_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        try:
            lo, hi = float(ci[0]), float(ci[1])
        except (TypeError, ValueError):
            return None
        return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None
    return None


def base_name(run: dict) -> str:
    """Display name of a run's base model: "base_model_name", else the last part of "base_model"."""
    name = run.get("base_model_name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    path = run.get("base_model")
    if isinstance(path, str) and path.strip():
        return Path(path.strip().rstrip("/")).name or path.strip()
    return "(unknown base model)"


def table3_base(run: dict) -> str:
    """The base model as Table 3 groups rows: runs whose classifier pools the mean of the note's
    tokens (model.pooling=mean) form their own block, "LLaMA (mean pooling)", beside the
    last-token rows of the same base."""
    return base_name(run) + (" (mean pooling)" if run.get("pooling") == "mean" else "")


# --------------------------------------------------------------------------- the linear probe rows

PROBE_KIND = "probe"


def probe_runs(finetune_runs: Iterable[dict]) -> list[dict]:
    """Table 3 rows of the linear probes the fine-tuning runs recorded (metrics.json "probe": logistic
    regression on the frozen model's features): one pseudo-run per (base block, frozen model, task), the
    frozen model being the base, or the base + the clinical adapter for clinical_* variants. Its test AUROC is
    the probe's; it has no predictions.csv (no bootstrap interval). Row name: "<base> (linear probe)" or
    "<base> + Clinical LoRA (linear probe)"."""
    found: dict[tuple, dict] = {}
    for run in finetune_runs:
        probe = run.get("probe")
        if not isinstance(probe, dict) or number(probe.get("test")) is None:
            continue
        variant = str(run.get("variant", "")).strip()
        entry = methods.VARIANTS.get(variant)
        clinical = run.get("clinical_adapter") if entry is not None and entry.needs_clinical else None
        base = table3_base(run)
        frozen = base
        if clinical:
            frozen += f" + Clinical {methods.method_display_name(run.get('clinical_method') or 'lora')}"
        task = str(run.get("task", "")).strip()
        key = (base, frozen, str(clinical or ""), task.lower())
        if key in found:
            continue
        found[key] = {
            "kind": PROBE_KIND, "task": task, "task_type": run.get("task_type"), "variant": PROBE_KIND,
            "row": f"{frozen} (linear probe)", "base_model_name": base_name(run), "base_model": run.get("base_model"),
            "pooling": run.get("pooling"), "model_kind": run.get("model_kind"),
            "val": {"auroc": probe.get("val")}, "test": {"auroc": probe.get("test")},
            "_dir": Path(run["_dir"]) / PROBE_KIND,  # predictions.csv + labels.txt (older runs: no such folder)
        }
    return list(found.values())


def guard_warnings(finetune_runs: Iterable[dict]) -> list[str]:
    """The guard's lines recorded by `clinpeft finetune` (metrics.json "guard"), each prefixed by its run."""
    lines = []
    for run in finetune_runs:
        guard = run.get("guard")
        for line in (guard.get("warnings") or []) if isinstance(guard, dict) else []:
            lines.append(f"{run['_dir']}: {str(line).removeprefix('warning: ')}")
    return lines
