"""No command destroys an input or another's output, and an interruption leaves nothing behind but what resumes
(issue 26, items 3 and 4).

- `--out` equal to, inside or around an input is refused with or without --overwrite, the input untouched;
- --overwrite replaces only a previous output of the same command (rundir.MARKER records which);
- a killed short job's OUT.partial/ is cleared by the next run; a training run's checkpoints are not;
- resume skips a checkpoint whose files were cut short and falls back to the one before;
- SIGTERM / SIGINT at the last moment of every short command (in process) leaves nothing.
Every command interrupted at each stage in a real process, and two writers to one --out: tests/test_interruptions.py.
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pandas as pd
import pytest

from clinpeft.cli import main
from clinpeft.rundir import MARKER, partial_dir


def run(capsys, args: list) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err.strip()


def refused(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err


def digest(path: Path) -> dict:
    """Every file under `path` (or the file itself) -> sha256: what must not change."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# --------------------------------------------------------------------------- --out over an input


@pytest.fixture
def inputs(tmp_path) -> dict:
    """Stand-ins for a run, a task folder, a notes file and a base model: the check is by path, before reading."""
    run_dir, task, base = tmp_path / "run", tmp_path / "task", tmp_path / "base"
    for folder, name in ((run_dir, "bundle.json"), (task, "train.csv"), (base, "config.json")):
        folder.mkdir()
        (folder / name).write_text("{}\n")
    (run_dir / "metrics.json").write_text("{}\n")
    notes = tmp_path / "notes.csv"
    notes.write_text("id,text\n1,a note\n")
    (tmp_path / "r.yaml").write_text("{}\n")
    return {"run": run_dir, "task": task, "base": base, "notes": notes, "recipe": tmp_path / "r.yaml"}


def overlap_cases(i: dict) -> list:
    run_dir, task, base, notes, recipe = i["run"], i["task"], i["base"], i["notes"], i["recipe"]
    return [
        (["predict", run_dir, "--notes", notes, "--out", run_dir, "--overwrite"], "is the input"),
        (["predict", run_dir, "--notes", notes, "--out", run_dir], "is the input"),
        (["predict", run_dir, "--notes", notes, "--out", notes, "--overwrite"], "is the input"),
        (["export", run_dir, "--out", run_dir, "--overwrite"], "is the input"),
        (["export", run_dir, "--out", run_dir / "merged"], "is inside the input"),
        (["evaluate", run_dir, "--data", notes, "--out", run_dir.parent, "--overwrite"], "contains the input"),
        (["explain", run_dir, "--notes", notes, "--out", run_dir / "x", "--overwrite"], "is inside the input"),
        (["evaluate", run_dir, "--data", notes, "--base", base, "--out", base, "--overwrite"], "is the input"),
        (["report", run_dir, "--out", run_dir], "is the input"),
        (["report", run_dir, "--out", run_dir / "report"], "is inside the input"),
        (["finetune", recipe, f"task.path={task}", "--out", task, "--overwrite"], "is the input"),
        (["finetune", recipe, f"model.base={base}", f"task.path={task}", "--out", base / "sub"], "is inside the input"),
        (["pretrain", recipe, f"model.base={base}", f"data.paths=[{notes}]", "--out", notes, "--overwrite"],
         "is the input"),
        (["prepare", "notes", "--input", notes, "--out", notes.parent, "--overwrite"], "contains the input"),
    ]


def test_out_over_an_input_is_refused(capsys, inputs, tmp_path):
    before = digest(tmp_path)
    for args, expected in overlap_cases(inputs):
        code, err = run(capsys, args)
        refused(code, err, expected)
    assert digest(tmp_path) == before  # every input as it was, nothing written
    assert not list(tmp_path.glob("*.partial"))


