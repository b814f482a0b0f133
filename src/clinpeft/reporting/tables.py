"""Paper-style tables from finished run directories alone (Gema et al. 2023, Tables 2 and 3).

Table 2 (domain-adaptive pretraining) is built from every `run.json` (kind "pretrain"), Table 3
(downstream AUROC) from every `metrics.json` (kind "finetune") that runs.py found. The AUROCs are
not recomputed: the tables format what the runs recorded, so a report can be rebuilt anywhere the
run directories are copied. Missing optional keys give blank cells. What needs the test predictions
(each cell's 95% bootstrap interval, the macro average's, `--compare` p-values) comes from stats.py;
report.py writes the files.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import pandas as pd

from clinpeft import methods
from clinpeft.data.definitions import TABLE3_TASK_ORDER
from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.metrics import macro_average
from clinpeft.reporting.runs import (
    PROBE_KIND,
    Row,
    base_name,
    guard_warnings,
    integer,
    number,
    recorded_auroc,
    recorded_ci,
    recorded_test,
    required_text,
    table3_base,
)
from clinpeft.reporting.stats import Table3Stats, comparison_notes, comparison_table, format_interval

BASE_ROW = "(none: base model)"
TABLE2_COLUMNS = ["Base model", "PEFT", "Trainable params", "Trainable %", "Train ppl", "Test ppl", "Time (h:m:s)"]
TABLE2_RAW_COLUMNS = [
    "Base model", "PEFT", "Method", "Trainable params", "Total params", "Trainable %",
    "Train ppl", "Test ppl", "Train time (s)", "Run dir",
]

TASKS_ORDER = TABLE3_TASK_ORDER
MACRO = "Macro avg"
INCOMPLETE_MARK = "*"
SUPPORT_MARK = "\u2021"  # a class absent from the test split or with fewer than min_positives examples


# --------------------------------------------------------------------------- formatting cells


def _strip_zeros(text: str) -> str:
    """'8.0' -> '8', '0.10' -> '0.1', '100.00' -> '100'; integers unchanged."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_params(n: int | None) -> str:
    """Parameter count like the paper, 1 decimal with a unit: 8388608 -> "8.4M", 61440 -> "61.4K",
    6738415616 -> "6.7B", 40960 -> "41K" (a trailing ".0" is dropped); below 1000 the exact count."""
    if n is None:
        return ""
    n = int(n)
    if abs(n) < 1000:
        return str(n)
    units = [(1e3, "K"), (1e6, "M"), (1e9, "B"), (1e12, "T")]
    i = 0
    # Move up a unit when rounding would print 1000 of the smaller one (999_960 -> "1M", not "1000K").
    while i + 1 < len(units) and round(abs(n) / units[i][0], 1) >= 1000:
        i += 1
    scale, unit = units[i]
    return _strip_zeros(f"{n / scale:.1f}") + unit


def format_percent(p: float | None) -> str:
    """A percentage (0-100) with enough significant digits: 2 decimals, or 1 significant digit when
    that would round to 0: 0.1245 -> "0.12%", 0.000912 -> "0.0009%", 100 -> "100%"."""
    if p is None:
        return ""
    if p == 0 or not math.isfinite(p):
        return f"{p:g}%"
    if round(abs(p), 2) >= 0.01:
        return _strip_zeros(f"{p:.2f}") + "%"
    decimals = -math.floor(math.log10(abs(p)))  # position of the first significant digit
    return _strip_zeros(f"{p:.{decimals}f}") + "%"


def format_ppl(ppl: float | None) -> str:
    """Perplexity with 3 decimals, as the paper: 2.2436 -> "2.244"."""
    return "" if ppl is None else f"{ppl:.3f}"


