"""The downstream classifier: base LM + adapters of one Table 3 variant + classification head.

Built by `build_classifier` for training, saved by `save_bundle`, rebuilt by `load_bundle`
without the training process. A bundle (inside a finetune run directory):

    bundle.json          base model path + fingerprint, variant, adapters, task, labels, max_seq_len,
                         pooling (absent in older bundles: last), long_notes (data/long_notes.py; absent in
                         older bundles: truncate on the right)
    adapters/<name>/     adapter_config.json + adapter_model.safetensors ("clinical", "downstream")
    head.safetensors     the classification head
    model/               variant `full` only, instead of adapters/ and head.safetensors: the whole
                         fine-tuned classifier (config.json, model.safetensors, tokenizer), since
                         every weight changed; it needs no base model to reload

The base model may be a LLaMA-family decoder (the head reads the last non-pad token, or with
`model.pooling=mean` the mean over the note's tokens: modeling/pooling.py) or a BERT-family encoder
(BlueBERT, ...: the head reads [CLS] through BERT's pooler); both load through
AutoModelForSequenceClassification with the model's own tokenizer, padded on the right.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from clinpeft.data.long_notes import EncodedNotes, LongNotes
from clinpeft.errors import ClinpeftError
from clinpeft.modeling import lora_init
from clinpeft.modeling.adapters import (
    DOWNSTREAM,
    ClinicalAdapter,
    attach_adapter,
    check_same_base,
    head_module,
    padding_side,
    set_trainable,
    stack_adapters,
    trainable_adapters,
)
from clinpeft.modeling.base import (
    base_fingerprint,
    classification_head,
    load_sequence_classifier,
    load_tokenizer,
    reopen_base,
)
from clinpeft.modeling.pooling import apply_pooling, check_pooling, pool_windows
from clinpeft.run_files import BUNDLE
from clinpeft.rundir import write_json

FULL_MODEL_DIR = "model"  # variant full: the whole fine-tuned classifier, in a bundle
PROBLEM_TYPES = {"binary": "single_label_classification", "multiclass": "single_label_classification",
                 "multilabel": "multi_label_classification"}


@dataclass
class Classifier:
    model: torch.nn.Module
    tokenizer: object
    head_name: str
    adapters: list[str]  # active adapters, in stacking order
    fingerprint: str
    pooling: str = "last"  # what the head reads: "last" non-pad token or "mean" of the note's tokens
    # a base-mutating lora.init_lora_weights (pissa, olora): the untrained downstream LoRA, saved before training;
    # save_bundle converts the trained one against it to a plain LoRA on the unchanged base (modeling/lora_init.py)
    initial_adapter: Path | None = None


def build_classifier(
    base_path: Path,
    task_type: str,
    num_labels: int,
    variant: str,
    clinical: ClinicalAdapter | None,
    downstream_lora,
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    pooling: str = "last",
    quantization: str = "none",
    init_notes: list[str] | None = None,
) -> Classifier:
    """A classifier ready to train: exactly the variant's adapters and the head are trainable.

    init_notes: training notes for a data-driven `init_lora_weights` of the downstream LoRA (eva); a seeded
    sample of at most lora_init.INIT_ROWS of them is read (cut at 512 tokens)."""
    check_pooling(base_path, pooling)
    tokenizer = load_tokenizer(base_path, padding_side=padding_side(clinical))
    model = load_sequence_classifier(
        base_path, num_labels, tokenizer.pad_token_id, PROBLEM_TYPES[task_type], dtype, attn_implementation,
        quantization,
    )
    fingerprint = base_fingerprint(model)
    if clinical is not None:
        check_same_base(clinical, fingerprint, str(base_path))
    head_name, _ = classification_head(model)
    try:
        model, active = stack_adapters(model, variant, clinical, downstream_lora,
                                       init_batches=_init_batches(tokenizer, downstream_lora, init_notes))
    except ValueError as exc:  # peft: e.g. LLaMA's q_proj/v_proj asked of a BERT (query/value)
        raise ClinpeftError(f"lora.target_modules={list(downstream_lora.target_modules)} on {base_path}: {exc}; "
                            "set lora.target_modules to module names of this model "
                            "(LLaMA: [q_proj,v_proj], BERT: [query,value])") from None
    if variant == "full":  # every weight of the base model trains, with the head
        for param in model.parameters():
            param.requires_grad = True
    else:
        set_trainable(model, trainable_adapters(variant), head_name)
    apply_pooling(model, head_name, pooling)  # last, after peft wrapped the model: hooks the outermost one
    initial = None
    init = lora_init.init_entry(downstream_lora) if DOWNSTREAM in active else None
    if init is not None and init.mutates_base:  # a temporary folder, removed by finetune once the bundle is saved
        initial = lora_init.save_initial_adapter(model, DOWNSTREAM, Path(tempfile.mkdtemp(prefix="clinpeft-init-"))
                                                 / "initial_adapter")
    return Classifier(model, tokenizer, head_name, active, fingerprint, pooling, initial)


def _init_batches(tokenizer, section, notes: list[str] | None) -> list[dict] | None:
    """Calibration batches (input_ids, attention_mask) of the training notes, for a data-driven init only."""
    entry = lora_init.init_entry(section)
    if entry is None or not entry.needs_data:
        return None
    if not notes:
        raise ClinpeftError(f"lora.init_lora_weights={section.init_lora_weights} reads the training notes; "
                            "none were given")

    def collate(texts):
        return dict(tokenizer(texts, truncation=True, max_length=512, padding=True, return_tensors="pt"))

    return lora_init.calibration_batches(list(notes), 0, collate)


def save_bundle(clf: Classifier, run_dir: Path, meta: dict) -> None:
    run_dir = Path(run_dir)
    meta = {**meta, "pooling": clf.pooling}
    if meta.get("variant") == "full":  # every weight changed: save the whole classifier, once
        clf.model.save_pretrained(run_dir / FULL_MODEL_DIR, safe_serialization=True)
        clf.tokenizer.save_pretrained(run_dir / FULL_MODEL_DIR)
        write_json(run_dir / BUNDLE, {**meta, "adapters": [], "head": clf.head_name,
                                             "model_dir": FULL_MODEL_DIR, "base_fingerprint": clf.fingerprint})
        return
    if clf.adapters:
        plain = [a for a in clf.adapters if clf.initial_adapter is None or a != DOWNSTREAM]
        if plain:
            clf.model.save_pretrained(run_dir / "adapters", selected_adapters=plain, safe_serialization=True)
        if clf.initial_adapter is not None:  # pissa/olora: saved as a plain LoRA of rank 2r on the unchanged base
            with lora_init.base_mutation_handled():
                clf.model.save_pretrained(run_dir / "adapters", selected_adapters=[DOWNSTREAM],
                                          safe_serialization=True,
                                          path_initial_model_for_weight_conversion=str(clf.initial_adapter))
    head = head_module(clf.model, clf.head_name)
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, run_dir / "head.safetensors")
    pooler = encoder_pooler(clf.model)
    if pooler is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in pooler.state_dict().items()}, run_dir / POOLER_FILE)
    write_json(run_dir / BUNDLE, {**meta, "adapters": clf.adapters, "head": clf.head_name,
                                         "base_fingerprint": clf.fingerprint})


POOLER_FILE = "pooler.safetensors"  # an encoder's pooler, as the head was trained on it


def encoder_pooler(model) -> torch.nn.Module | None:
    """BERT's pooler (dense + tanh over [CLS]) that its classification head reads, or None (decoders; encoders
    whose classifier has none, such as RoBERTa's). A masked-LM checkpoint has no pooler weights, so transformers
    initialises it at random when it builds the classifier: frozen in head/LoRA variants, but random anew at
    every load unless the bundle keeps the one the head was trained on."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoder = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    pooler = getattr(encoder, "pooler", None)
    return pooler if isinstance(pooler, torch.nn.Module) else None


