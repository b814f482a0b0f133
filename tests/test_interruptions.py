"""Every command, interrupted at each of its stages by SIGTERM, SIGINT or SIGKILL in a real process, then run again
(issue 26, item 4): the interruption gives one line and exit 143 / 130; it leaves no output in place of the
finished one and no note text on disk, only a resumable checkpoint (a training stage); the rerun finishes,
resumes from that checkpoint, clears what a SIGKILL left, and leaves a planted note canary nowhere but where
the command shows notes by design (explain's page).

How a stage is reached without sleeps: the child process wraps one named function (PARK below) so that its
n-th call, just before or after the real one, writes a `ready` file and waits for a `go` file; the test waits for
`ready`, sends the signal, then writes `go` (a training step whose handler only asks for a checkpoint goes on).
A stage renamed or moved by a refactoring fails here as "never reached", never passes silently.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from clinpeft.cli import main
from clinpeft.rundir import CHECKPOINTS, LOCK_FILE, MARKER, complete_checkpoints, partial_dir

SRC = Path(__file__).resolve().parents[1] / "src"
CANARY = "WOMBAT-CANARY-9031"

CHILD = textwrap.dedent("""
    import importlib, os, pathlib, sys, time

    module, _, attribute = os.environ["PARK_AT"].partition(":")
    call, when = int(os.environ["PARK_CALL"]), os.environ["PARK_WHEN"]
    ready, go = pathlib.Path(os.environ["PARK_READY"]), pathlib.Path(os.environ["PARK_GO"])
    owner = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    real, calls = getattr(owner, name), []

    def wait():
        ready.write_text("parked")
        deadline = time.monotonic() + 300
        while not go.exists() and time.monotonic() < deadline:  # a raising signal handler ends it at once
            time.sleep(0.02)

    def parked(*args, **kwargs):
        calls.append(1)
        if len(calls) == call and when == "before":
            wait()
        result = real(*args, **kwargs)
        if len(calls) == call and when == "after":
            wait()
        return result

    setattr(owner, name, parked)
    from clinpeft.cli import main
    sys.exit(main(sys.argv[1:]))