def format_duration(seconds: float | None) -> str:
    """Seconds as h:m:s with 2-digit fields, hours unbounded: 77862 -> "21:37:42"."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def format_auroc(percent: float | None) -> str:
    """AUROC already in % (x 100) with 2 decimals: 74.891 -> "74.89"."""
    return "" if percent is None or math.isnan(percent) else f"{percent:.2f}"


# --------------------------------------------------------------------------- Table 2


def method_name(run: dict) -> str:
    """Table 2 name of a pretraining run's method ("lora" -> "LoRA", with DoRA: "DoRA"); see methods.py."""
    return methods.method_display_name(run.get("method"), run.get("lora_flavours") or (), run.get("init_lora_weights"))


def _table2_records(pretrain_runs: list[dict]) -> tuple[list[dict], list[str]]:
    """One raw record per Table 2 row (TABLE2_RAW_COLUMNS), plus notes for the footnotes."""
    by_base: dict[str, list[dict]] = defaultdict(list)
    for run in pretrain_runs:
        by_base[base_name(run)].append(run)

    records, notes = [], []
    for base in sorted(by_base, key=str.lower):
        runs = sorted(by_base[base], key=lambda r: (methods.method_rank(method_name(r)), str(r.get("_dir", ""))))
        base_row = _base_model_row(base, runs, notes)
        if base_row:
            records.append(base_row)
        for run in runs:
            trainable, total = integer(run.get("trainable_params")), integer(run.get("total_params"))
            percent = number(run.get("trainable_percent"))
            if percent is None and trainable is not None and total:
                percent = 100.0 * trainable / total
            records.append({
                "Base model": base,
                "PEFT": method_name(run),
                "Method": str(run.get("method") or ""),
                "Trainable params": trainable,
                "Total params": total,
                "Trainable %": percent,
                "Train ppl": number(run.get("train_ppl")),
                "Test ppl": number(run.get("test_ppl")),
                "Train time (s)": number(run.get("train_time_s")),
                "Run dir": str(run.get("_dir", "")),
            })
    return records, notes


def _base_model_row(base: str, runs: list[dict], notes: list[str]) -> dict | None:
    """The "(none: base model)" row: base-model perplexities recorded by the first run that has
    them. If runs disagree (different splits?), a note says so."""
    keys = ("base_train_ppl", "base_test_ppl")
    recorded = [r for r in runs if any(number(r.get(key)) is not None for key in keys)]
    if not recorded:
        return None
    first = recorded[0]
    train, test = number(first.get("base_train_ppl")), number(first.get("base_test_ppl"))
    for other in recorded[1:]:
        for key, value in zip(keys, (train, test)):
            theirs = number(other.get(key))
            if value is not None and theirs is not None and not _rel_close(value, theirs):
                notes.append(
                    f"{base}: {key} differs between runs ({value:.3f} in {first['_dir']}, {theirs:.3f} in "
                    f"{other['_dir']}): they were evaluated on different data, so their perplexities are not "
                    "comparable."
                )
    return {
        "Base model": base, "PEFT": BASE_ROW, "Method": "none", "Trainable params": 0, "Total params": None,
        "Trainable %": 0.0, "Train ppl": train, "Test ppl": test, "Train time (s)": None,
        "Run dir": str(first.get("_dir", "")),
    }


def _rel_close(a: float, b: float, rel: float = 5e-3) -> bool:
    """Equal within 0.5% (relative): the same split's perplexity, up to run-to-run numerics."""
    return abs(a - b) <= rel * max(abs(a), abs(b))