BUNDLE_KEYS = ("labels", "task", "task_type", "variant", "head")  # what load_bundle and its callers read


def check_bundle_files(run_dir: Path) -> dict:
    """A finetune run's bundle.json (an object with BUNDLE_KEYS) and the files it names, through the reading layer,
    before any model is built: adapters/<name>/ with its config and weights, a whole head.safetensors (or the full
    model folder). One line naming the file; returns bundle.json."""
    from clinpeft.files import check_safetensors
    from clinpeft.files import read_json as read_json_file

    hint = "restore the run folder from a complete copy, or fine-tune again"
    meta = read_json_file(run_dir / BUNDLE, dict, keys=BUNDLE_KEYS, what=BUNDLE, hint=hint)
    if meta.get("model_dir"):
        for weights in sorted((run_dir / str(meta["model_dir"])).glob("*.safetensors")):
            check_safetensors(weights, hint)
        return meta
    for name in meta.get("adapters") or []:
        folder = run_dir / "adapters" / str(name)
        read_json_file(folder / "adapter_config.json", dict, what="adapter config",
                       hint=f"{run_dir} is missing adapter {name}; {hint}")
        check_safetensors(folder / "adapter_model.safetensors", hint)
    check_safetensors(run_dir / "head.safetensors", hint)
    return meta


