"""All six pretraining methods (Table 2) on a tiny LLaMA: what each trains, save/reload, packing, perplexity.

Methods and the parameters each owns:
    lora             ...lora_A/lora_B...                     packs
    prefix_tuning    prompt_encoder.* (the key/value prefix)  one note per row (fallback)
    prompt_tuning    prompt_encoder.* (soft prompt)           one note per row (fallback)
    p_tuning         prompt_encoder.* (embedding + encoder)   one note per row (fallback)
    adaption_prompt  ...adaption_prompt / adaption_gate       packs
    full             every parameter                          packs
"""

import json
import math

import pytest
import torch
from datasets import Dataset

from clinpeft.config import PretrainConfig, load_config
from clinpeft.data.notes import load_corpus
from clinpeft.data.packing import note_segments, tokenize_and_pack
from clinpeft.errors import ClinpeftError
from clinpeft.methods import METHOD_NAMES as PEFT_METHODS
from clinpeft.modeling.adapters import add_pretraining_adapter, packing_fallback
from clinpeft.modeling.base import base_fingerprint, load_causal_lm, load_tokenizer
from clinpeft.recipes import pretrain
from clinpeft.training.perplexity import token_nll
from conftest import load_clinical_lm, pretrain_overrides

# Small settings per method for the 32-wide, 2-layer test model.
SETTINGS = {
    "lora": ["peft.r=4"],
    "prefix_tuning": ["peft.num_virtual_tokens=3"],
    "prompt_tuning": ["peft.num_virtual_tokens=3"],  # TEXT initialisation from the tiny tokenizer
    # LSTM dropout (between 2 layers) is on while training: the saved output embeddings must be computed without it
    "p_tuning": ["peft.num_virtual_tokens=3", "peft.encoder_reparameterization_type=LSTM", "peft.encoder_hidden_size=8",
                 "peft.encoder_num_layers=2", "peft.encoder_dropout=0.5"],
    "adaption_prompt": ["peft.adapter_len=4", "peft.adapter_layers=2"],
    "full": [],
}
NOTES = ["Chief complaint: shortness of breath.", "BP 128/76 HR 88 RR 18.", "Pt s/p CABG, hx CHF, HTN."]


def method_overrides(method):
    return [f"peft.method={method}", *SETTINGS[method]]


def with_method(tiny_llama, method, seed=0):
    """The tiny LLaMA with a fresh `method` adapter whose weights all have an effect (LoRA's B and
    the adaption gates start at zero, which would make every check below trivially true)."""
    torch.manual_seed(seed)
    config = load_config(PretrainConfig, None, method_overrides(method))
    model = add_pretraining_adapter(load_causal_lm(tiny_llama, "float32"), config.peft, tokenizer_path=tiny_llama)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if method != "full" and owns(method, name):
                param.add_(torch.randn_like(param) * 0.3)
    return model


def owns(method, name) -> bool:
    if method == "full":
        return True
    if method == "lora":
        return ".lora_" in name
    if method == "adaption_prompt":
        return ".adaption_" in name
    return name.startswith("prompt_encoder.")