def table2_frames(pretrain_runs) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(raw, shown, notes) of Table 2: table2.csv's unrounded frame, table2.md's formatted one, the notes
    for the footnotes; see `table2`."""
    records, notes = _table2_records(list(pretrain_runs))
    raw = pd.DataFrame(records, columns=TABLE2_RAW_COLUMNS)
    for col in ("Trainable params", "Total params"):
        raw[col] = raw[col].astype("Int64")  # exact integers in the CSV, blanks stay blank
    for col in ("Trainable %", "Train ppl", "Test ppl", "Train time (s)"):
        raw[col] = raw[col].astype("float64")
    shown = pd.DataFrame(
        [
            [
                r["Base model"], r["PEFT"], format_params(r["Trainable params"]), format_percent(r["Trainable %"]),
                format_ppl(r["Train ppl"]), format_ppl(r["Test ppl"]), format_duration(r["Train time (s)"]),
            ]
            for r in records
        ],
        columns=TABLE2_COLUMNS,
    )
    return raw, shown, notes


def table2(pretrain_runs, *, formatted: bool = True) -> pd.DataFrame:
    """Columns: Base model, PEFT, Trainable params, Trainable %, Train ppl, Test ppl, Time (h:m:s).

    One row per run, plus, per base model, a first row "(none: base model)" with 0 trainable
    params and base_train_ppl/base_test_ppl, when a run recorded them (so the reader sees how much
    clinical pretraining lowered test perplexity). Base models sorted by name; within one, methods
    in the paper's order (LoRA, Adaptation Prompt, Prefix Tuning, Prompt Tuning, P-tuning, Full
    fine-tuning, then others). Params like the paper (8.4M, 61.4K, 6.7B), percent with enough
    significant digits (0.12%, 0.0009%), ppl 3 decimals, time h:m:s (from train_time_s).

    formatted=False returns the unrounded numbers instead (TABLE2_RAW_COLUMNS: exact parameter
    counts, time in seconds, the run directory), as written to table2.csv. Notes for the
    footnotes are in `df.attrs["notes"]`.
    """
    raw, shown, notes = table2_frames(pretrain_runs)
    df = shown if formatted else raw
    df.attrs["notes"] = notes
    return df


def table2_footnotes(raw: pd.DataFrame, notes: list[str]) -> list[str]:
    """table2.md's footnotes: what each number means, then the `notes` of table2_frames."""
    lines = [
        "Perplexity (ppl) = exp(total negative log-likelihood in nats / number of predicted tokens) over the whole "
        "split: token-weighted, not a mean of per-batch perplexities. Train ppl on the pretraining split, Test ppl "
        "on the held-out split.",
        "Trainable params: parameters updated by the method (K = 10^3, M = 10^6, B = 10^9); "
        "Trainable % = trainable / all parameters of the model with its adapter x 100.",
    ]
    if (raw["PEFT"] == BASE_ROW).any():
        lines.append(
            f"{BASE_ROW}: the base model without any adapter, evaluated on the same splits; the gap to an "
            "adapter's Test ppl is what clinical pretraining bought."
        )
    lines.append("Time: training time (h:m:s), blank when not recorded.")
    lines += notes
    lines.append("Exact parameter counts, unrounded values and each row's run directory: table2.csv.")
    return lines


# --------------------------------------------------------------------------- Table 3


def _table3_cells(finetune_runs: list[dict]) -> dict[tuple, dict[str, dict]]:
    """{(base, variant, row override or None): {task: run}}; a second run for a cell is an error."""
    cells: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for run in finetune_runs:
        task = required_text(run, "task").lower()
        variant = required_text(run, "variant")
        row = run.get("row") if isinstance(run.get("row"), str) and run["row"].strip() else None
        key = (table3_base(run), variant, row.strip() if row else None)
        if task in cells[key]:
            other = cells[key][task]["_dir"]
            raise ClinpeftError(
                f"two runs for the same Table 3 cell (base {key[0]}, variant {variant}, task {task}"
                f"{', row ' + repr(key[2]) if key[2] else ''}): {other} and {run['_dir']}; "
                "report only one of them, or give one a distinct \"row\" in its metrics.json"
            )
        cells[key][task] = run
    return cells


def _row_name(base: str, variant: str, row: str | None, base_has_head: bool) -> str:
    """Paper row names: the base for the head-only run, "+ LoRA"... under it; when the base has no
    head-only row, the "+ ..." rows carry the base name so they are not read as another base's."""
    if row:
        return row
    if variant == "head":
        return base
    entry = methods.VARIANTS.get(variant)
    name = (entry.table3_row if entry else None) or f"+ {variant}"
    return name if base_has_head else f"{base} {name}"


def _test_auroc_percent(run: dict) -> float | None:
    auroc = recorded_auroc(run)
    return None if auroc is None else 100.0 * auroc


