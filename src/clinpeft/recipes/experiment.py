"""The paper's Table 3 as one resumable command: base models x variants x tasks, plus encoder baselines.

    clinpeft experiment configs/demo/table3.yaml --out t3            # tiny, CPU, ~5 min
    clinpeft experiment configs/llama-7b/table3.yaml data.tasks_dir=/data/tasks --out runs/table3

A grid recipe (ExperimentConfig below) lists models; each model has a base (a LLaMA-family model
or a BERT-family encoder), the variants to run on it and, for the clinical_* variants, its
clinical adapter: an existing `clinpeft pretrain` run, or a pretraining recipe that is run first
into OUT/<model>/pretrain/. Every cell is an ordinary `clinpeft finetune` run directory:

    OUT/data/                          the synthetic demo data (data.demo), if asked for
    OUT/<model>/pretrain/              the clinical adapter (clinical.recipe), if asked for
    OUT/<model>/<variant>/<task>/      one finetune run (metrics.json, predictions, the bundle)
    OUT/<model>/<variant>/<task>.failed.json   the error of a cell that failed (removed once it succeeds)
    OUT/experiment.yaml, experiment.json       the resolved grid, and the state of every cell
    OUT/report/                        table3.md/.csv (and table2 for the pretraining runs), clinical.md,
                                       index.html (report.html: true), via `report`

Resumable: a run directory appears only when complete (atomic_run_dir), so a cell whose
metrics.json exists is finished and is skipped on rerun; an interrupted cell continues from the
checkpoint in its `<cell>.partial/` (or runs again if it had none); a failed cell records its
error, the others go on, and a rerun retries it.
All cell configs are built and validated before any training, so a typo stops the grid at once.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from clinpeft import methods
from clinpeft.config import (
    FinetuneConfig,
    PretrainConfig,
    Section,
    Seed,
    Variant,
    config_to_yaml,
    find_recipe,
    format_override,
    load_config,
)
from clinpeft.data.definitions import TASKS
from clinpeft.errors import ClinpeftError
from clinpeft.files import read_text
from clinpeft.run_files import METRICS, RUN_RECORD, read_record
from clinpeft.rundir import atomic_write, write_json

PRETRAIN_DIR = "pretrain"  # OUT/<model>/pretrain/: a clinical adapter the grid trained itself
STATE_FILE = "experiment.json"
FAILED_SUFFIX = ".failed.json"


# --------------------------------------------------------------------------- the grid recipe


class ClinicalSpec(Section):
    """Where a model's clinical adapter comes from: an existing pretrain run, or a recipe to run."""

    run: str | None = None  # a `clinpeft pretrain` run directory (adapter or full model)
    recipe: str | None = None  # a pretraining recipe, run into OUT/<model>/pretrain/ (once)
    overrides: list[str] = []  # key=value for that recipe (model.base and, for demo data, data.paths are set)

    @model_validator(mode="after")
    def _one_source(self) -> "ClinicalSpec":
        if (self.run is None) == (self.recipe is None):
            raise ValueError("give exactly one of clinical.run (an existing pretrain run) or clinical.recipe")
        return self