def load_bundle(run_dir: str | Path, base: str | None = None, dtype: str = "auto") -> tuple[Classifier, dict]:
    """Rebuild a trained classifier from its run directory (inference only).

    `base` overrides the base model path recorded at training time (e.g. the run moved to
    another machine); its fingerprint must still match.
    """
    run_dir = Path(run_dir)
    meta = check_bundle_files(run_dir)
    if meta.get("model_dir"):  # variant full: the saved classifier is complete, no base model needed
        return _load_full_bundle(run_dir, meta, dtype), meta
    try:
        base_path = reopen_base(meta.get("base_model"), base, meta.get("base_spec"))
    except ClinpeftError as exc:
        raise ClinpeftError(f"{run_dir}: {exc}") from None
    tokenizer = load_tokenizer(base_path, padding_side=meta.get("padding_side", "right"))
    model = load_sequence_classifier(
        base_path, len(meta["labels"]), tokenizer.pad_token_id, PROBLEM_TYPES[meta["task_type"]], dtype,
        quantization=meta.get("quantization", "none"),  # bundles from before model.quantization: none
    )
    fingerprint = base_fingerprint(model)
    if fingerprint != meta["base_fingerprint"]:
        raise ClinpeftError(
            f"{run_dir} was trained on a base model with fingerprint {meta['base_fingerprint']}, "
            f"but {base_path} has {fingerprint}; pass --base with the model it was trained on"
        )
    for name in meta["adapters"]:
        model = attach_adapter(model, run_dir / "adapters" / name, name, trainable=False)
    if len(meta["adapters"]) > 1:
        model.base_model.set_adapter(meta["adapters"])
    head = head_module(model, meta["head"])
    head.load_state_dict(load_file(run_dir / "head.safetensors"))
    pooler = encoder_pooler(model)
    if pooler is not None and (run_dir / POOLER_FILE).is_file():  # bundles from before keep the load's own pooler
        pooler.load_state_dict(load_file(run_dir / POOLER_FILE))
    model.eval()
    for param in model.parameters():
        param.requires_grad = False
    pooling = meta.get("pooling", "last")  # bundles from before model.pooling read the last token
    apply_pooling(model, meta["head"], pooling)
    return Classifier(model, tokenizer, meta["head"], list(meta["adapters"]), fingerprint, pooling), meta


def _load_full_bundle(run_dir: Path, meta: dict, dtype: str) -> Classifier:
    model_dir = run_dir / meta["model_dir"]
    tokenizer = load_tokenizer(model_dir, padding_side=meta.get("padding_side", "right"))
    model = load_sequence_classifier(
        model_dir, len(meta["labels"]), tokenizer.pad_token_id, PROBLEM_TYPES[meta["task_type"]], dtype
    )
    model.eval()
    for param in model.parameters():
        param.requires_grad = False
    pooling = meta.get("pooling", "last")
    apply_pooling(model, meta["head"], pooling)
    return Classifier(model, tokenizer, meta["head"], [], meta["base_fingerprint"], pooling)


def pad_batch(tokenizer, rows: list[list[int]]) -> dict[str, torch.Tensor]:
    return tokenizer.pad({"input_ids": rows}, return_tensors="pt")


@torch.no_grad()
def score_notes(clf: Classifier, encoded: EncodedNotes, long_notes: LongNotes, batch_size: int = 16,
                progress: bool = True, desc: str = "predict") -> np.ndarray:
    """Logits (n_notes, n_labels) of notes already cut into windows: every window scored, in batches of
    `batch_size` windows sorted by length (little padding), then pooled per note (task.chunk_pooling)."""
    model = clf.model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    windows = encoded.windows
    order = np.argsort([len(x) for x in windows], kind="stable")
    out = torch.zeros((len(windows), model.config.num_labels), dtype=torch.float32)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        index = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch(clf.tokenizer, [windows[i] for i in index]).items()}
        out[torch.as_tensor(index)] = model(**batch).logits.float().cpu()
    model.train(was_training)
    if len(windows) == encoded.n_notes:  # one window per note: nothing to pool
        return out.numpy()
    pooled = pool_windows(out, torch.as_tensor(encoded.note_index), encoded.n_notes, long_notes.chunk_pooling)
    return pooled.numpy()
