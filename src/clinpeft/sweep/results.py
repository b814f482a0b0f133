"""What a sweep leaves in its directory, from the study alone (any machine can write it).

    best.yaml        the best trial's complete resolved config, with a header saying what it scored
    trials.csv       one row per trial (columns below)
    history.png      objective per trial (dots) and the best so far (line)
    importances.png  PED-ANOVA parameter importances (Optuna's default evaluator), or a note
    sweep.md         the summary `clinpeft report`-style readers can show

Each file is written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from clinpeft.rundir import atomic_write

TOP_TRIALS = 5  # rows of the best-trials table in sweep.md


def trial_state(trial) -> str:
    """COMPLETE / PRUNED / FAIL / RUNNING / WAITING, with why a failure does not count:
    DIED (worker killed or interrupted; re-queued), SURPLUS (over --trials, never ran)."""
    state = trial.state.name
    if state == "FAIL" and "error" not in trial.user_attrs:
        return "SURPLUS" if trial.user_attrs.get("surplus") else "DIED"
    return state


def trials_frame(sweep, study) -> pd.DataFrame:
    """Columns: number, state, <objective> (val_auroc | val_ppl), one per task for several tasks
    (val_auroc_<task>), one per searched key (config key names), duration_s, run_dir, retry_of, error."""
    task_columns = [f"val_auroc_{Path(t).name}" for t in sweep.tasks] if len(sweep.tasks) > 1 else []
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        ended = t.datetime_complete and t.datetime_start
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if ended else None
        rows.append({
            "number": t.number,
            "state": trial_state(t),
            sweep.objective: t.value,
            **{c: attrs.get(c) for c in task_columns},
            **{p.key: t.params.get(p.key) for p in sweep.params},
            "duration_s": round(duration, 1) if duration is not None else None,
            "run_dir": attrs.get("run_dir") if t.state.name == "COMPLETE" else None,  # failed runs leave none
            "retry_of": attrs.get("retry_of"),
            "error": attrs.get("error") or attrs.get("died"),
        })
    columns = ["number", "state", sweep.objective, *task_columns, *(p.key for p in sweep.params),
               "duration_s", "run_dir", "retry_of", "error"]
    return pd.DataFrame(rows, columns=columns)


def complete_trials(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def best_trial(sweep, study):
    done = complete_trials(study)
    if not done:
        return None
    pick = max if sweep.direction == "maximize" else min
    return pick(done, key=lambda t: (t.value, -t.number))


def best_yaml(sweep, trial, out: Path) -> str:
    """The best trial's resolved config (every key: runnable as is), after a header comment."""
    command = "clinpeft pretrain" if sweep.step == "pretrain" else "clinpeft finetune"
    searched = ", ".join(f"{p.key}={trial.params[p.key]}" for p in sweep.params if p.key in trial.params)
    header = [f"# Best of sweep {sweep.study_name} ({out}): trial {trial.number}, {sweep.objective} {trial.value:.6g}"
              + (f" (mean over {len(sweep.tasks)} tasks)" if len(sweep.tasks) > 1 else ""),
              f"# searched: {searched}",
              f"#   {command} {out / 'best.yaml'} --out runs/best"]
    if len(sweep.tasks) > 1:
        header.append(f"# tuned on {', '.join(sweep.tasks)}; task.path is the first: set task.path=DIR for the others")
    return "\n".join(header) + "\n" + trial.user_attrs["config"]


def plot_history(frame: pd.DataFrame, sweep, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame[frame["state"] == "COMPLETE"].sort_values("number")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if len(done):
        values = done[sweep.objective].astype(float)
        best = values.cummax() if sweep.direction == "maximize" else values.cummin()
        ax.scatter(done["number"], values, color="tab:blue", label=f"{sweep.objective} of a trial", zorder=3)
        ax.step(done["number"], best, where="post", color="tab:red", label="best so far")
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no trial completed yet", ha="center", va="center", transform=ax.transAxes)
    failed = frame[frame["state"].isin(["FAIL", "PRUNED"])]
    for number in failed["number"]:
        ax.axvline(number, color="0.85", lw=1, zorder=0)  # grey: failed or pruned
    ax.set_xlabel("trial")
    ax.set_ylabel(sweep.objective + (" (higher is better)" if sweep.direction == "maximize" else " (lower is better)"))
    ax.set_title(f"sweep {sweep.study_name}: optimisation history ({sweep.sampler})")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def importances(sweep, study) -> tuple[dict | None, str | None]:
    """({key: importance} normalised to sum 1, None), or (None, why there is nothing to say)."""
    import optuna

    done = complete_trials(study)
    varying = [p.key for p in sweep.params if len({repr(t.params.get(p.key)) for t in done}) > 1]
    if len(done) < 2 or not varying:
        return None, (f"parameter importances need at least 2 completed trials whose parameters differ "
                      f"({len(done)} completed, {len(varying)} parameters varied)")
    try:
        return optuna.importance.get_param_importances(study, params=varying), None
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"parameter importances could not be estimated from {len(done)} trials ({exc})"


def plot_importances(values: dict | None, note: str | None, sweep, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.5 * max(len(values or {}), 3)))
    if values:
        keys = list(values)[::-1]  # most important on top
        ax.barh(keys, [values[k] for k in keys], color="tab:blue")
        ax.set_xlabel(f"importance for {sweep.objective} (PED-ANOVA, sums to 1)")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "\n".join(wrap(note or "", 70)), ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"sweep {sweep.study_name}: parameter importances")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


