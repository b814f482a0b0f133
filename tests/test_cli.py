"""Command-line parsing: overrides before or after the options, unknown arguments refused."""

import pytest

from clinpeft.cli import parse_args


def test_overrides_after_the_options_are_kept_in_order():
    args = parse_args(["finetune", "r.yaml", "train.lr=1e-4", "--out", "runs/x", "lora.r=4", "--quiet", "task.name=mor"])
    assert args.recipe == "r.yaml" and args.out == "runs/x" and args.quiet
    assert args.overrides == ["train.lr=1e-4", "lora.r=4", "task.name=mor"]


def test_unknown_option_or_stray_word_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["pretrain", "r.yaml", "--out", "x", "--nonsense"])
    assert exc.value.code == 2 and "--nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["report", "runs", "--out", "x", "train.lr=1"])  # report takes no overrides
