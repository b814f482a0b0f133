"""`init_lora_weights`: each of peft's LoRA initialisations does, on the tiny LLaMA, what it promises."""

import json

import pytest
import torch

from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.adapters import add_pretraining_adapter
from clinpeft.modeling.base import load_causal_lm
from clinpeft.modeling.methods import method_display_name
from clinpeft.recipes import pretrain
from conftest import pretrain_overrides

IDS = torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(0))
R = 4


def section(init, **extra):
    return load_config(PretrainConfig, None, [f"peft.r={R}", "peft.lora_dropout=0", f"peft.init_lora_weights={init}",
                                              *[f"peft.{k}={v}" for k, v in extra.items()]]).peft


def calibration(n=8, length=24):
    ids = torch.randint(4, 300, (n, length), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": ids[i:i + 4], "labels": ids[i:i + 4]} for i in range(0, n, 4)]


def adapted(tiny_llama, init, batches=None):
    """(base weights before, the peft model with a fresh adapter of `init`)."""
    model = load_causal_lm(tiny_llama, "float32").eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = add_pretraining_adapter(model, section(init), init_batches=batches).eval()
    return before, peft_model


def base_logits(tiny_llama):
    with torch.no_grad():
        return load_causal_lm(tiny_llama, "float32").eval()(input_ids=IDS).logits


def lora_layers(model):
    return {n.split("base_model.model.")[-1]: m for n, m in model.named_modules()
            if hasattr(m, "lora_A") and "default" in m.lora_A}


def weight_delta(before, layer_name, layer):
    """W (before) - W_res (now): what the init moved out of the base weight."""
    return before[f"{layer_name}.weight"] - layer.base_layer.weight.detach()


def assert_initial_forward_is_the_base(model, tiny_llama):
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, base_logits(tiny_llama), atol=1e-5, rtol=1e-4)


def test_pissa_moves_the_principal_components_into_the_adapter(tiny_llama):
    before, model = adapted(tiny_llama, "pissa")
    assert_initial_forward_is_the_base(model, tiny_llama)
    for name, layer in lora_layers(model).items():
        W = before[f"{name}.weight"]
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        principal = U[:, :R] @ torch.diag(S[:R]) @ Vh[:R]  # the best rank-r approximation of W
        torch.testing.assert_close(weight_delta(before, name, layer), principal, atol=1e-5, rtol=1e-4)
        ba = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
        torch.testing.assert_close(ba, principal, atol=1e-5, rtol=1e-4)


def test_pissa_niter_is_a_rank_r_approximation_of_the_same(tiny_llama):
    before, model = adapted(tiny_llama, "pissa_niter_4")
    assert_initial_forward_is_the_base(model, tiny_llama)
    for name, layer in lora_layers(model).items():
        delta = weight_delta(before, name, layer)
        assert torch.linalg.matrix_rank(delta, atol=1e-4) == R
        S = torch.linalg.svdvals(before[f"{name}.weight"])
        # randomized SVD with 4 subspace iterations: near the best rank-r energy, never above it (Eckart-Young);
        # the tiny random W has a flat spectrum, the hardest case for it
        energy, best = torch.linalg.matrix_norm(delta) ** 2, (S[:R] ** 2).sum()
        assert 0.85 * best <= energy <= best * 1.0001


def test_olora_starts_from_the_qr_of_w_and_keeps_the_forward(tiny_llama):
    before, model = adapted(tiny_llama, "olora")
    assert_initial_forward_is_the_base(model, tiny_llama)
    for name, layer in lora_layers(model).items():
        B = layer.lora_B["default"].weight
        torch.testing.assert_close(B.T @ B, torch.eye(R), atol=1e-5, rtol=0)  # Q's first r columns: orthonormal
        assert weight_delta(before, name, layer).abs().max() > 1e-3  # the base gave them up


def test_gaussian_a_and_zero_b_change_nothing_at_first(tiny_llama):
    before, model = adapted(tiny_llama, "gaussian")
    assert_initial_forward_is_the_base(model, tiny_llama)
    A = torch.cat([m.lora_A["default"].weight.flatten() for m in lora_layers(model).values()])
    assert all(not m.lora_B["default"].weight.any() for m in lora_layers(model).values())
    assert A.std().item() == pytest.approx(1 / R, rel=0.1)  # peft: N(0, 1/r)
    assert all(torch.equal(before[n], p) for n, p in model.get_base_model().named_parameters() if n in before)


def test_mica_freezes_b_on_the_minor_singular_vectors(tiny_llama):
    before, model = adapted(tiny_llama, "mica")
    assert_initial_forward_is_the_base(model, tiny_llama)
    for name, layer in lora_layers(model).items():
        B, A = layer.lora_B["default"].weight, layer.lora_A["default"].weight
        assert not B.requires_grad and A.requires_grad and not A.any()  # only A trains, from zero
        U = torch.linalg.svd(before[f"{name}.weight"], full_matrices=False)[0]
        overlap = (U[:, -R:].T @ B).abs()  # B spans the r minor left-singular vectors (up to sign and order)
        torch.testing.assert_close(torch.linalg.svdvals(overlap / B.norm(dim=0)), torch.ones(R), atol=1e-4, rtol=0)


