"""`clinpeft params`: meta-device parameter counts, and the shipped recipes reproduce Table 2's counts."""

import json
from pathlib import Path

import pytest

from clinpeft.cli import main
from clinpeft.config import PretrainConfig, load_config
from clinpeft.modeling.adapters import add_pretraining_adapter
from clinpeft.modeling.base import count_parameters, load_causal_lm
from clinpeft.recipes import params
from clinpeft.reporting.tables import format_params, format_percent

LLAMA_7B = Path(__file__).resolve().parent.parent / "src" / "clinpeft" / "configs" / "llama-7b"
LLAMA_7B_TOTAL = 6_738_415_616  # the published LLaMA-7B

# Paper Table 2: (recipe, trainable params, trainable % as printed). LLaMA rows, then PMC-LLaMA
# rows (same architecture); Adaptation Prompt is 1.2M in both (0.02% / 0.018%: the paper rounds
# one row to 1 significant digit, the other to 2).
TABLE_2 = [
    ("pretrain_lora.yaml", 8_388_608, "8.4M", "0.12%"),
    ("pretrain_adaption_prompt.yaml", 1_228_830, "1.2M", "0.018%"),
    ("pretrain_prefix_tuning.yaml", 5_242_880, "5.2M", "0.08%"),
    ("pretrain_prompt_tuning.yaml", 61_440, "61.4K", "0.0009%"),
    ("pretrain_p_tuning.yaml", 16_093_696, "16.1M", "0.24%"),
    ("pretrain_lora_pmc.yaml", 2_097_152, "2.1M", "0.03%"),
    ("pretrain_prefix_tuning_pmc.yaml", 2_621_440, "2.6M", "0.04%"),
    ("pretrain_prompt_tuning_pmc.yaml", 40_960, "41K", "0.0006%"),
    ("pretrain_p_tuning_pmc.yaml", 2_208_256, "2.2M", "0.03%"),
    ("pretrain_full.yaml", LLAMA_7B_TOTAL, "6.7B", "100%"),
]


