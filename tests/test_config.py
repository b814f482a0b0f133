"""Configs: paper defaults, recipes + overrides, and early failures that name the key."""

import pytest
import yaml

from clinpeft.config import FinetuneConfig, PretrainConfig, load_config, save_config
from clinpeft.errors import ClinpeftError


def test_defaults_are_the_papers_hyperparameters():
    pre = PretrainConfig()
    assert (pre.train.lr, pre.train.warmup_ratio, pre.data.max_seq_len, pre.train.grad_accum, pre.train.batch_size) == (
        3e-4, 0.06, 512, 4, 10)
    assert (pre.peft.method, pre.peft.r, pre.peft.target_modules) == ("lora", 16, ["q_proj", "v_proj"])
    down = FinetuneConfig()
    assert (down.train.lr, down.train.warmup_ratio, down.task.max_seq_len, down.train.grad_accum,
            down.train.batch_size) == (5e-5, 0.06, 512, 10, 10)


def test_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("peft:\n  r: 4\ntrain:\n  lr: 1.0e-3\n")
    config = load_config(PretrainConfig, recipe, ["peft.r=8", "train.lr=1e-4", "data.paths=[a.csv, b.csv]"])
    assert config.peft.r == 8 and config.train.lr == 1e-4 and config.data.paths == ["a.csv", "b.csv"]
    assert config.peft.lora_alpha == 32  # untouched default


def test_saved_config_reloads_identically(tmp_path):
    config = load_config(FinetuneConfig, None, ["variant=clinical_trainable+downstream", "lora.r=4"])
    path = save_config(config, tmp_path)
    assert load_config(FinetuneConfig, path) == config
    assert yaml.safe_load(path.read_text())["variant"] == "clinical_trainable+downstream"


@pytest.mark.parametrize("override, named", [
    ("train.lrr=1", "train.lrr"),
    ("peft.rank=8", "peft.rank"),
    ("nosuch=1", "nosuch"),
    ("train.lr.x=1", "train.lr.x"),
])
def test_unknown_override_key_is_named(override, named):
    with pytest.raises(ClinpeftError, match=f"unknown config key '{named}'"):
        load_config(PretrainConfig, None, [override])


def test_ill_typed_value_is_named():
    with pytest.raises(ClinpeftError, match=r"'train.lr'.*got 'fast'"):
        load_config(PretrainConfig, None, ["train.lr=fast"])
    with pytest.raises(ClinpeftError, match="'variant'"):
        load_config(FinetuneConfig, None, ["variant=clinical_sideways"])


def test_unknown_key_in_recipe_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  learning_rate: 1e-4\n")
    with pytest.raises(ClinpeftError, match=f"{recipe}: unknown config key 'train.learning_rate'"):
        load_config(PretrainConfig, recipe)


def test_missing_recipe_and_bad_override_syntax(tmp_path):
    with pytest.raises(ClinpeftError, match="not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    with pytest.raises(ClinpeftError, match="expected key=value"):
        load_config(PretrainConfig, None, ["train.lr"])


@pytest.mark.parametrize("value", [1e-05, 3e-4, 8, True, "2024", "Clinical LLaMA*", "/data/a: b/notes.csv",
                                   ["q_proj", "v_proj"], None, "x" * 200 + " y" * 50])
def test_format_override_reads_back_as_the_same_value(value):
    from clinpeft.config import format_override, parse_override

    item = format_override("a.b", value)
    assert "\n" not in item
    assert parse_override(item) == (["a", "b"], value)