def table3_layout(finetune_runs, tasks_order=TASKS_ORDER) -> tuple[list[str], list[Row]]:
    """(tasks, rows) of Table 3: the task columns (lower-case, in tasks_order then others sorted) and
    the rows in table order, each a runs.Row(name, {task: run}); see `table3`."""
    cells = _table3_cells(list(finetune_runs))
    order = [t.lower() for t in tasks_order]
    present = {task for by_task in cells.values() for task in by_task}
    tasks = [t for t in order if t in present] + sorted(present - set(order))
    # the encoder baselines first, as in the paper (BlueBERT, UmlsBERT, ... above LLaMA)
    encoder_bases = {base for (base, _, _), by_task in cells.items()
                     if any(r.get("model_kind") == "encoder" for r in by_task.values())}
    # reference rows (training/reference.py: TF-IDF + logistic regression) last, below the models they frame
    reference_bases = {base for (base, _, _), by_task in cells.items()
                       if any(r.get("model_kind") == "reference" for r in by_task.values())}
    keys = sorted(cells, key=lambda k: (k[0] in reference_bases, k[0] not in encoder_bases, k[0].lower(), k[0],
                                        methods.variant_rank(k[1]), k[2] or ""))
    bases_with_head = {k[0] for k in keys if k[1] == "head" and k[2] is None}
    rows = [Row(_row_name(base, variant, row, base in bases_with_head), cells[(base, variant, row)])
            for base, variant, row in keys]
    return tasks, rows


def _cell_interval(run: dict, name: str, task: str, stats: Table3Stats | None) -> tuple[float, float] | None:
    """A cell's 95% interval (fractions): from the report's bootstrap when given, else metrics.json."""
    if stats is not None:
        cell = stats.cells.get((name, task))
        return cell.ci if cell is not None else None
    return recorded_ci(run)


def _with_interval(text: str, ci, mark: str = "") -> str:
    """Cell text with its interval, "78.40 [76.1, 80.5]" (in %, see stats.format_interval), then the mark."""
    interval = format_interval(ci)
    return f"{text} {interval}{mark}" if text and interval else text + mark