def summary_md(sweep, frame: pd.DataFrame, best, imp: dict | None, imp_note: str | None) -> str:
    states = frame["state"].value_counts().to_dict()
    mean = f", mean over {len(sweep.tasks)} tasks" if len(sweep.tasks) > 1 else ""
    lines = [f"# Sweep {sweep.study_name}", "",
             f"- recipe: `{sweep.recipe}` ({sweep.step}); objective **{sweep.objective}** ({sweep.direction}d, "
             + ("validation AUROC of the best epoch" + mean if sweep.step == "finetune" else "validation perplexity")
             + ")",
             f"- sampler: {sweep.sampler} (seed {sweep.seed}), pruner: {sweep.pruner}; "
             f"trials requested: {sweep.trials}",
             "- trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())),
             "- search space: " + "; ".join(f"`{p.describe()}`" for p in sweep.params), ""]
    if best is None:
        lines += ["No trial completed: see the `error` column of trials.csv.", ""]
    else:
        lines += [f"**Best: trial {best.number}, {sweep.objective} = {best.value:.4f}** "
                  f"({', '.join(f'`{k}={v}`' for k, v in best.params.items())}); recipe: `best.yaml`", ""]
        done = frame[frame["state"] == "COMPLETE"].sort_values(sweep.objective, ascending=sweep.direction == "minimize")
        columns = ["number", sweep.objective, *(p.key for p in sweep.params), "duration_s"]
        lines += [f"Top {min(TOP_TRIALS, len(done))} trials:", "",
                  "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for _, row in done.head(TOP_TRIALS).iterrows():
            lines.append("| " + " | ".join(fmt(row[c]) for c in columns) + " |")
        lines.append("")
    if imp:
        fixed = [p.key for p in sweep.params if p.key not in imp]
        lines += ["Parameter importances (PED-ANOVA): " + ", ".join(f"`{k}` {v:.2f}" for k, v in imp.items())
                  + (f"; not varied by the completed trials: {', '.join(f'`{k}`' for k in fixed)}" if fixed else ""),
                  ""]
    else:
        lines += [f"Parameter importances: {imp_note}.", ""]
    lines += ["Files: `trials.csv`, `history.png`, `importances.png`, `best.yaml`, "
              "one run directory per trial under `trials/`.", ""]
    return "\n".join(lines)


def fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def write_results(sweep, study, out: Path) -> dict:
    """Every result file; returns {"best_value", "best_params", "best_trial", "n_complete", "files"}."""
    out = Path(out)
    frame = trials_frame(sweep, study)
    atomic_write(out / "trials.csv", lambda tmp: frame.to_csv(tmp, index=False))
    best = best_trial(sweep, study)
    if best is not None:
        atomic_write(out / "best.yaml", lambda tmp: tmp.write_text(best_yaml(sweep, best, out)))
    plot_history(frame, sweep, out / "history.png")
    imp, note = importances(sweep, study)
    if note:
        print(f"note: {note}", flush=True)
    plot_importances(imp, note, sweep, out / "importances.png")
    atomic_write(out / "sweep.md", lambda tmp: tmp.write_text(summary_md(sweep, frame, best, imp, note)))
    files = [out / name for name in ("best.yaml", "trials.csv", "history.png", "importances.png", "sweep.md")]
    return {"best_value": best.value if best else None, "best_params": dict(best.params) if best else None,
            "best_trial": best.number if best else None, "n_complete": len(complete_trials(study)),
            "importances": imp, "files": [f for f in files if f.is_file()]}