def test_report_may_live_in_a_folder_of_runs(capsys, small_finetune_run, tmp_path):
    """`report runs --out runs/report` (the README's) stays allowed: runs/ is a folder of runs, not a run."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(small_finetune_run, runs / "mor")
    code, err = run(capsys, ["report", runs, "--out", runs / "report", "--bootstrap-resamples", "0", "--quiet"])
    assert code == 0, err
    assert (runs / "report" / "table3.md").is_file() and (runs / "report" / MARKER).is_file()
    code, err = run(capsys, ["report", runs, "--out", runs / "report", "--bootstrap-resamples", "0", "--quiet"])
    assert code == 0, err  # a report replaces its own earlier report, with no --overwrite


# --------------------------------------------------------------------------- --overwrite


def test_overwrite_replaces_only_the_same_commands_output(capsys, small_finetune_run, synthetic_tasks, tmp_path):
    notes = synthetic_tasks["mor"] / "test.csv"
    out = tmp_path / "scored"
    code, err = run(capsys, ["predict", small_finetune_run, "--notes", notes, "--out", out, "--quiet"])
    assert code == 0, err
    assert json.loads((out / MARKER).read_text())["command"] == "predict"
    before = digest(out)
    code, err = run(capsys, ["export", small_finetune_run, "--out", out, "--overwrite", "--quiet"])
    refused(code, err, "was written by `clinpeft predict`")
    code, err = run(capsys, ["report", small_finetune_run, "--out", out, "--quiet"])
    refused(code, err, "was written by `clinpeft predict`")
    assert digest(out) == before
    code, err = run(capsys, ["predict", small_finetune_run, "--notes", notes, "--out", out, "--overwrite", "--quiet"])
    assert code == 0, err

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    code, err = run(capsys, ["predict", small_finetune_run, "--notes", notes, "--out", mine, "--overwrite", "--quiet"])
    refused(code, err, "no clinpeft command wrote")
    assert (mine / "thesis.tex").read_text() == "keep"


def test_a_killed_short_jobs_partial_is_cleared_by_the_next_run(capsys, small_finetune_run, synthetic_tasks,
                                                                tmp_path):
    notes = synthetic_tasks["mor"] / "test.csv"
    out = tmp_path / "scored"
    stale = partial_dir(out)
    stale.mkdir()
    (stale / "predictions.csv").write_text("id,predicted\n1,0\n")  # what a SIGKILL mid-write leaves
    code, err = run(capsys, ["predict", small_finetune_run, "--notes", notes, "--out", out, "--quiet"])
    assert code == 0, err
    assert not stale.exists() and len(pd.read_csv(out / "predictions.csv")) == len(pd.read_csv(notes))

    # a training run's partial with a checkpoint is never cleared by another command
    training = tmp_path / "trained"
    checkpoint = partial_dir(training) / "checkpoints" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    code, err = run(capsys, ["predict", small_finetune_run, "--notes", notes, "--out", training, "--quiet"])
    refused(code, err, "holds an unfinished training run with checkpoints")
    assert (checkpoint / "trainer_state.json").is_file()


# --------------------------------------------------------------------------- resume from a damaged checkpoint


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "optimizer.pt", "adapter_model.safetensors",
                                     "trainer_state.json"])
def test_resume_falls_back_from_a_truncated_checkpoint(capsys, tmp_path, tiny_llama, synthetic_corpus, damaged):
    """One file of the newest checkpoint cut in half: resume names it, removes that checkpoint and uses the one
    before (rundir.checkpoint_problem reads each file's structure: safetensors' header and sizes, torch's zip)."""
    from clinpeft.rundir import complete_checkpoints
    from conftest import pretrain_overrides

    (tmp_path / "r.yaml").write_text("{}\n")
    out = tmp_path / "run"
    args = ["pretrain", tmp_path / "r.yaml", *pretrain_overrides(tiny_llama, synthetic_corpus),
            "train.max_steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=3", "eval.base_model=false",
            "--out", out, "--quiet"]
    # a finished run removes its checkpoints: stop it after step 4 by failing the final write, keeping them
    import clinpeft.recipes.pretrain as pretrain_module

    real = pretrain_module.write_json

    def fail(path, data):
        raise KeyboardInterrupt

    pretrain_module.write_json = fail
    try:
        code, _ = run(capsys, args)
    finally:
        pretrain_module.write_json = real
    assert code == 130
    checkpoints = complete_checkpoints(partial_dir(out) / "checkpoints")
    assert [p.name for p in checkpoints][-2:] == ["checkpoint-4", "checkpoint-6"]
    newest = checkpoints[-1]
    data = (newest / damaged).read_bytes()
    (newest / damaged).write_bytes(data[: len(data) // 2])
    assert [p.name for p in complete_checkpoints(partial_dir(out) / "checkpoints")][-1] == "checkpoint-4"
    code, err = run(capsys, args)
    assert code == 0, err
    warning = [line for line in err.splitlines() if "checkpoint-6" in line]
    assert len(warning) == 1 and "resuming from checkpoint-4" in warning[0], err
    assert damaged in warning[0], err  # the file that failed its check is named
    assert json.loads((out / "run.json").read_text())["resumed_from_step"] == 4


# --------------------------------------------------------------------------- every short command, in process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", ["evaluate", "predict", "explain", "export", "report", "prepare"])
def test_signal_at_the_last_moment_leaves_nothing(capsys, monkeypatch, tmp_path, small_finetune_run,
                                                  synthetic_tasks, synthetic_corpus, command, sig):
    """The signal arrives with the whole output written in OUT.partial/, just before the rename (in this
    process: the CLI's own handler turns it into one line and the cleanup): exit 128 + signal, nothing left."""
    import clinpeft.rundir as rundir

    def interrupted(partial, out):
        signal.raise_signal(sig)

    monkeypatch.setattr(rundir, "_finish", interrupted)
    test_csv = synthetic_tasks["mor"] / "test.csv"
    out = tmp_path / "out"
    args = {"evaluate": ["evaluate", small_finetune_run, "--data", test_csv],
            "predict": ["predict", small_finetune_run, "--notes", test_csv],
            "explain": ["explain", small_finetune_run, "--notes", test_csv, "--max-notes", "1"],
            "export": ["export", small_finetune_run],
            "report": ["report", small_finetune_run, "--bootstrap-resamples", "0"],
            "prepare": ["prepare", "notes", "--input", synthetic_corpus["discharge"]]}[command]
    code, err = run(capsys, [*args, "--out", out, "--quiet"])
    assert code == 128 + sig, err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {signal.Signals(sig).name}"), err
    assert not out.exists() and not partial_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_training_that_raises_gives_back_the_signal_handlers(tmp_path):
    """Checkpointing takes SIGTERM/SIGINT at on_train_begin and gives them back at on_train_end; a training that
    raises never gets there, so fit gives them back too: Ctrl-C stops the caller's next command in the process."""
    from clinpeft.config import TrainSection
    from clinpeft.training.checkpointing import Checkpointing
    from clinpeft.training.fit import fit

    checkpointing = Checkpointing(TrainSection())

    class Failing:
        def train(self, resume_from_checkpoint=None):
            checkpointing.on_train_begin(None, None, None)
            assert signal.getsignal(signal.SIGINT) == checkpointing._handle
            raise RuntimeError("out of memory")

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RuntimeError, match="out of memory"):
        fit(Failing(), checkpointing, None, tmp_path / "checkpoints", tmp_path, progress=False)
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before


def test_the_cli_owns_sigint_while_a_command_runs(capsys, monkeypatch, tmp_path, synthetic_corpus):
    """An in-process caller that set its own SIGINT handler (or one an earlier command left) still gets the CLI's
    contract, SIGINT -> one line, exit 130, nothing written; its handler is back afterwards."""
    import clinpeft.rundir as rundir

    monkeypatch.setattr(rundir, "_finish", lambda partial, out: signal.raise_signal(signal.SIGINT))
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        code, err = run(capsys, ["prepare", "notes", "--input", synthetic_corpus["discharge"],
                                 "--out", tmp_path / "out", "--quiet"])
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # the caller's, back
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and caught == [], err
    assert not (tmp_path / "out").exists()
