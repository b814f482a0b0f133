"""`init_lora_weights`: each of peft's LoRA initialisations does, on the tiny LLaMA, what it promises."""

import json
import shutil

import pytest
import torch

from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.methods import method_display_name
from clinpeft.modeling.adapters import add_pretraining_adapter
from clinpeft.modeling.base import load_causal_lm
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


# the downstream LoRA (lora.init_lora_weights), stacked on the clinical one

def classifier(tiny_llama, clinical_run, init, variant="clinical_frozen+downstream", notes=None):
    from clinpeft.modeling.adapters import find_clinical_adapter
    from clinpeft.modeling.classifier import build_classifier

    lora = load_config(FinetuneConfig, None, ["lora.r=4", "lora.lora_dropout=0",
                                              f"lora.init_lora_weights={init}"]).lora
    torch.manual_seed(0)  # the same random head in every build
    clinical = find_clinical_adapter(clinical_run) if "clinical" in variant else None
    return build_classifier(tiny_llama, "binary", 2, variant, clinical, lora, "float32", init_notes=notes)


def clf_logits(clf):
    with torch.no_grad():
        return clf.model.eval()(input_ids=IDS).logits


def test_downstream_pissa_keeps_the_forward_and_saves_a_plain_lora_on_the_unchanged_base(tiny_llama, clinical_run,
                                                                                         tmp_path):
    from clinpeft.modeling.adapters import DOWNSTREAM
    from clinpeft.modeling.classifier import head_module, load_bundle, save_bundle

    default, pissa = classifier(tiny_llama, clinical_run, "true"), classifier(tiny_llama, clinical_run, "pissa")
    torch.testing.assert_close(clf_logits(pissa), clf_logits(default), atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # "training": the downstream LoRA and the head move
        for name, param in pissa.model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    trained = clf_logits(pissa)
    save_bundle(pissa, tmp_path / "run", {"base_model": str(tiny_llama), "variant": "clinical_frozen+downstream",
                                          "task": "mor", "task_type": "binary", "labels": ["0", "1"],
                                          "max_seq_len": 64, "padding_side": "right"})
    shutil.rmtree(pissa.initial_adapter.parent)  # what finetune does once the bundle is saved
    saved = json.loads((tmp_path / "run" / "adapters" / DOWNSTREAM / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True  # [B | B0] [A ; -A0]: rank 2r, no re-init on load
    reloaded, _ = load_bundle(tmp_path / "run", dtype="float32")  # onto the unchanged base
    torch.testing.assert_close(clf_logits(reloaded), trained, atol=1e-5, rtol=1e-4)
    assert head_module(reloaded.model, "score").weight.shape == (2, 32)


def test_downstream_mica_trains_a_only(tiny_llama, clinical_run):
    clf = classifier(tiny_llama, clinical_run, "mica", variant="lora")
    params = dict(clf.model.named_parameters())
    assert all(not p.requires_grad for n, p in params.items() if "lora_B.downstream" in n)
    assert all(p.requires_grad for n, p in params.items() if "lora_A.downstream" in n)


def test_downstream_eva_reads_the_training_notes(tiny_llama, clinical_run):
    notes = ["Chief complaint: shortness of breath. Pt s/p CABG, hx CHF, HTN."] * 3 + \
            ["Discharge diagnosis: pneumonia, sepsis, acute kidney injury."] * 3
    clf = classifier(tiny_llama, clinical_run, "eva", notes=notes)
    torch.testing.assert_close(clf_logits(clf), clf_logits(classifier(tiny_llama, clinical_run, "true")),
                               atol=1e-5, rtol=1e-4)  # B = 0
    layers = {n: m for n, m in clf.model.named_modules() if hasattr(m, "lora_A") and "downstream" in m.lora_A}
    assert sum(m.r["downstream"] for m in layers.values()) == 4 * len(layers)
    assert any(m.lora_A["downstream"].weight.abs().sum() > 0 for m in layers.values())


def test_downstream_lora_ga_is_refused_before_any_work():
    with pytest.raises(ClinpeftError, match=r"'lora.init_lora_weights': .*lora_ga: LoRA-GA estimates the task loss"):
        load_config(FinetuneConfig, None, ["lora.init_lora_weights=lora_ga"])
    assert load_config(PretrainConfig, None, ["peft.init_lora_weights=lora_ga"]).peft.init_lora_weights == "lora_ga"


@pytest.mark.parametrize("init,trainable", [
    ("mica", 32 * 2 * 16 * 4096),  # only A trains: layers x (q, v) x r x d_in
    ("eva", 8_388_608),  # counted at the configured ranks (no notes here); EVA keeps that budget
])
def test_params_counts_what_the_init_trains_on_llama_7b(init, trainable, capsys):
    from clinpeft.cli import main

    assert main(["params", "llama-7b", "configs/llama-7b/pretrain_lora.yaml", f"peft.init_lora_weights={init}",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == trainable


@pytest.mark.parametrize("init", ["olora", "eva"])
def test_finetune_with_a_downstream_init_records_it_and_evaluate_reproduces_its_predictions(
        init, tiny_llama, clinical_run, synthetic_tasks, tmp_path):
    """Through the recipe: OLoRA's bundle is saved converted (evaluate reloads it on the unchanged base and gets the
    run's own test predictions); EVA reads the task's training notes."""
    import numpy as np
    import pandas as pd

    from clinpeft.recipes import evaluate, finetune

    config = load_config(FinetuneConfig, None, [
        f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}", "task.max_seq_len=96",
        "train.batch_size=8", "train.grad_accum=1", "train.max_steps=3", "train.lr=1e-2", "lora.r=4",
        "variant=clinical_frozen+downstream", f"clinical_adapter={clinical_run}", f"lora.init_lora_weights={init}"])
    metrics = finetune.main(config, tmp_path / "run", progress=False)
    assert metrics["init_lora_weights"] == init
    saved = json.loads((tmp_path / "run" / "adapters" / "downstream" / "adapter_config.json").read_text())
    assert saved["r"] == (8 if init == "olora" else 4)
    again = evaluate.main(tmp_path / "run", synthetic_tasks["mor"] / "test.csv", tmp_path / "eval", progress=False,
                          bootstrap_resamples=0)
    assert again["eval"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
    columns = [c for c in pd.read_csv(tmp_path / "run" / "predictions.csv").columns if c.startswith("p_")]
    np.testing.assert_allclose(pd.read_csv(tmp_path / "eval" / "predictions.csv")[columns].to_numpy(),
                               pd.read_csv(tmp_path / "run" / "predictions.csv")[columns].to_numpy(), atol=1e-5)
