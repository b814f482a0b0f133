"""The paper's search spaces (A.2, B.2) as data, and the shipped per-method recipes."""

from pathlib import Path

import pytest

from clinpeft.config import METHOD_FIELDS, PretrainConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.methods import METHOD_NAMES as PEFT_METHODS
from clinpeft.recipes.demo import parse_methods
from clinpeft.sweep.space import (
    check_search_space,
    flatten_search,
    load_search_spaces,
    parse_param,
    point_overrides,
    resolve_key,
    search_space,
)

CONFIGS = Path(__file__).resolve().parent.parent / "src" / "clinpeft" / "configs"


def test_search_spaces_are_the_papers():
    assert search_space("pretrain", "lora") == {"peft.r": [2, 4, 8, 16], "peft.lora_alpha": [4, 8, 16, 32],
                                                "peft.lora_dropout": [0.0, 0.1, 0.2]}
    assert search_space("pretrain", "prefix_tuning") == {"peft.num_virtual_tokens": [1, 5, 10, 15, 20],
                                                         "peft.prefix_projection": [True, False]}
    assert search_space("pretrain", "prompt_tuning")["peft.prompt_tuning_init"] == ["TEXT", "RANDOM"]
    assert search_space("pretrain", "p_tuning") == {
        "peft.num_virtual_tokens": [1, 5, 10, 15, 20], "peft.encoder_reparameterization_type": ["MLP", "LSTM"],
        "peft.encoder_hidden_size": [64, 128, 256, 768], "peft.encoder_num_layers": [1, 2, 4, 8, 12],
        "peft.encoder_dropout": [0.0, 0.1, 0.2]}
    assert search_space("pretrain", "adaption_prompt") == {"peft.adapter_len": [5, 10],
                                                           "peft.adapter_layers": [10, 20, 30]}
    assert search_space("finetune", "lora") == {"lora.r": [2, 4, 8, 16], "lora.lora_alpha": [4, 8, 16, 32],
                                                "lora.lora_dropout": [0.0, 0.1, 0.2]}


@pytest.mark.parametrize("step, method", [(s, m) for s, methods in load_search_spaces().items() for m in methods])
def test_every_choice_is_a_valid_config_value_of_its_method(step, method):
    check_search_space(step, method)  # raises ClinpeftError naming the key otherwise
    if step == "pretrain":
        assert method in PEFT_METHODS
        assert {key.removeprefix("peft.") for key in search_space(step, method)} <= set(METHOD_FIELDS[method])


def test_a_point_becomes_overrides():
    point = {"peft.encoder_hidden_size": 256, "peft.num_virtual_tokens": 15}
    config = load_config(PretrainConfig, None, point_overrides("pretrain", "p_tuning", point))
    peft = config.peft
    assert (peft.method, peft.encoder_hidden_size, peft.num_virtual_tokens) == ("p_tuning", 256, 15)
    with pytest.raises(ClinpeftError, match="no search space for pretrain/dora"):
        search_space("pretrain", "dora")


def test_a_recipes_search_section_is_read_by_config_key():
    nested = {"lora": {"r": [4, 8]}, "train.lr": {"low": 1e-5, "high": 1e-3, "log": True}, "lora_alpha": None}
    assert flatten_search(nested) == {"lora.r": [4, 8], "train.lr": {"low": 1e-5, "high": 1e-3, "log": True},
                                      "lora_alpha": None}  # a low/high mapping is a range, not a level
    assert (resolve_key("r", "finetune"), resolve_key("r", "pretrain"), resolve_key("train.lr", "pretrain")) == \
        ("lora.r", "peft.r", "train.lr")
    lr = parse_param("train.lr", {"low": 1e-5, "high": 1e-3, "log": True}, "x.yaml")
    assert (lr.low, lr.high, lr.log, lr.choices) == (1e-5, 1e-3, True, None)
    assert parse_param("lora.r", [4, 8, 4], "x.yaml").choices == [4, 8]  # duplicates dropped, order kept
    with pytest.raises(ClinpeftError, match="x.yaml: search.train.lr: Optuna cannot combine log: true with step"):
        parse_param("train.lr", {"low": 1e-5, "high": 1e-3, "log": True, "step": 1e-5}, "x.yaml")


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_each_method_has_a_demo_recipe(method):
    config = load_config(PretrainConfig, CONFIGS / "demo" / f"pretrain_{method}.yaml")
    assert config.peft.method == method and config.model.base == "demo"


def test_demo_methods_option():
    assert parse_methods("all") == list(PEFT_METHODS)
    assert parse_methods("full,prompt_tuning") == ["lora", "full", "prompt_tuning"]  # LoRA always: step 4 uses it
    with pytest.raises(ClinpeftError, match="unknown method.*dora"):
        parse_methods("lora,dora")