""")

# (command, stage) -> (function the child parks in, its call number, before or after the real call)
TRAINER_STEP = ("transformers:Trainer.training_step", 1, "after")
RENAME = ("clinpeft.rundir:_finish", 1, "before")  # the whole output written in OUT.partial/, not yet in place
STAGES = {
    ("pretrain", "tokenise"): ("clinpeft.recipes.pretrain:tokenize_corpus", 1, "after"),  # Arrow copies on disk
    ("pretrain", "base-perplexity"): ("clinpeft.recipes.pretrain:split_perplexity", 1, "after"),
    ("pretrain", "train"): TRAINER_STEP,
    ("pretrain", "validate"): ("clinpeft.recipes.pretrain:split_perplexity", 3, "after"),  # 1, 2: the base's
    ("pretrain", "save"): ("clinpeft.recipes.pretrain:save_clinical", 1, "after"),
    ("pretrain", "rename"): RENAME,
    ("finetune", "tokenise"): ("clinpeft.recipes.finetune:encode_notes", 1, "after"),
    ("finetune", "probe"): ("clinpeft.recipes.finetune:linear_probe", 1, "after"),
    ("finetune", "train"): TRAINER_STEP,
    ("finetune", "validate"): ("clinpeft.recipes.finetune:score_notes", 1, "after"),
    ("finetune", "save"): ("clinpeft.recipes.finetune:write_predictions", 1, "after"),
    ("finetune", "rename"): RENAME,
    ("evaluate", "score"): ("clinpeft.inference:Predictor.logits", 1, "after"),
    ("evaluate", "rename"): RENAME,
    ("predict", "score"): ("clinpeft.inference:Predictor.predict", 1, "after"),
    ("predict", "rename"): RENAME,
    ("explain", "score"): ("clinpeft.recipes.explain:occlusion", 1, "after"),
    ("explain", "rename"): RENAME,
    ("export", "merge"): ("clinpeft.modeling.classifier:load_bundle", 1, "after"),
    ("export", "rename"): RENAME,
    ("report", "read"): ("clinpeft.reporting.report:find_runs", 1, "after"),
    ("report", "rename"): RENAME,
    ("prepare", "write"): ("clinpeft.prepare.notes:ShardWriter.write", 1, "after"),  # a shard of notes written
    ("prepare", "rename"): RENAME,
}
# one stage of each command with SIGTERM runs by default (~1.5 min in all); the whole matrix (~13 min on 2 cores)
# is `exhaustive`: pytest --exhaustive tests/test_interruptions.py
QUICK = {("pretrain", "tokenise"), ("finetune", "train"), ("evaluate", "score"), ("predict", "rename"),
         ("explain", "score"), ("export", "merge"), ("report", "rename"), ("prepare", "write")}
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}
TRAINING = ("pretrain", "finetune")


def cases():
    for (command, stage) in STAGES:
        for name in SIGNALS:
            quick = name == "SIGTERM" and (command, stage) in QUICK
            yield pytest.param(command, stage, name, id=f"{command}-{stage}-{name}",
                               marks=() if quick else (pytest.mark.slow, pytest.mark.exhaustive))


@pytest.fixture
def canary_inputs(tmp_path, synthetic_corpus, synthetic_tasks) -> dict:
    """A notes CSV, a pretraining corpus and a task folder with the canary in every note, under tmp_path/inputs."""
    folder = tmp_path / "inputs"
    task = folder / "task"
    shutil.copytree(synthetic_tasks["mor"], task)
    for split in ("train", "val", "test"):
        frame = pd.read_csv(task / f"{split}.csv", dtype=str, keep_default_na=False)
        frame["text"] = frame["text"] + f" {CANARY}"
        frame.to_csv(task / f"{split}.csv", index=False)
    corpus = pd.read_csv(synthetic_corpus["discharge"], dtype=str, keep_default_na=False)
    corpus["text"] = corpus["text"] + f" {CANARY}"
    corpus.to_csv(folder / "corpus.csv", index=False)
    (folder / "r.yaml").write_text("{}\n")
    return {"folder": folder, "notes": task / "test.csv", "corpus": folder / "corpus.csv", "task": task,
            "recipe": folder / "r.yaml"}


def command_line(command: str, i: dict, out: Path, tiny_llama: Path, run_dir: Path) -> list:
    tail = ["--out", out, "--quiet"]
    if command == "pretrain":
        return ["pretrain", i["recipe"], f"model.base={tiny_llama}", f"data.paths=[{i['corpus']}]",
                "data.max_seq_len=64", "train.batch_size=4", "train.grad_accum=1", "train.max_steps=2",
                "eval.train_max_blocks=4", "eval.base_model=true", "peft.r=4", *tail]
    if command == "finetune":
        return ["finetune", i["recipe"], f"model.base={tiny_llama}", f"task.path={i['task']}", "variant=lora",
                "task.max_seq_len=64", "task.max_examples=16", "train.epochs=1", "train.batch_size=8",
                "train.grad_accum=1", "lora.r=4", "eval.bootstrap_resamples=0", *tail]
    return {"evaluate": ["evaluate", run_dir, "--data", i["notes"]],
            "predict": ["predict", run_dir, "--notes", i["notes"]],
            "explain": ["explain", run_dir, "--notes", i["notes"], "--max-notes", "2"],
            "export": ["export", run_dir],
            "report": ["report", run_dir, "--bootstrap-resamples", "0"],
            "prepare": ["prepare", "notes", "--input", i["corpus"]]}[command] + tail


def start(args: list, park: tuple, folder: Path) -> subprocess.Popen:
    """The command in a child process that parks at `park`; every cache and temporary file it may write
    (datasets', Hugging Face's, Python's tempfile) lands under `folder`, where the canary is looked for."""
    at, call, when = park
    (folder / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "CLINPEFT_THREADS": "1", "PARK_AT": at, "PARK_CALL": str(call),
           "PARK_WHEN": when, "PARK_READY": str(folder / "ready"), "PARK_GO": str(folder / "go"),
           "HF_DATASETS_CACHE": str(folder / "hf-datasets"), "HF_HOME": str(folder / "hf"),
           "TMPDIR": str(folder / "tmp")}
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until_parked(ready: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Polls the child's `ready` file (no fixed sleep: a busy machine only makes it slower); `timeout` only
    catches a stage that is never reached."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"ended (rc {proc.returncode}) before the stage: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the stage was never reached")
        time.sleep(0.05)


def canary_files(root: Path, skip: list[Path]) -> list[str]:
    """Files under `root` (outside the folders in `skip`) holding the canary, as text or inside Arrow's bytes."""
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and not any(s == p or s in p.parents for s in skip)
                  and CANARY.encode() in p.read_bytes())


@pytest.mark.parametrize("command, stage, sig_name", list(cases()))
def test_interrupted_then_rerun(capsys, monkeypatch, tmp_path, canary_inputs, tiny_llama, small_finetune_run,
                                command, stage, sig_name):
    sig = SIGNALS[sig_name]
    out = tmp_path / "out"
    args = command_line(command, canary_inputs, out, tiny_llama, small_finetune_run)
    proc = start(args, STAGES[command, stage], tmp_path)
    try:
        wait_until_parked(tmp_path / "ready", proc)
        proc.send_signal(sig)
        (tmp_path / "go").write_text("go")  # after the signal: a checkpointing handler lets the step finish
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    inputs = canary_inputs["folder"]
    partial = partial_dir(out)
    checkpoints = [p.name for p in complete_checkpoints(partial / CHECKPOINTS)]
    resumed = int(checkpoints[-1].split("-")[1]) if checkpoints else 0  # the step the rerun must resume from
    assert not out.exists()  # never a half output in place of a finished one
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + sig, stderr
        assert "Traceback" not in stderr, stderr
        lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning: ")]
        assert len(lines) == 1 and lines[0].startswith(f"error: {sig_name}"), stderr
        assert canary_files(tmp_path, [inputs]) == []  # no note text anywhere, a checkpoint's folder included
        if stage == "train":  # the handler lets the step end, then writes a checkpoint of it
            assert checkpoints == ["checkpoint-1"]
        if checkpoints:  # only what resumes: the checkpoints and the config they were made with
            assert command in TRAINING
            assert {p.name for p in partial.iterdir()} <= {CHECKPOINTS, "config.yaml", LOCK_FILE}
        else:
            assert not partial.exists()

    # the same command again, in this process (its temporary files under tmp_path too): it finishes, resumes from
    # the checkpoint if one was written, and leaves nothing of the interrupted run behind
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    assert (out / MARKER).is_file() and not partial_dir(out).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.endswith(".partial")] == []
    if command in TRAINING:
        record = json.loads((out / ("run.json" if command == "pretrain" else "metrics.json")).read_text())
        assert record["resumed_from_step"] == resumed
        assert not (out / CHECKPOINTS).exists() and not (out / ".cache").exists()
    # explain's page shows notes, a prepared corpus is the notes: by design (README: Privacy)
    shown = [out] if command in ("explain", "prepare") else []
    assert canary_files(tmp_path, [inputs, *shown]) == []


