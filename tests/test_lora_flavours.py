"""LoRA flavours (DoRA, rsLoRA): one flag on the LoRA sections, read by the clinical and the downstream LoRA alike."""

import math

import pytest
import torch

from clinpeft import methods
from clinpeft.config import FinetuneConfig, LoraSection, PretrainConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.methods import LORA_KEYS, method_display_name
from clinpeft.modeling.adapters import CLINICAL, DOWNSTREAM, find_clinical_adapter
from clinpeft.modeling.classifier import build_classifier
from clinpeft.recipes import pretrain
from conftest import pretrain_overrides


def test_the_registry_passes_every_lora_key_to_peft():
    """A key on the LoRA section that LORA_KEYS forgot would be validated and then silently dropped."""
    assert set(LoraSection.model_fields) == set(LORA_KEYS)


def test_flags_are_lora_keys_of_both_steps():
    assert load_config(PretrainConfig, None, ["peft.use_dora=true"]).peft.use_dora
    assert load_config(FinetuneConfig, None, ["lora.use_rslora=true"]).lora.use_rslora
    with pytest.raises(ClinpeftError,
                       match=r"peft.use_dora \(a lora key\) does nothing with peft.method=prompt_tuning"):
        load_config(PretrainConfig, None, ["peft.method=prompt_tuning", "peft.use_dora=true"])


def test_table2_names_the_flavour():
    assert method_display_name("lora") == "LoRA"
    assert method_display_name("lora", ["use_dora"]) == "DoRA"
    assert method_display_name("lora", ["use_rslora"]) == "rsLoRA"
    assert method_display_name("prompt_tuning", ["use_dora"]) == "Prompt Tuning"


@pytest.fixture(scope="module")
def dora_run(tiny_llama, synthetic_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "clinical-dora"
    config = load_config(PretrainConfig, None,
                         [*pretrain_overrides(tiny_llama, synthetic_corpus), "peft.use_dora=true"])
    result = pretrain.main(config, out, progress=False)
    return out, result


def test_dora_pretraining_trains_magnitudes_and_says_so(dora_run):
    out, result = dora_run
    assert result["lora_flavours"] == ["use_dora"]
    config = (out / "adapter" / "adapter_config.json").read_text()
    assert '"use_dora": true' in config
    # DoRA adds one magnitude per output unit of every target module: 2 layers x (q 32 + v 32) on the tiny LLaMA
    lora_only = 2 * 2 * 4 * (32 + 32)  # layers x modules x r x (d_in + d_out)
    assert result["trainable_params"] == lora_only + 2 * (32 + 32)


def magnitude_params(model, adapter):
    return {n: p for n, p in model.named_parameters() if f"lora_magnitude_vector.{adapter}" in n}


@pytest.mark.parametrize("variant", ["clinical_frozen+downstream", "clinical_trainable+downstream"])
def test_dora_on_both_adapters_trains_as_the_variant_says(variant, dora_run, tiny_llama):
    out, _ = dora_run
    lora = load_config(FinetuneConfig, None, ["lora.r=4", "lora.use_dora=true"]).lora
    clf = build_classifier(tiny_llama, "binary", 2, variant, find_clinical_adapter(out), lora, "float32")
    clinical, downstream = magnitude_params(clf.model, CLINICAL), magnitude_params(clf.model, DOWNSTREAM)
    assert len(clinical) == len(downstream) == 4  # 2 layers x q_proj, v_proj, each adapter
    assert all(p.requires_grad for p in downstream.values())
    assert all(p.requires_grad == methods.variant(variant).trains_clinical for p in clinical.values())
    # the saved clinical magnitudes are the ones in use (a DoRA adapter reloaded, not re-initialised)
    saved = pretrain_magnitudes(out)  # keyed by module path: "...layers.0.self_attn.q_proj"
    for name, param in clinical.items():
        module = name.split(".lora_magnitude_vector")[0].split("layers.", 1)[1]
        assert torch.equal(param.detach(), saved[module])

    ids = torch.randint(4, 300, (2, 16))
    loss = clf.model(input_ids=ids).logits.logsumexp(-1).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in downstream.values())


def pretrain_magnitudes(run_dir):
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    return {k.split(".lora_magnitude_vector")[0].split("layers.", 1)[1]: v
            for k, v in weights.items() if "lora_magnitude_vector" in k}


def test_rslora_scales_both_adapters_by_the_square_root_of_the_rank(clinical_run, tiny_llama):
    lora = load_config(FinetuneConfig, None, ["lora.r=4", "lora.lora_alpha=8", "lora.use_rslora=true"]).lora
    clf = build_classifier(tiny_llama, "binary", 2, "clinical_trainable+downstream",
                           find_clinical_adapter(clinical_run), lora, "float32")
    layer = next(m for n, m in clf.model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    assert layer.scaling[DOWNSTREAM] == pytest.approx(8 / math.sqrt(4))
    assert layer.scaling[CLINICAL] == pytest.approx(32 / 4)  # the clinical adapter was trained without rsLoRA


def test_params_counts_dora_magnitudes_on_llama_7b(capsys):
    """LoRA r16 on q,v of LLaMA-7B is the paper's 8,388,608; DoRA adds one magnitude per output unit:
    32 layers x 2 modules x 4096."""
    import json

    from clinpeft.cli import main

    assert main(["params", "llama-7b", "configs/llama-7b/pretrain_lora.yaml", "peft.use_dora=true", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 8_388_608 + 32 * 2 * 4096
