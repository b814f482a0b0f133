"""Privacy: outputs private by default, and note text never leaves the notes.

A canary string is planted in every note (and, in the finetune task, in a label cell that breaks a
row: the error names the row, not the text). After every command, no log line, message, run.json,
metrics.json, config.yaml, *.failed.json, experiment.json, trainer state, sweep journal or
trials.csv may contain it. The places that hold note text by design are listed and skipped: the
prepared corpus (`*.arrow`) and nothing else.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clinpeft.cli import main

pytestmark = pytest.mark.slow
CANARY = "QUOKKA-CANARY-90210"


def plant(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(text=[f"{t} {CANARY}" for t in frame["text"]])


@pytest.fixture(scope="module")
def canary_data(synthetic_tasks, synthetic_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("canary")
    for task in ("mor", "pmv"):
        shutil.copytree(synthetic_tasks[task], root / task)
        for split in ("train", "val", "test"):
            path = root / task / f"{split}.csv"
            plant(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)
    bad = root / "bad"  # a label cell holding note text (an unquoted comma shifted it there)
    shutil.copytree(root / "mor", bad)
    frame = pd.read_csv(bad / "train.csv", dtype=str, keep_default_na=False)
    frame.loc[3, "label"] = f"admitted with sepsis {CANARY}"
    frame.to_csv(bad / "train.csv", index=False)
    corpus = root / "notes.csv"
    frames = [pd.read_csv(synthetic_corpus[k], dtype=str, keep_default_na=False) for k in ("discharge", "radiology")]
    plant(pd.concat(frames)).to_csv(corpus, index=False)
    return root, corpus


def scan(folder: Path) -> list[str]:
    """Files under folder (other than the corpus' Arrow shards) that contain the canary."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".arrow" and CANARY.encode() in path.read_bytes():
            found.append(str(path.relative_to(folder)))
    return found


def test_canary_never_leaves_the_notes(canary_data, tiny_llama, tmp_path, capsys):
    root, corpus = canary_data
    (tmp_path / "r.yaml").write_text("{}\n")
    recipe = str(tmp_path / "r.yaml")
    runs = tmp_path / "runs"
    small = ["task.max_seq_len=64", "task.max_examples=24", "train.epochs=1", "train.batch_size=8",
             "train.grad_accum=1", "lora.r=4", "eval.bootstrap_resamples=0", "train.logging_steps=1"]
    commands = [
        (["prepare", "notes", "--input", str(corpus), "--out", str(runs / "corpus"), "--quiet"], 0),
        (["pretrain", recipe, f"model.base={tiny_llama}", f"data.paths=[{runs / 'corpus'}]", "data.max_seq_len=64",
          "train.max_steps=2", "train.batch_size=4", "train.grad_accum=1", "train.checkpoint_every=1",
          "eval.train_max_blocks=4", "eval.base_model=false", "peft.r=2", "--out", str(runs / "pretrain"),
          "--quiet"], 0),
        (["finetune", recipe, f"model.base={tiny_llama}", f"task.path={root / 'mor'}", *small,
          "--out", str(runs / "mor"), "--quiet"], 0),
        (["finetune", recipe, f"model.base={tiny_llama}", f"task.path={root / 'bad'}", *small,
          "--out", str(runs / "bad"), "--quiet"], 2),
        (["evaluate", str(runs / "mor"), "--data", str(root / "mor" / "test.csv"), "--out", str(runs / "eval"),
          "--quiet"], 0),
        (["report", str(runs), "--out", str(runs / "report"), "--bootstrap-resamples", "0"], 0),
    ]
    grid = {"data": {"tasks_dir": str(root), "tasks": ["mor", "bad"]}, "finetune": {"overrides": small},
            "models": [{"name": "tiny", "base": str(tiny_llama), "variants": ["head"]}],
            "report": {"bootstrap_resamples": 0}}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    commands.append((["experiment", str(tmp_path / "grid.yaml"), "--out", str(runs / "grid"), "--quiet"], 1))
    sweep_recipe = {"model": {"base": str(tiny_llama)}, "variant": "head",
                    "task": {"path": str(root / "bad"), "max_seq_len": 64, "max_examples": 24},
                    "train": {"epochs": 1, "batch_size": 8, "grad_accum": 1}, "eval": {"bootstrap_resamples": 0},
                    "search": {"train.lr": {"low": 1e-3, "high": 1e-2, "log": True}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep_recipe))
    commands.append((["sweep", str(tmp_path / "sweep.yaml"), "--out", str(runs / "sweep"), "--trials", "1",
                      "--sampler", "random", "--quiet"], None))
    for args, expected in commands:
        code = main(args)
        captured = capsys.readouterr()
        assert expected is None or code == expected, (args[0], code, captured.err[-500:])
        assert CANARY not in captured.out + captured.err, args[0]
    assert (runs / "grid" / "tiny" / "head" / "bad.failed.json").is_file()  # the failing cell, recorded
    assert (runs / "sweep" / "study.journal").is_file()
    assert scan(runs) == []
    # private by default: folders 0700, files 0600, *.failed.json and the journal included
    for path in [runs / "mor", runs / "mor" / "metrics.json", runs / "grid" / "tiny" / "head" / "bad.failed.json",
                 runs / "sweep" / "study.journal", runs / "pretrain" / "run.json"]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


@pytest.mark.parametrize("setting, folder_mode", [(None, 0o700), ("--shared", 0o755), ("CLINPEFT_UMASK=027", 0o750)])
def test_output_permissions(canary_data, tiny_llama, tmp_path, monkeypatch, setting, folder_mode):
    root, _ = canary_data
    (tmp_path / "r.yaml").write_text("{}\n")
    extra = []
    if setting == "--shared":
        extra = ["--shared"]
    elif setting:
        monkeypatch.setenv("CLINPEFT_UMASK", "027")
    out = tmp_path / "out"
    code = main(["finetune", str(tmp_path / "r.yaml"), f"model.base={tiny_llama}", f"task.path={root / 'mor'}",
                 "variant=head", "task.max_seq_len=32", "task.max_examples=16", "train.epochs=1",
                 "eval.bootstrap_resamples=0", "--out", str(out), "--quiet", *extra])
    assert code == 0
    assert stat.S_IMODE(out.stat().st_mode) == folder_mode
    assert stat.S_IMODE((out / "metrics.json").stat().st_mode) == folder_mode & 0o666
