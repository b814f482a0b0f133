"""The fault and bad-input matrix: for every command, cases a new user meets, each with its exit code,
one line naming the file / row / key, no traceback, no output or partial directory left (except a
resumable one), and nothing the user had overwritten.

Each case runs the real CLI in this process (in a subprocess where two processes are the point).
`python -m pytest tests/test_faults.py -q` is the matrix; README "Fault matrix" lists it.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest

from clinpeft.cli import main
from clinpeft.rundir import partial_dir

CANARY = "OKAPI-CANARY-4417"


def run(capsys, args: list[str]) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and CANARY not in captured.err + captured.out
    return code, captured.err.strip()


def assert_refused(code: int, err: str, expected: str, out: Path | None = None, code_expected: int = 2) -> None:
    assert code == code_expected, err
    assert err.startswith("error: ") and err.count("\n") == 0, err
    assert expected in err, err
    if out is not None:
        assert not partial_dir(out).exists(), "a partial dir without a checkpoint was left"
        assert not list(out.parent.glob(f".{out.name}.tmp-*"))


@pytest.fixture
def recipe(tmp_path) -> str:
    (tmp_path / "r.yaml").write_text("{}\n")
    return str(tmp_path / "r.yaml")


@pytest.fixture
def pretrain_args(tiny_llama, synthetic_corpus, recipe):
    from conftest import pretrain_overrides

    return ["pretrain", recipe, *pretrain_overrides(tiny_llama, synthetic_corpus), "eval.base_model=false", "--quiet"]


@pytest.fixture
def finetune_args(tiny_llama, synthetic_tasks, recipe):
    return ["finetune", recipe, f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}", "variant=lora",
            "task.max_seq_len=64", "task.max_examples=24", "train.epochs=1", "train.batch_size=8",
            "train.grad_accum=1", "lora.r=4", "eval.bootstrap_resamples=0", "--quiet"]


# --- config values that make no sense: refused before any work, naming the key

@pytest.mark.parametrize("command, override, expected", [
    ("pretrain", "train.lr=0", "train.lr"),
    ("pretrain", "train.lr=-1e-4", "train.lr"),
    ("pretrain", "peft.r=0", "peft.r"),
    ("pretrain", "train.batch_size=0", "train.batch_size"),
    ("pretrain", "train.epochs=0", "train.epochs"),
    ("pretrain", "data.max_seq_len=1024", "data.max_seq_len=1024: the model"),  # tiny LLaMA: 512 positions
    ("pretrain", "train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("pretrain", "data.on_bad_rows=maybe", "data.on_bad_rows"),
    ("finetune", "lora.r=0", "lora.r"),
    ("finetune", "train.lr=0", "train.lr"),
    ("finetune", "train.batch_size=0", "train.batch_size"),
    ("finetune", "train.epochs=0", "train.epochs"),
    ("finetune", "task.max_seq_len=4096", "task.max_seq_len=4096: the model"),
    ("finetune", "train.threads=0", "train.threads"),
])
def test_nonsense_config_value(capsys, tmp_path, pretrain_args, finetune_args, command, override, expected):
    args = pretrain_args if command == "pretrain" else finetune_args
    out = tmp_path / "out"
    code, err = run(capsys, [*args, override, "--out", str(out)])
    assert_refused(code, err, expected, out)
    assert not out.exists()


def test_base_directory_without_config_json(capsys, tmp_path, pretrain_args, finetune_args):
    base = tmp_path / "not-a-model"
    base.mkdir()
    (base / "weights.bin").write_bytes(b"x")
    for args in (pretrain_args, finetune_args):
        out = tmp_path / "out"
        code, err = run(capsys, [*args, f"model.base={base}", "--out", str(out)])
        assert_refused(code, err, "has no config.json", out)
    code, err = run(capsys, ["params", str(base), args[1]])
    assert_refused(code, err, "config.json")


def test_clinical_adapter_of_another_base(capsys, tmp_path, finetune_args, other_tiny_llama, clinical_run):
    out = tmp_path / "out"
    code, err = run(capsys, [*finetune_args, f"model.base={other_tiny_llama}", "variant=clinical_frozen",
                             f"clinical_adapter={clinical_run}", "--out", str(out)])
    assert_refused(code, err, "base model", out)


# --- --out

def test_out_is_an_existing_file(capsys, tmp_path, pretrain_args, finetune_args):
    out = tmp_path / "results.txt"
    out.write_text("the user's file\n")
    for args in (pretrain_args, finetune_args):
        for extra in ([], ["--overwrite"]):
            code, err = run(capsys, [*args, "--out", str(out), *extra])
            assert_refused(code, err, "is an existing file", out)
            assert out.read_text() == "the user's file\n"


def test_out_exists_and_is_not_overwritten(capsys, tmp_path, finetune_args):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, err = run(capsys, [*finetune_args, "--out", str(out)])
    assert_refused(code, err, "already exists", out)
    assert (out / "mine.txt").read_text() == "keep"


def test_read_only_out(capsys, tmp_path, finetune_args, monkeypatch):
    """Root can write anywhere, so the permission is simulated (os.access); a real EROFS/EACCES mid-run is
    the OSError case below."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode == os.W_OK else real_access(path, mode))
    out = tmp_path / "ro" / "out"
    (tmp_path / "ro").mkdir()
    code, err = run(capsys, [*finetune_args, "--out", str(out)])
    assert_refused(code, err, "is not writable", out)