def test_eva_initialises_a_from_the_layers_inputs_and_redistributes_ranks(tiny_llama):
    batches = calibration()
    inputs = {}
    model = load_causal_lm(tiny_llama, "float32").eval()
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: inputs.setdefault(n, []).append(args[0].flatten(0, 1)))
             for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))]
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch["input_ids"])
    for hook in hooks:
        hook.remove()
    peft_model = add_pretraining_adapter(model, section("eva"), init_batches=batches).eval()
    assert_initial_forward_is_the_base(peft_model, tiny_llama)  # B = 0
    layers = lora_layers(peft_model)
    ranks = {n: m.r["default"] for n, m in layers.items()}
    assert sum(ranks.values()) == R * len(layers)  # the budget is kept, spread by explained variance
    assert len(set(ranks.values())) > 1  # redistributed (here 5, 5 in layer 0 and 3, 3 in layer 1)
    assert peft_model.peft_config["default"].rank_pattern  # recorded per layer, saved with the adapter
    for name, layer in layers.items():
        A = layer.lora_A["default"].weight
        X = torch.cat(inputs[name])
        top = torch.linalg.svd(X - X.mean(0), full_matrices=False)[2][: 2 * R]  # leading input directions
        captured = ((A @ top.T) ** 2).sum(1) / (A ** 2).sum(1)  # share of each row of A in that span
        assert captured.min() > 0.9, name


def test_lora_ga_aligns_the_adapter_with_the_gradient_and_keeps_the_forward(tiny_llama):
    batches = calibration()
    model = load_causal_lm(tiny_llama, "float32")
    model.zero_grad()
    for batch in batches:
        model(**batch).loss.backward()
    grads = {n.removesuffix(".weight"): p.grad.clone() for n, p in model.named_parameters()
             if n.endswith(("q_proj.weight", "v_proj.weight"))}
    before, peft_model = adapted(tiny_llama, "lora_ga", batches)
    assert_initial_forward_is_the_base(peft_model, tiny_llama)
    for name, layer in lora_layers(peft_model).items():
        A = layer.lora_A["default"].weight
        top = torch.linalg.svd(grads[name], full_matrices=False)[2][: 2 * R]  # the gradient's leading row space
        captured = ((A @ top.T) ** 2).sum(1) / (A ** 2).sum(1)
        assert captured.min() > 0.9, name
        assert weight_delta(before, name, layer).abs().max() > 0


def test_refused_and_unknown_inits_say_why():
    with pytest.raises(ClinpeftError, match="loftq: LoftQ initialises the LoRA against a quantized copy"):
        load_config(PretrainConfig, None, ["peft.init_lora_weights=loftq"])
    with pytest.raises(ClinpeftError, match="choose one of true, gaussian, pissa, pissa_niter_N"):
        load_config(FinetuneConfig, None, ["lora.init_lora_weights=svd"])
    try:
        import attr  # noqa: F401
    except ImportError:
        with pytest.raises(ClinpeftError, match="corda: peft's CorDA imports the `attr` module"):
            load_config(PretrainConfig, None, ["peft.init_lora_weights=corda"])


def test_table2_names_the_init():
    assert method_display_name("lora", [], "pissa_niter_4") == "LoRA (PiSSA)"
    assert method_display_name("lora", ["use_dora"], "eva") == "DoRA (EVA)"
    assert method_display_name("lora", [], True) == "LoRA"


@pytest.mark.parametrize("init", ["pissa", "eva"])
def test_pretraining_saves_an_adapter_that_reloads_on_the_unchanged_base(init, tiny_llama, synthetic_corpus, tmp_path,
                                                                         monkeypatch):
    """PiSSA changes the base weights: the recipe saves the trained adapter converted to a plain LoRA of rank 2r,
    which on the original base gives the trained model's logits. EVA reads the training blocks."""
    from peft import PeftModel

    trained = {}
    save_clinical = pretrain.save_clinical

    def remember_then_save(model, *args, **kwargs):
        with torch.no_grad():
            trained["logits"] = model.eval()(input_ids=IDS).logits
        return save_clinical(model, *args, **kwargs)

    monkeypatch.setattr(pretrain, "save_clinical", remember_then_save)
    overrides = [*pretrain_overrides(tiny_llama, synthetic_corpus), "eval.base_model=false", "train.max_steps=2",
                 f"peft.init_lora_weights={init}"]
    result = pretrain.main(load_config(PretrainConfig, None, overrides), tmp_path / "run", progress=False)
    assert result["init_lora_weights"] == init
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == (2 * R if init == "pissa" else R) and config["init_lora_weights"] in (True, "eva")
    assert not (tmp_path / "run" / ".init").exists()
    reloaded = PeftModel.from_pretrained(load_causal_lm(tiny_llama, "float32"), tmp_path / "run" / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS).logits, trained["logits"], atol=1e-5, rtol=1e-4)