class GridModel(Section):
    """One block of Table 3 rows: a base model and the variants run on it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._+*()-]*$")  # Table 3 row label and OUT/<name>/
    base: str  # model.base: a local model directory (LLaMA-family or BERT-family), demo, or demo-bert
    variants: list[Variant] = Field(min_length=1)  # encoders: full (head, lora also work)
    clinical: ClinicalSpec | None = None  # required by clinical_* variants
    recipe: str | None = None  # finetune recipe for this model's cells (default: finetune.recipe)
    overrides: list[str] = []  # key=value for this model's cells, after finetune.overrides


class GridData(Section):
    """The task data: the synthetic demo data, or a folder of task directories."""

    demo: Literal["quick", "default"] | None = None  # write the synthetic demo data into OUT/data (this size)
    tasks_dir: str | None = None  # else: a folder with one task directory per task (train/val/test.csv, labels.txt)
    tasks: list[str] = list(TASKS)  # task directory names = Table 3 columns
    corpus: list[str] = []  # pretraining notes for clinical.recipe (demo data: OUT/data/corpus/*)
    seed: Seed = 0  # of the demo data

    @model_validator(mode="after")
    def _one_source(self) -> "GridData":
        if (self.demo is None) == (self.tasks_dir is None):
            raise ValueError("set exactly one of data.demo (quick|default: synthetic demo data) or data.tasks_dir")
        return self


class GridFinetune(Section):
    recipe: str | None = None  # the finetune recipe every cell starts from (None: the paper's defaults)
    overrides: list[str] = []  # key=value applied to every cell


class GridReport(Section):
    """`clinpeft report` options for OUT/report (see `clinpeft report --help`)."""

    compare: str | None = None  # a Table 3 row (as printed): paired bootstrap p-value of every cell against it
    bootstrap_resamples: int = Field(1000, ge=0)  # of the test notes, for the 95% intervals (0: none)
    bootstrap_seed: Seed = 0
    html: bool = True  # OUT/report/index.html: every table, plot and a model card per run in one page
    subgroups: list[str] = []  # task CSV columns (e.g. [gender, age_group]) to break the metrics down by
    specificity: float = Field(0.9, gt=0.0, lt=1.0)  # operating point of binary tasks, fixed on validation
    min_positives: int = Field(5, ge=1)  # flag classes with fewer test examples than this (count of notes)


class ExperimentConfig(Section):
    data: GridData
    finetune: GridFinetune = GridFinetune()
    models: list[GridModel] = Field(min_length=1)
    report: GridReport = GridReport()

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique (they are directories and row labels): {duplicates}")
        for model in self.models:
            if any(methods.variant(v).needs_clinical for v in model.variants) and model.clinical is None:
                raise ValueError(f"model {model.name}: clinical_* variants need clinical.run or clinical.recipe")
        return self


# --------------------------------------------------------------------------- cells


@dataclass
class Cell:
    model: str
    variant: str
    task: str
    out: Path
    config: FinetuneConfig  # validated before any training; clinical_adapter may not exist yet

    @property
    def label(self) -> str:
        return f"{self.model}/{self.variant}/{self.task}"

    @property
    def failed_file(self) -> Path:
        return self.out.with_name(self.out.name + FAILED_SUFFIX)

    def finished(self) -> bool:
        return (self.out / METRICS).is_file()


def resolve_recipe(path: str | None, grid_recipe: Path | None) -> Path | None:
    """A recipe path as written in the grid: beside the grid recipe if it is there, else as given,
    else among the bundled recipes (config.find_recipe)."""
    if path is None:
        return None
    return find_recipe(path, beside=grid_recipe.parent if grid_recipe is not None else None)


def quoted(**values) -> list[str]:
    """key=value overrides that read back as these values: a model named 2024 or a path with ': '
    in it is not re-read as a number or a mapping (config.format_override)."""
    return [format_override(key, value) for key, value in values.items()]


def plan_cells(grid: ExperimentConfig, out: Path, tasks_dir: Path, grid_recipe: Path | None,
               clinical_dirs: dict[str, Path]) -> list[Cell]:
    """Every cell of the grid with its validated FinetuneConfig, in table order (model, variant, task)."""
    cells = []
    for model in grid.models:
        recipe = resolve_recipe(model.recipe or grid.finetune.recipe, grid_recipe)
        for variant in model.variants:
            for task in grid.data.tasks:
                overrides = [*grid.finetune.overrides, *model.overrides, *quoted(
                    **{"model.base": model.base, "model.name": model.name, "variant": variant,
                       "task.path": str(tasks_dir / task)})]
                if methods.variant(variant).needs_clinical:
                    overrides += quoted(clinical_adapter=str(clinical_dirs[model.name]))
                config = load_config(FinetuneConfig, recipe, overrides)
                cells.append(Cell(model.name, variant, task, out / model.name / variant / task, config))
    return cells


def pretrain_config(model: GridModel, grid_recipe: Path | None, corpus: list[str], base_name: str) -> PretrainConfig:
    """`base_name`: Table 2 files a clinical adapter under its base model, named as the grid's first
    model on that base ("Clinical LLaMA*"'s full pretraining is a row under "LLaMA", as in the paper)."""
    spec = model.clinical
    extra = quoted(**{"data.paths": list(corpus)}) if corpus else []
    return load_config(PretrainConfig, resolve_recipe(spec.recipe, grid_recipe),
                       [*quoted(**{"model.base": model.base, "model.name": base_name}), *extra, *spec.overrides])


def check_tasks(tasks_dir: Path, tasks: list[str]) -> None:
    missing = [t for t in tasks if not (tasks_dir / t).is_dir()]
    if missing:
        raise ClinpeftError(f"data.tasks_dir {tasks_dir}: no task folder {', '.join(missing)}; "
                            "set data.tasks to the folders that exist or fix data.tasks_dir")


def error_text(exc: BaseException) -> str:
    """One line: a ClinpeftError's own message, else the exception type and message."""
    if isinstance(exc, ClinpeftError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def record_failure(path: Path, label: str, exc: BaseException, seconds: float) -> str:
    message = error_text(exc)
    path.parent.mkdir(parents=True, exist_ok=True)  # a cell can fail before its folder exists
    write_json(path, {"cell": label, "error": message, "seconds": round(seconds, 1),
                      "traceback": traceback.format_exception(exc)[-8:]})  # the last frames, for a bug report
    return message


def write_state(out: Path, state: dict) -> None:
    """experiment.json, replaced atomically so an interruption never leaves half a file."""
    atomic_write(out / STATE_FILE, lambda tmp: write_json(tmp, state))


def auroc_text(metrics: dict) -> str:
    val, test = (metrics.get(split, {}).get("auroc") for split in ("val", "test"))
    show = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    return f"val AUROC {show(val)}, test AUROC {show(test)}"


# --------------------------------------------------------------------------- main


def main(grid: ExperimentConfig, out: str | Path, recipe_path: str | Path | None = None, *,
         progress: bool = True) -> dict:
    """Run every unfinished cell of `grid` into `out`, then the report. Returns the experiment.json state.
    `recipe_path`: the grid's recipe, whose folder holds the recipes it names (resolved as load_config does)."""
    from tqdm.auto import tqdm

    from clinpeft.recipes import finetune, pretrain
    from clinpeft.recipes.demo import demo_data
    from clinpeft.reporting.report import write_report

    started = time.time()
    out = Path(out)
    grid_recipe = find_recipe(recipe_path) if recipe_path else None
    if out.exists() and not out.is_dir():
        raise ClinpeftError(f"--out {out} is a file; give a directory (an existing experiment directory resumes it)")

    # --- plan: every config validated before anything is written or trained
    if grid.data.demo:  # the demo's synthetic notes and tasks, written below into OUT/data (reused when there)
        tasks_dir = out / "data" / "tasks"
        corpus = [str(out / "data" / "corpus" / n) for n in ("discharge.csv.gz", "radiology.csv.gz")]
    else:
        tasks_dir, corpus = Path(grid.data.tasks_dir), list(grid.data.corpus)
    needs_clinical = [m for m in grid.models if any(methods.variant(v).needs_clinical for v in m.variants)]
    clinical_dirs = {m.name: Path(m.clinical.run) if m.clinical.run else out / m.name / PRETRAIN_DIR
                     for m in needs_clinical}
    base_names: dict[str, str] = {}
    for m in grid.models:
        base_names.setdefault(m.base, m.name)
    pretrain_configs = {m.name: pretrain_config(m, grid_recipe, corpus, base_names[m.base])
                        for m in needs_clinical if m.clinical.recipe}
    cells = plan_cells(grid, out, tasks_dir, grid_recipe, clinical_dirs)
    if not grid.data.demo:
        check_tasks(tasks_dir, grid.data.tasks)

    # --- data
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.yaml").write_text(config_to_yaml(grid))
    if grid.data.demo:
        demo_data(out, quick=grid.data.demo == "quick", seed=grid.data.seed)
        check_tasks(tasks_dir, grid.data.tasks)

    # --- clinical adapters the grid trains itself (OUT/<model>/pretrain/), each once
    pretrain_errors: dict[str, str] = {}
    for name, config in pretrain_configs.items():
        run_dir, failed = clinical_dirs[name], clinical_dirs[name].with_name(PRETRAIN_DIR + FAILED_SUFFIX)
        if (run_dir / RUN_RECORD).is_file():
            continue
        print(f"pretraining the clinical adapter of {name} ({config.peft.method}) into {run_dir}", flush=True)
        t0 = time.time()
        try:
            result = pretrain.main(config, run_dir, overwrite=True, progress=progress)
            failed.unlink(missing_ok=True)
            print(f"{name}/pretrain: test perplexity {result['test_ppl']:.3f}, {time.time() - t0:.0f} s", flush=True)
        except Exception as exc:  # noqa: BLE001 - recorded; its cells fail, the others go on
            pretrain_errors[name] = record_failure(failed, f"{name}/pretrain", exc, time.time() - t0)
            print(f"{name}/pretrain FAILED: {pretrain_errors[name]}", flush=True)

    # --- the cells
    records = []
    state = {"recipe": str(grid_recipe) if grid_recipe else None, "out": str(out), "n_cells": len(cells),
             "cells": records}
    bar = tqdm(total=len(cells), desc="experiment", unit="cell", disable=not progress)
    for index, cell in enumerate(cells, 1):
        prefix = f"[{index}/{len(cells)}] {cell.label}"
        record = {"cell": cell.label, "dir": str(cell.out)}
        t0 = time.time()
        if cell.finished():
            metrics = read_record(cell.out / METRICS)
            record.update(status="done earlier", val_auroc=metrics["val"].get("auroc"),
                          test_auroc=metrics["test"].get("auroc"))
            tqdm.write(f"{prefix} ... done earlier ({auroc_text(metrics)})")
        elif methods.variant(cell.variant).needs_clinical and cell.model in pretrain_errors:
            message = f"its clinical adapter could not be pretrained: {pretrain_errors[cell.model]}"
            record_failure(cell.failed_file, cell.label, ClinpeftError(message), 0.0)
            record.update(status="failed", error=message)
            tqdm.write(f"{prefix} ... FAILED: {message}")
        else:
            try:
                metrics = finetune.main(cell.config, cell.out, overwrite=True, progress=progress)
                cell.failed_file.unlink(missing_ok=True)
                record.update(status="ran", val_auroc=metrics["val"].get("auroc"),
                              test_auroc=metrics["test"].get("auroc"), seconds=round(time.time() - t0, 1))
                tqdm.write(f"{prefix} ... {auroc_text(metrics)}, {time.time() - t0:.0f} s")
            except Exception as exc:  # noqa: BLE001 - recorded; the other cells go on
                message = record_failure(cell.failed_file, cell.label, exc, time.time() - t0)
                record.update(status="failed", error=message, seconds=round(time.time() - t0, 1))
                tqdm.write(f"{prefix} ... FAILED after {time.time() - t0:.0f} s: {message}")
        records.append(record)
        write_state(out, state)
        bar.update(1)
    bar.close()

    # --- the report: Table 3 (and Table 2 of the grid's own pretraining runs) from the run directories
    failed = [r for r in records if r["status"] == "failed"]
    state.update(n_ran=sum(r["status"] == "ran" for r in records),
                 n_done_earlier=sum(r["status"] == "done earlier" for r in records), n_failed=len(failed))
    if len(failed) < len(records):
        options = grid.report
        written = write_report([out], out / "report", compare=options.compare, n_resamples=options.bootstrap_resamples,
                               seed=options.bootstrap_seed, progress=progress, subgroups=options.subgroups,
                               specificity=options.specificity, min_positives=options.min_positives,
                               html=options.html)
        state["report"] = {name: str(path) for name, path in written.items()}
    state["wall_time_s"] = round(time.time() - started, 1)  # this invocation, report included
    write_state(out, state)
    return state


def summary(state: dict, out: str | Path) -> list[str]:
    """Table 3 (when some cell finished) and the counts of this invocation."""
    table = ["\n" + read_text(state["report"]["table3.md"], what="report table")] if "report" in state else []
    return [*table, f"{out}: {state['n_ran']} cells run, {state['n_done_earlier']} done earlier, "
            f"{state['n_failed']} failed ({state['wall_time_s'] / 60:.1f} min)"]


def failures(state: dict, out: str | Path) -> list[str]:
    """The failed cells and their errors, for stderr (none: [])."""
    failed = [record for record in state["cells"] if record["status"] == "failed"]
    if not failed:
        return []
    return [f"failed cells (errors in {out}/{STATE_FILE}); rerun the same command to retry them:",
            *(f"  {record['cell']}: {record['error']}" for record in failed)]