def table3_frames(finetune_runs, tasks_order=TASKS_ORDER,
                  stats: Table3Stats | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(raw, shown, notes) of Table 3: table3.csv's unrounded frame, table3.md's formatted one, the notes
    for the footnotes. With `stats`, cells carry the report's intervals (and raw the `--compare` columns);
    without, the intervals recorded in metrics.json."""
    runs = list(finetune_runs)
    tasks, rows = table3_layout(runs, tasks_order)
    columns = [t.upper() for t in tasks]
    raw_rows, shown_rows, incomplete, no_auroc, any_ci = [], [], [], [], False
    for row in rows:
        name, values, intervals = row.name, {}, {}
        some_run = next(iter(row.runs.values()))
        base, variant = base_name(some_run), str(some_run.get("variant", "")).strip()
        for task in tasks:
            run = row.runs.get(task)
            values[task] = _test_auroc_percent(run) if run else None
            intervals[task] = _cell_interval(run, name, task, stats) if values[task] is not None else None
            if run and values[task] is None:
                no_auroc.append(str(run["_dir"]))
        have = [v for v in values.values() if v is not None]
        macro = macro_average(have) if have else None
        intervals[MACRO] = stats.macro_ci.get(name) if stats is not None and macro is not None else None
        any_ci = any_ci or any(ci is not None for ci in intervals.values())
        complete = len(have) == len(tasks)
        if have and not complete:
            incomplete.append((name, [t.upper() for t in tasks if values[t] is None]))
        bounds = [100 * ci[k] if ci is not None else None for ci in intervals.values() for k in (0, 1)]
        raw_rows.append([name, base, variant, *values.values(), macro, len(have), *bounds])
        mark = "" if complete or macro is None else INCOMPLETE_MARK
        marks = {t: SUPPORT_MARK if values[t] is not None and support_problems(_cell_support(row.runs[t], name, t,
                                                                                             stats)) else ""
                 for t in tasks}
        shown_rows.append([name, *(_with_interval(format_auroc(values[t]), intervals[t], marks[t]) for t in tasks),
                           _with_interval(format_auroc(macro), intervals[MACRO], mark)])

    raw = _table3_raw(raw_rows, columns, any_ci)
    if stats is not None and stats.compare_row is not None:
        _add_comparison_columns(raw, stats, tasks)
    shown = pd.DataFrame(shown_rows, columns=["Model", *columns, MACRO])
    notes = _table3_notes(runs, tasks, incomplete, no_auroc) + support_notes(rows, tasks, stats)
    return raw, shown, notes


def _cell_support(run: dict, name: str, task: str, stats: Table3Stats | None) -> dict | None:
    """The test split's class support of a cell: from the report's predictions, else metrics.json."""
    cell = stats.cells.get((name, task)) if stats is not None else None
    if cell is not None and cell.support is not None:
        return cell.support
    return recorded_test(run).get("class_support")


def support_problems(support: dict | None) -> str:
    """'class 3 absent; 2 with < 5 examples (a, b)' for a cell's class support, '' when none."""
    if not support:
        return ""
    parts = []
    if support.get("absent"):
        parts.append(f"class(es) {', '.join(support['absent'])} absent from the test split")
    if support.get("few"):
        few = support["few"]
        parts.append(f"{len(few)} class(es)/label(s) with fewer than {support.get('min_positives', 5)} test examples "
                     f"({', '.join(few[:8])}{', ...' if len(few) > 8 else ''})")
    return "; ".join(parts)


def support_notes(rows: list[Row], tasks: list[str], stats: Table3Stats | None) -> list[str]:
    """The footnote behind the \u2021 marks, one clause per marked cell."""
    clauses = []
    for row in rows:
        for task in tasks:
            run = row.runs.get(task)
            text = support_problems(_cell_support(run, row.name, task, stats)) if run else ""
            if text:
                clauses.append(f"{row.name} / {task.upper()}: {text}")
    if not clauses:
        return []
    return [f"{SUPPORT_MARK} Aggregate over few examples: absent classes are left out of the macro AUROC "
            "(probabilities renormalised over the present ones) and classes with few examples make it noisy. "
            + "; ".join(clauses) + "."]


def _table3_raw(raw_rows: list[list], columns: list[str], any_ci: bool) -> pd.DataFrame:
    """table3.csv's frame: AUROCs in %, each followed by its interval bounds when some cell has one."""
    bound_columns = [f"{c} {k}" for c in [*columns, MACRO] for k in ("lo", "hi")]
    raw = pd.DataFrame(raw_rows, columns=["Model", "Base model", "Variant", *columns, MACRO, "Tasks averaged",
                                          *bound_columns])
    for col in [*columns, MACRO, *bound_columns]:
        raw[col] = raw[col].astype("float64")
    raw["Tasks averaged"] = raw["Tasks averaged"].astype("Int64")
    if not any_ci:
        return raw.drop(columns=bound_columns)
    with_bounds = [x for c in [*columns, MACRO] for x in (c, f"{c} lo", f"{c} hi")]
    return raw[["Model", "Base model", "Variant", *with_bounds, "Tasks averaged"]]


def _add_comparison_columns(raw: pd.DataFrame, stats: Table3Stats, tasks: list[str]) -> None:
    """table3.csv's `--compare` columns: "Compared with", then per task and the macro "<col> diff" (points)
    and "<col> p"."""
    raw["Compared with"] = stats.compare_row
    for key, column in [*((t, t.upper()) for t in tasks), ("macro", MACRO)]:
        tests = [stats.paired.get((name, key)) for name in raw["Model"]]
        raw[f"{column} diff"] = [100 * t.diff if t else None for t in tests]
        raw[f"{column} p"] = [t.p_value if t else None for t in tests]
        raw[[f"{column} diff", f"{column} p"]] = raw[[f"{column} diff", f"{column} p"]].astype("float64")


_TASK_TYPE_DEFINITIONS = {
    "binary": "binary, ROC AUC of P(class 1)",
    "multiclass": "multiclass, macro over classes, {mode}",
    "multilabel": "multilabel, per-label AUROC on sigmoid probabilities, macro over the labels with both classes "
                  "in the test split",
}
_MULTI_CLASS_NAMES = {"ovo": "one-vs-one (as van Aken et al.)", "ovr": "one-vs-rest"}


GUARD_NOTE = "Guard: "  # footnotes of runs whose fine-tuning failed silently; `clinpeft report` prints them


def _table3_notes(runs: list[dict], tasks: list[str], incomplete: list, no_auroc: list[str]) -> list[str]:
    """Per-task metric definitions (from the recorded task types), skipped labels, caveats."""
    notes = []
    for task in tasks:
        task_runs = [r for r in runs if str(r.get("task", "")).strip().lower() == task]
        types = sorted({str(r["task_type"]) for r in task_runs if r.get("task_type")})
        if len(types) > 1:
            notes.append(
                f"{task.upper()}: runs disagree on the task type ({', '.join(types)}); check their metrics.json."
            )
        if len(types) != 1 or types[0] not in _TASK_TYPE_DEFINITIONS:
            continue
        text = _TASK_TYPE_DEFINITIONS[types[0]]
        if types[0] == "multiclass":
            modes = sorted({str(recorded_test(r).get("multi_class", "ovo")) for r in task_runs})
            text = text.format(mode=" / ".join(_MULTI_CLASS_NAMES.get(m, m) for m in modes))
            text += " (the table shows this; one-vs-rest macro beside it in clinical.md)"
        if types[0] == "multilabel":
            text += _skipped_labels_text(task_runs)
        notes.append(f"{task.upper()}: {text}.")
    if incomplete:
        missing = "; ".join(f"{name} lacks {', '.join(absent)}" for name, absent in incomplete)
        notes.append(  # "\\*": a bare "* " would start a nested markdown list
            f"\\{INCOMPLETE_MARK} Macro avg over only the tasks that row has ({missing}): "
            f"not comparable with rows that have all {len(tasks)} tasks."
        )
    if no_auroc:
        notes.append(f"No test AUROC recorded (cell left blank) in: {', '.join(no_auroc)}.")
    if any(str(r.get("variant", "")).strip() == "head" and not r.get("row") for r in runs):
        notes.append("A row named by its base model alone (no \"+\"): head only, the classification head trained "
                     "on the frozen base.")
    if any(r.get("kind") == PROBE_KIND for r in runs):
        notes.append("(linear probe) rows: a logistic regression on the frozen model's mean-pooled features "
                     "(standardised, C chosen on validation), fitted by `clinpeft finetune` before each run trains: "
                     "what the frozen model already gives, the floor fine-tuning must clear; its interval from the "
                     "probe's test predictions (RUN/probe/predictions.csv; runs written before they were saved: none).")
    notes += [f"{GUARD_NOTE}{line}" for line in guard_warnings(r for r in runs if r.get("kind") != PROBE_KIND)]
    return notes


def _skipped_labels_text(task_runs: list[dict]) -> str:
    """'; 1222 labels evaluated, 12 skipped (one class only)' when runs recorded the counts."""
    counts = set()
    for run in task_runs:
        test = recorded_test(run)
        evaluated, skipped = integer(test.get("n_labels_evaluated")), integer(test.get("n_labels_skipped"))
        if evaluated is not None or skipped is not None:
            counts.add((evaluated, skipped))
    if not counts:
        return ""
    show = lambda n: "?" if n is None else str(n)  # noqa: E731
    if len(counts) == 1:
        evaluated, skipped = counts.pop()
        return f"; {show(evaluated)} labels evaluated, {show(skipped)} skipped (only one class in the test split)"
    ranges = ", ".join(f"{show(e)}/{show(s)}" for e, s in sorted(counts, key=str))
    return f"; labels evaluated/skipped (only one class in the test split) differ between runs: {ranges}"


def table3(finetune_runs, tasks_order=TASKS_ORDER, *, formatted: bool = True) -> pd.DataFrame:
    """Downstream test AUROC, one row per (base model, variant), as the paper's Table 3.

    Rows = (base_model_name, variant) in the paper's order (head, lora, clinical_frozen,
    clinical_frozen+downstream, clinical_trainable, clinical_trainable+downstream, full, then
    others sorted), base models sorted by name, encoder baselines (metrics["model_kind"] ==
    "encoder") first as in the paper. Row names like the paper: "<base>" for head-only,
    "+ LoRA", "+ Clinical LoRA (Frozen)", "+ Clinical LoRA (Frozen) + Downstream LoRA",
    "+ Clinical LoRA (Trainable)", "+ Clinical LoRA (Trainable) + Downstream LoRA" ("<base> + ..."
    when that base has no head-only row), or metrics["row"] when given (runs with different "row"
    values are different rows).

    Columns = "Model", the tasks present (upper-case, in tasks_order then others sorted), "Macro avg".
    Cells = test AUROC x 100, 2 decimals. Macro avg = unweighted mean of the row's task AUROCs
    (from unrounded values); a row lacking some of the table's tasks gets a trailing "*",
    explained in `df.attrs["notes"]`. Two runs for one cell -> ClinpeftError naming both dirs.

    formatted=False returns unrounded numbers (AUROC x 100) plus "Base model", "Variant" and
    "Tasks averaged", as written to table3.csv.
    """
    raw, shown, notes = table3_frames(finetune_runs, tasks_order)
    df = shown if formatted else raw
    df.attrs["notes"] = notes
    return df


def table3_footnotes(notes: list[str]) -> list[str]:
    """table3.md's footnotes on the recorded AUROCs, around the `notes` of table3_frames."""
    return [
        "Cells: AUROC on the test split x 100, 2 decimals; blank = no run for that task.",
        *notes,
        f"{MACRO}: unweighted mean of the row's task AUROCs, computed before rounding.",
        "Unrounded values: table3.csv.",
    ]


# --------------------------------------------------------------------------- Markdown


_NUMERIC_CELL = re.compile(r"^[-+]?(\d[\d,]*(\.\d+)?|\.\d+|inf)([KMBT%*]|:\d\d)*$")


def _cell_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_markdown(df: pd.DataFrame) -> str:
    """A GitHub-markdown table of `df`'s columns (not its index), padded to line up in plain text.

    Columns whose non-blank cells all look numeric (12.5, 8.4M, 0.12%, 71.62*, 01:02:03) are
    right-aligned; blanks (None/NaN) print as empty cells; "|" in a cell is escaped.
    """
    header = [_cell_text(c) for c in df.columns]
    rows = [[_cell_text(v) for v in row] for row in df.itertuples(index=False, name=None)]
    widths = [max([3, len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    numeric = [
        any(r[i] for r in rows) and all(_NUMERIC_CELL.match(r[i]) for r in rows if r[i]) for i in range(len(header))
    ]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def markdown_document(title: str, table: pd.DataFrame, footnotes: list[str], extra: str = "",
                      reading: str = "") -> str:
    """A report page: "# title", the table, `reading` (a sentence on what the table shows) as its own paragraph,
    its footnotes as a list, then `extra` (more sections)."""
    lead = f"\n{reading}\n\n" if reading else ""
    return f"# {title}\n\n{format_markdown(table)}\n{lead}" + _bullets(footnotes) + extra


def comparison_section(stats: Table3Stats, rows: list[Row], tasks: list[str]) -> str:
    """table3.md's "## Paired comparison with ROW" section: differences, p-values and their footnotes."""
    table = comparison_table(stats, rows, tasks, MACRO)
    return (f"\n## Paired comparison with {stats.compare_row}\n\n{format_markdown(table)}\n"
            + _bullets(comparison_notes(stats, rows, tasks)))


def _bullets(lines: list[str]) -> str:
    return "".join(f"- {line}\n" for line in lines)