# --- the disk

def test_full_disk_refused_before_the_work(capsys, tmp_path, pretrain_args, finetune_args, monkeypatch):
    import shutil as shutil_module

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=1000))
    for args in (pretrain_args, finetune_args):
        out = tmp_path / "out"
        code, err = run(capsys, [*args, "--out", str(out)])
        assert_refused(code, err, "MB free on its disk", out)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS])
def test_disk_error_while_writing_is_one_line(capsys, tmp_path, pretrain_args, monkeypatch, error):
    from clinpeft.recipes import pretrain

    def fail(path, data):
        raise OSError(error, os.strerror(error), str(path))

    monkeypatch.setattr(pretrain, "write_json", fail)
    out = tmp_path / "out"
    code, err = run(capsys, [*pretrain_args, "--out", str(out)])
    assert_refused(code, err, os.strerror(error), out)
    assert "run.json" in err and not out.exists()


# --- task data

def broken_task(synthetic_tasks, tmp_path, split, edit) -> Path:
    task = tmp_path / "mor"
    shutil.copytree(synthetic_tasks["mor"], task)
    frame = pd.read_csv(task / f"{split}.csv", dtype=str, keep_default_na=False)
    edit(frame).to_csv(task / f"{split}.csv", index=False)
    return task


@pytest.mark.parametrize("split", ["val", "train"])
def test_one_class_split_refused_before_training(capsys, tmp_path, finetune_args, synthetic_tasks, split):
    task = broken_task(synthetic_tasks, tmp_path, split, lambda f: f.assign(label="0"))
    out = tmp_path / "out"
    code, err = run(capsys, [*finetune_args, f"task.path={task}", "--out", str(out)])
    assert_refused(code, err, f"{split}.csv: all ", out)


def test_label_cell_of_free_text_is_not_echoed(capsys, tmp_path, finetune_args, synthetic_tasks):
    def shift(frame):
        frame.loc[2, "label"] = f"patient admitted with chest pain {CANARY}"
        return frame

    task = broken_task(synthetic_tasks, tmp_path, "train", shift)
    out = tmp_path / "out"
    code, err = run(capsys, [*finetune_args, f"task.path={task}", "--out", str(out)])
    assert_refused(code, err, "train.csv row 4: label (a value of", out)
    assert "looks like free text, not shown" in err


# --- two processes, one --out

def test_two_processes_writing_one_out(capsys, tmp_path, finetune_args):
    """The first holds OUT.partial/.lock; the second refuses in one line and leaves the first's run alone."""
    from test_resume import start, wait_for_checkpoint

    out = tmp_path / "out"
    args = [a for a in finetune_args if a != "train.epochs=1"] + ["train.epochs=3", "--out", str(out)]
    first = start(args, slow_after=1)
    try:
        wait_for_checkpoint(first, out)
        code, err = run(capsys, args)
        assert_refused(code, err, "is being written by another process")
        assert f"pid {first.pid}" in err
    finally:
        first.send_signal(signal.SIGTERM)  # pre-empted: checkpoint, exit 143
        first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    assert partial_dir(out).is_dir()  # resumable, and the same command finishes it
    code, err = run(capsys, args)
    assert code == 0 and (out / "metrics.json").is_file() and not partial_dir(out).exists()


# --- the other commands

def test_other_commands(capsys, tmp_path, recipe):
    missing = tmp_path / "nowhere"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["evaluate", str(missing), "--data", str(tmp_path / "x.csv"), "--out", str(tmp_path / "e")],
         "x.csv not found"),
        (["report", str(empty), "--out", str(tmp_path / "rep")], "holds no run.json"),
        (["experiment", recipe, "no_such_key=1", "--out", str(tmp_path / "x")], "no_such_key"),
        (["sweep", recipe, "--out", str(tmp_path / "s")], "cannot tell a pretrain from a finetune recipe"),
        (["prepare", "notes", "--input", str(missing / "n.csv"), "--out", str(tmp_path / "c")], "not found"),
        (["prepare", "mimic3-tasks", "--mimic-dir", str(missing), "--out", str(tmp_path / "t")], "nowhere"),
        (["prepare", "pmv", "--admission-notes", str(missing), "--labels", str(missing / "l.csv"),
          "--out", str(tmp_path / "p")], "nowhere"),
        (["params", str(missing), recipe], "nowhere"),
        (["demo", "--out", recipe, "--quick"], "is an existing file"),
    ]
    for args, expected in cases:
        code, err = run(capsys, args)
        assert_refused(code, err, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "r.yaml"]  # nothing written
