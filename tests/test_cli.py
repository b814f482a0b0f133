"""Command-line parsing (overrides before or after the options, unknown arguments refused), bundled
recipes found from any directory, and what the commands print."""

import pytest

from clinpeft.cli import main, parse_args
from clinpeft.config import BUNDLED_CONFIGS, PretrainConfig, find_recipe, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.recipes import experiment


def test_overrides_after_the_options_are_kept_in_order():
    args = parse_args(["finetune", "r.yaml", "train.lr=1e-4", "--out", "runs/x", "lora.r=4", "--quiet",
                       "task.name=mor"])
    assert args.recipe == "r.yaml" and args.out == "runs/x" and args.quiet
    assert args.overrides == ["train.lr=1e-4", "lora.r=4", "task.name=mor"]


def test_unknown_option_or_stray_word_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["pretrain", "r.yaml", "--out", "x", "--nonsense"])
    assert exc.value.code == 2 and "--nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["report", "runs", "--out", "x", "train.lr=1"])  # report takes no overrides


# --------------------------------------------------------------------------- bundled recipes, from any directory


def test_bundled_recipe_is_found_outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    bundled = load_config(PretrainConfig, BUNDLED_CONFIGS / "demo" / "pretrain_lora.yaml")
    for path in ("configs/demo/pretrain_lora.yaml", "demo/pretrain_lora.yaml"):
        assert find_recipe(path) == BUNDLED_CONFIGS / "demo" / "pretrain_lora.yaml"
        assert load_config(PretrainConfig, path, ["peft.r=4"]) == bundled.model_copy(
            update={"peft": bundled.peft.model_copy(update={"r": 4})})


def test_a_local_file_wins_over_the_bundled_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "demo").mkdir(parents=True)
    (tmp_path / "configs" / "demo" / "pretrain_lora.yaml").write_text("peft:\n  r: 2\n")
    assert load_config(PretrainConfig, "configs/demo/pretrain_lora.yaml").peft.r == 2


def test_missing_recipe_names_every_place_tried(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "configs/demo/pretrain_lorra.yaml", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: recipe configs/demo/pretrain_lorra.yaml not found")
    assert str(BUNDLED_CONFIGS / "demo" / "pretrain_lorra.yaml") in err and "`clinpeft recipes`" in err
    assert not (tmp_path / "out").exists()


def test_recipes_lists_every_bundled_recipe_with_what_it_is_for(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert len(listed) == len(lines)
    shipped = {f"configs/{p.relative_to(BUNDLED_CONFIGS).as_posix()}" for p in BUNDLED_CONFIGS.glob("*/*.yaml")}
    assert set(listed) == shipped and "configs/search_spaces.yaml" not in listed  # that one is not a recipe
    assert all(find_recipe(path).is_file() for path in listed)  # each path works from here
    assert listed["configs/demo/pretrain_lora.yaml"].startswith("Step 1 on the tiny demo model")
    assert all(text and "clinpeft " not in text for text in listed.values())  # the description, not the usage


def test_grid_recipes_are_found_beside_the_grid_then_bundled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "mine" / "table3.yaml"
    grid.parent.mkdir()
    grid.write_text("{}\n")
    (grid.parent / "finetune_lora.yaml").write_text("{}\n")
    assert experiment.resolve_recipe("finetune_lora.yaml", grid) == grid.parent / "finetune_lora.yaml"
    assert experiment.resolve_recipe("demo/pretrain_lora.yaml", grid) == BUNDLED_CONFIGS / "demo" / "pretrain_lora.yaml"
    with pytest.raises(ClinpeftError, match=str(grid.parent / "pretrain_lorra.yaml")):
        experiment.resolve_recipe("pretrain_lorra.yaml", grid)
    # the bundled grid, named from elsewhere, finds the recipes beside it
    bundled = find_recipe("configs/demo/table3.yaml")
    config = load_config(experiment.ExperimentConfig, "configs/demo/table3.yaml")
    clinical = {m.name: tmp_path / m.name for m in config.models if m.clinical}
    cells = experiment.plan_cells(config, tmp_path / "out", tmp_path / "tasks", bundled, clinical)
    assert len(cells) == 40 and cells[0].config.model.base == "demo"


# --------------------------------------------------------------------------- summaries


def test_report_refuses_negative_resamples_before_reading_runs(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--bootstrap-resamples", "-1"]) == 2
    assert "--bootstrap-resamples -1" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_experiment_summary_and_failures():
    state = {"n_ran": 1, "n_done_earlier": 2, "n_failed": 1, "wall_time_s": 90.0, "cells": [
        {"cell": "m/lora/mor", "status": "ran"}, {"cell": "m/lora/los", "status": "failed", "error": "boom"}]}
    assert experiment.summary(state, "t3") == ["t3: 1 cells run, 2 done earlier, 1 failed (1.5 min)"]
    assert experiment.failures(state, "t3") == [
        "failed cells (errors in t3/experiment.json); rerun the same command to retry them:", "  m/lora/los: boom"]
    assert experiment.failures({**state, "cells": state["cells"][:1]}, "t3") == []