def note_ids(tokenizer, note):
    return [tokenizer.bos_token_id] + tokenizer(note, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def own_logits(model, ids):
    """A note's logits run on its own (prompt methods: without their virtual tokens' positions)."""
    return model(input_ids=torch.tensor([ids])).logits[0, -len(ids):]


def test_every_method_is_a_config_choice():
    assert set(PEFT_METHODS) == {"lora", "prefix_tuning", "prompt_tuning", "p_tuning", "adaption_prompt", "full"}
    assert load_config(PretrainConfig, None, ["peft.method=prompt_tuning"]).peft.prompt_tuning_init_text == (
        "Finish this clinical note:")


@pytest.mark.parametrize("override, named", [
    (["peft.method=prompt_tuning", "peft.r=8"], "peft.r (a lora key)"),
    (["peft.method=lora", "peft.num_virtual_tokens=5"], "peft.num_virtual_tokens"),
    (["peft.method=full", "peft.adapter_len=5"], "peft.adapter_len (a adaption_prompt key)"),
])
def test_a_key_of_another_method_is_refused(override, named):
    with pytest.raises(ClinpeftError, match="does nothing with peft.method") as error:
        load_config(PretrainConfig, None, override)
    assert named in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_one_step_changes_only_the_methods_parameters(method, tiny_llama):
    torch.manual_seed(0)
    config = load_config(PretrainConfig, None, method_overrides(method))
    model = add_pretraining_adapter(load_causal_lm(tiny_llama, "float32"), config.peft, tokenizer_path=tiny_llama)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n in before if owns(method, n)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    ids = torch.randint(4, 300, (2, 16))
    for _ in range(2):  # LoRA's B and the adaption gates start at zero: the rest moves from step 2
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param)
        assert changed == owns(method, name), name


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_saved_adapter_reloads_to_identical_logits(method, tiny_llama, tmp_path):
    """The reloaded model's logits = the model's before saving (eval mode, same inputs)."""
    model = with_method(tiny_llama, method)
    ids = torch.randint(4, 300, (1, 20))
    with torch.no_grad():
        before = model.eval()(input_ids=ids).logits
    model.train()  # saving must not depend on the training mode
    pretrain.save_clinical(model, method, tmp_path, tiny_llama, base_fingerprint(model))
    saved = "model/model.safetensors" if method == "full" else "adapter/adapter_model.safetensors"
    assert (tmp_path / saved).is_file()
    reloaded = load_clinical_lm(tmp_path)
    # exact, except p-tuning: peft saves its encoder's output, which the live model recomputes
    # each forward pass (equal up to float rounding; with dropout left on it would be far off)
    atol = 1e-6 if method == "p_tuning" else 0
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, before, rtol=0, atol=atol)
        if method != "full":
            with reloaded.disable_adapter():
                base = reloaded(input_ids=ids).logits
            assert not torch.allclose(base, before[:, -ids.size(1):])  # it acts


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_packed_notes_stay_apart_or_the_method_falls_back(method, tiny_llama):
    """Packing methods: packed logits = each note's own. Fallback methods: packing would mix notes
    (so it is refused), and one note per right-padded row without position ids gives each note's own."""
    tokenizer = load_tokenizer(tiny_llama)
    model = with_method(tiny_llama, method).eval()
    packed = tokenize_and_pack({"text": NOTES}, tokenizer, "text", block_size=128)
    assert len(packed["input_ids"]) == 1
    with torch.no_grad():
        position_ids = torch.tensor(packed["position_ids"])
        logits = model(input_ids=torch.tensor(packed["input_ids"]), position_ids=position_ids).logits
        logits = logits[0, -len(packed["input_ids"][0]):]
        start, same = 0, []
        for note in NOTES:
            ids = note_ids(tokenizer, note)
            same.append(torch.allclose(logits[start : start + len(ids)], own_logits(model, ids), atol=1e-5))
            start += len(ids)
        if packing_fallback(method) is None:
            assert all(same)
            return
        assert same[0] and not any(same[1:])  # later notes see the earlier ones: why the method falls back
        rows = tokenize_and_pack({"text": NOTES}, tokenizer, "text", block_size=32, packing=False)
        logits = model(input_ids=torch.tensor(rows["input_ids"])).logits[:, -32:]
        for row, note in zip(logits, NOTES):
            ids = note_ids(tokenizer, note)
            torch.testing.assert_close(row[: len(ids)], own_logits(model, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_perplexity_equals_a_direct_computation(method, tiny_llama):
    """token_nll over the recipe's rows (packed whole notes, or the fallback's) = each note's own NLL, summed;
    the fill layout predicts one token fewer per note it cuts at a block boundary."""
    tokenizer = load_tokenizer(tiny_llama)
    model = with_method(tiny_llama, method).eval()
    direct_nll, direct_n = 0.0, 0
    with torch.no_grad():
        for note in NOTES * 2:
            ids = note_ids(tokenizer, note)
            labels = [-100] + ids[1:]  # a note's first token is not predicted (prompt methods would from their prompt)
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
            direct_nll += loss * (len(ids) - 1)
            direct_n += len(ids) - 1
    packs = packing_fallback(method) is None
    for layout in ("next_fit", "ffd", "fill") if packs else ("none",):
        rows = tokenize_and_pack({"text": NOTES * 2}, tokenizer, "text", block_size=48, packing=layout)
        cuts = sum(rows.pop("segment_starts_added", [0]))
        rows = Dataset.from_dict(rows)
        if not packs:
            rows = rows.remove_columns("position_ids")  # as pretrain.tokenize_corpus does
        nll, n = token_nll(model, rows, batch_size=4, progress=False)
        assert n == direct_n - cuts, layout
        if cuts == 0:
            assert nll == pytest.approx(direct_nll, rel=1e-5), layout
        else:  # only fill cuts notes at block boundaries (here it does: 48-token blocks)
            assert layout == "fill"


def test_adaption_prompt_layers_beyond_the_model_are_a_clear_error(tiny_llama):
    config = load_config(PretrainConfig, None, ["peft.method=adaption_prompt"])  # 30 layers, LLaMA-7B's setting
    with pytest.raises(ClinpeftError, match="peft.adapter_layers=30: LlamaForCausalLM has only 2 layers"):
        add_pretraining_adapter(load_causal_lm(tiny_llama, "float32"), config.peft)


def test_fallback_run_says_why_and_measures_the_held_out_split(tiny_llama, synthetic_corpus, tmp_path, caplog):
    """A prompt-tuning run trains one note per row, says so in its log and run.json, and its test
    perplexity is the held-out notes' own perplexity under the saved adapter."""
    overrides = [o for o in pretrain_overrides(tiny_llama, synthetic_corpus) if not o.startswith("peft.")]
    config = load_config(PretrainConfig, None, [*overrides, "peft.method=prompt_tuning", "peft.num_virtual_tokens=4",
                                                "eval.base_model=false"])
    with caplog.at_level("WARNING"):
        pretrain.main(config, tmp_path / "run", progress=False)
    assert any("one note per row" in r.getMessage() and "prompt_tuning" in r.getMessage() for r in caplog.records)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["method"] == "prompt_tuning" and run["packing"] is False
    assert "share one prompt" in run["packing_fallback"]
    assert run["trainable_params"] == 4 * 32  # num_virtual_tokens x hidden

    model = load_clinical_lm(tmp_path / "run")
    tokenizer = load_tokenizer(tiny_llama)
    splits, _ = load_corpus(config.data, tmp_path / "cache")
    nll, n = 0.0, 0
    with torch.no_grad():
        for text in splits["test"]["text"]:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            for segment in note_segments(ids, config.data.max_seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id):
                if len(segment) > 1:
                    labels = torch.tensor([[-100] + segment[1:]])
                    nll += model(input_ids=torch.tensor([segment]), labels=labels).loss.item() * (len(segment) - 1)
                    n += len(segment) - 1
    assert run["test_tokens"] == n
    assert run["test_ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_packing_methods_record_that_they_packed(clinical_run):
    run = json.loads((clinical_run / "run.json").read_text())
    assert run["packing"] is True and run["packing_fallback"] is None