def params_json(capsys, *args) -> dict:
    assert main(["params", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("recipe, trainable, shown, percent", TABLE_2)
def test_shipped_llama_7b_recipes_give_table_2_counts(recipe, trainable, shown, percent, capsys):
    counts = params_json(capsys, "llama-7b", LLAMA_7B / recipe)
    assert set(counts) == {"trainable_params", "total_params", "percent"}
    assert counts["trainable_params"] == trainable
    assert format_params(counts["trainable_params"]) == shown  # the digits the paper prints
    method = load_config(PretrainConfig, LLAMA_7B / recipe).peft.method
    # total = the base model + the adapter (full: the model itself), the paper's denominator
    assert counts["total_params"] == LLAMA_7B_TOTAL + (0 if method == "full" else trainable)
    assert counts["percent"] == pytest.approx(100 * trainable / counts["total_params"])
    digits = len(percent.rstrip("%").split(".")[-1]) if "." in percent else 0
    assert f"{round(counts['percent'], digits):g}%" == f"{float(percent.rstrip('%')):g}%"


def test_every_method_has_a_llama_7b_recipe():
    methods = {load_config(PretrainConfig, path).peft.method for path in LLAMA_7B.glob("pretrain_*.yaml")}
    assert methods == {"lora", "prefix_tuning", "prompt_tuning", "p_tuning", "adaption_prompt", "full"}


def test_presets_are_the_published_llama_architectures(capsys):
    full = LLAMA_7B / "pretrain_full.yaml"
    assert params_json(capsys, "llama-7b", full)["total_params"] == LLAMA_7B_TOTAL
    assert params_json(capsys, "llama-13b", full)["total_params"] == 13_015_864_320


def test_plain_output_reads_like_table_2(capsys):
    assert main(["params", "llama-7b", str(LLAMA_7B / "pretrain_lora.yaml")]) == 0
    out = capsys.readouterr().out
    assert "8,388,608 (8.4M)" in out and "6,746,804,224 (6.7B)" in out and format_percent(0.1243) in out


@pytest.mark.parametrize("method, extra", [
    ("lora", ["peft.r=4"]),
    ("prefix_tuning", ["peft.num_virtual_tokens=3", "peft.prefix_projection=true", "peft.encoder_hidden_size=8"]),
    ("prompt_tuning", ["peft.num_virtual_tokens=3"]),
    ("p_tuning", ["peft.num_virtual_tokens=3", "peft.encoder_reparameterization_type=LSTM",
                  "peft.encoder_hidden_size=8"]),
    ("adaption_prompt", ["peft.adapter_len=4", "peft.adapter_layers=2"]),
    ("full", []),
])
def test_meta_count_equals_the_count_of_the_real_model(method, extra, tiny_llama, capsys, tmp_path):
    """The dry run counts what `clinpeft pretrain` trains, on a local model directory."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    overrides = [f"peft.method={method}", *extra]
    dry = params_json(capsys, tiny_llama, recipe, *overrides)
    config = load_config(PretrainConfig, None, overrides)
    real = add_pretraining_adapter(load_causal_lm(tiny_llama, "float32"), config.peft, tokenizer_path=tiny_llama)
    assert (dry["trainable_params"], dry["total_params"]) == count_parameters(real)


def test_unknown_model_is_one_clear_line(capsys, tmp_path):
    assert main(["params", "llama-70b", str(LLAMA_7B / "pretrain_lora.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llama-70b" in err and "llama-7b, llama-13b, llama-2-7b" in err
    assert set(params.ARCHITECTURES) == set(PRESET_TOTALS)


# Every preset's total against its model card (all weights; tied embeddings counted once).
PRESET_TOTALS = {
    "llama-7b": LLAMA_7B_TOTAL,
    "llama-13b": 13_015_864_320,
    "llama-2-7b": 6_738_415_616,  # "7B"
    "llama-2-13b": 13_015_864_320,  # "13B"
    "llama-3.1-8b": 8_030_261_248,  # 8.03B
    "llama-3.2-1b": 1_235_814_400,  # 1.23B, tied embeddings
    "llama-3.2-3b": 3_212_749_824,  # 3.21B, tied embeddings
    "qwen2.5-7b": 7_615_616_512,  # 7.61B
    "mistral-7b-v0.3": 7_248_023_552,  # 7.25B
    "gemma-3-4b": 3_880_263_168,  # the text model: 4.3B on the hub with the 417M SigLIP vision encoder
}


@pytest.mark.parametrize("preset", PRESET_TOTALS)
def test_preset_totals_match_the_model_cards(preset, capsys):
    assert params_json(capsys, preset, LLAMA_7B / "pretrain_full.yaml")["total_params"] == PRESET_TOTALS[preset]


@pytest.mark.parametrize("preset, trainable", [
    ("llama-3.1-8b", 6_815_744),  # 32 layers x 16 x ((4096 + 4096) + (4096 + 1024)): GQA's v_proj is 4096 -> 1024
    ("mistral-7b-v0.3", 6_815_744),  # the same shape of attention
    ("llama-3.2-1b", 1_703_936),  # 16 x 16 x ((2048 + 2048) + (2048 + 512))
    ("qwen2.5-7b", 5_046_272),  # 28 x 16 x ((3584 + 3584) + (3584 + 512))
    ("gemma-3-4b", 4_456_448),  # 34 x 16 x ((2560 + 2048) + (2560 + 1024)): head_dim 256, 8 heads, 4 kv heads
])
def test_lora_r16_on_q_v_with_grouped_query_attention(preset, trainable, capsys):
    counts = params_json(capsys, preset, LLAMA_7B / "pretrain_lora.yaml")
    assert counts["trainable_params"] == trainable
    assert counts["total_params"] == PRESET_TOTALS[preset] + trainable