# --------------------------------------------------------------------------- two writers to one --out

FIRST_STAGE = {"pretrain": "tokenise", "finetune": "tokenise", "evaluate": "score", "predict": "score",
               "explain": "score", "export": "merge", "report": "read", "prepare": "write"}
WRITERS = [pytest.param(command, moment, id=f"{command}-{moment}",
                        marks=() if (command, moment) in {("predict", "rename"), ("finetune", "first")}
                        else (pytest.mark.slow, pytest.mark.exhaustive))
           for command in FIRST_STAGE for moment in ("first", "rename")]


@pytest.mark.parametrize("command, moment", WRITERS)
def test_two_writers_to_one_out_never_both_succeed(capsys, tmp_path, canary_inputs, tiny_llama, small_finetune_run,
                                                   command, moment):
    """The first writer (a real process) parked at its first stage or with its whole output written just before
    the rename; a second one (this process) to the same --out, with and without --overwrite, is refused in one
    line at its start; the first then finishes. Exactly one reports success, and the output is the first's."""
    out = tmp_path / "out"
    args = command_line(command, canary_inputs, out, tiny_llama, small_finetune_run)
    park = STAGES[command, FIRST_STAGE[command]] if moment == "first" else RENAME
    first = start(args, park, tmp_path)
    try:
        wait_until_parked(tmp_path / "ready", first)
        for extra in [[], *([["--overwrite"]] if command != "report" else [])]:  # report has no --overwrite
            code = main([str(a) for a in [*args, *extra]])
            err = capsys.readouterr().err.strip()
            assert code == 2, err
            assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
            assert f"--out {out} is being written by another process (pid {first.pid}" in err, err
        (tmp_path / "go").write_text("go")
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert (out / MARKER).is_file() and not partial_dir(out).exists()
    # the finished output is now refused without --overwrite: the second writer never replaces it unasked
    code = main([str(a) for a in args]) if command != "report" else 2
    assert code == 2
    capsys.readouterr()


@contextmanager
def parked_first_writer(args: list, park: tuple, folder: Path):
    """A first writer parked at `park` while the block runs; then stopped with SIGTERM, which it must obey."""
    first = start(args, park, folder)
    stderr = ""
    try:
        wait_until_parked(folder / "ready", first)
        yield first
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGTERM, stderr


def test_two_experiments_to_one_out(capsys, tmp_path):
    """An experiment's --out (a folder of runs it resumes) is held by one process too: the second is refused at its
    start; the first, stopped before its first cell, leaves no lock folder behind."""
    out = tmp_path / "grid"
    (tmp_path / "g.yaml").write_text("data: {demo: quick}\nmodels: [{name: m, base: demo, variants: [lora]}]\n")
    args = ["experiment", tmp_path / "g.yaml", "--out", out, "--quiet"]
    with parked_first_writer(args, ("clinpeft.recipes.experiment:main", 1, "before"), tmp_path) as first:
        code = main([str(a) for a in args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err, err
        assert f"--out {out} is being written by another process (pid {first.pid}" in err, err
    assert not partial_dir(out).exists()


def test_two_demos_to_one_out(capsys, tmp_path):
    """A demo's --out (its data, runs and report, resumed by a rerun) is held by one process too: a second demo on
    it is refused at its start, before any model or data, in one line with exit 2; the first, stopped before its
    first stage, leaves no lock folder behind (the whole demo never runs here)."""
    out = tmp_path / "demo-out"
    args = ["demo", "--out", out, "--quick", "--quiet"]
    with parked_first_writer(args, ("clinpeft.recipes.demo:main", 1, "before"), tmp_path) as first:
        assert (partial_dir(out) / LOCK_FILE).read_text().strip() == str(first.pid)
        code = main([str(a) for a in args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and "Traceback" not in err, err
        assert err == (f"error: --out {out} is being written by another process (pid {first.pid}, lock "
                       f"{partial_dir(out) / LOCK_FILE}); wait for it or choose another --out"), err
        assert not out.exists()  # the refused demo wrote nothing
    assert not partial_dir(out).exists() and not out.exists()
