"""The linear probe: what the frozen model already gives, the floor fine-tuning must clear (issue 24).

Features: the classification head's input (the final norm's output of a decoder; BERT's pooler output) for
each note, pooled over the note's tokens, computed by one forward pass of the classifier before it trains. A
fresh downstream LoRA is an identity (peft initialises lora_B to zero), so these are the features of the
frozen base (+ clinical adapter) the run starts from. Held in memory only (notes x hidden floats), never
written to disk.

Probe: scikit-learn's LogisticRegression on the standardised mean-pooled features, C chosen on validation
AUROC (never on test); binary and multiclass as one (multinomial) model, multilabel one-vs-rest per label
(labels with one class in train get a constant score). Its val/test AUROC goes into metrics.json beside
the fine-tuned run's.

LP-FT (Kumar et al. 2022, train.head_init=probe): the head starts as a logistic regression on the features
the head reads (the run's model.pooling), refit with the chosen C in the head's own form (LLaMA's `score`
has no bias: no intercept, features scaled but not centred); then the adapters train from a head that
already separates the classes, instead of a random head whose gradients scramble the features first.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from clinpeft.data.long_notes import EncodedNotes
from clinpeft.evaluation.metrics import task_metrics
from clinpeft.modeling.adapters import head_module
from clinpeft.modeling.classifier import Classifier, pad_batch

PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse L2 strength on standardised features; chosen on val AUROC
MAX_ITER = 500


@dataclass
class NoteFeatures:
    """Per note (rows in file order): the mean of the head's inputs over the note's tokens, and what the head
    itself reads under model.pooling (the same array for mean pooling)."""

    mean: np.ndarray
    head: np.ndarray


# ------------------------------------------------------------------------- features shared between runs

_SHARED: dict[str, NoteFeatures] | None = None  # set inside shared_features(): digest -> features


@contextmanager
def shared_features() -> Iterator[None]:
    """Within this block, note_features of one model function on one set of token ids is computed once.

    The demo's fine-tuning runs start from two frozen models: head and + LoRA from the base, the clinical frozen
    and trainable variants from base + clinical LoRA (a fresh downstream LoRA is an identity). Each run's probe /
    LP-FT start needs the train and val features of its frozen model: one forward pass over the notes per model,
    not per run. In memory only (notes x hidden floats), never written; outside this block nothing is kept and
    nothing is hashed (the key hashes every weight once per pass: 1.7 s for 135M parameters on one busy CPU core, so
    `experiment`, whose cells may be 7B models on a GPU, does not use it unmeasured)."""
    global _SHARED
    outer, _SHARED = _SHARED, ({} if _SHARED is None else _SHARED)
    try:
        yield
    finally:
        _SHARED = outer


_LORA_PAIR = re.compile(r"^(.*)\.lora_(embedding_)?[AB]\.(\w+)(\.weight)?$")


def function_digest(model, head_name: str) -> str:
    """A hash of the weights that compute the head's input: every tensor of the state dict but the head's, and
    without the LoRA pairs whose B is zero (a fresh LoRA adds exactly nothing, so `+ LoRA` before training is the
    frozen base). Bytes and dtypes, so an fp32 and a bf16 load differ."""
    state = model.state_dict()
    pairs: dict[tuple[str, str], list[str]] = {}
    for name in state:
        match = _LORA_PAIR.match(name)
        if match:
            pairs.setdefault((match.group(1), match.group(3)), []).append(name)
    identity = {name for names in pairs.values()
                if all(not torch.any(state[n]) for n in names if ".lora_B." in n or ".lora_embedding_B." in n)
                for name in names}
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in state.items():
        if name in identity or head_name in name.split("."):
            continue
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{_plain_name(name)}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
    return digest.hexdigest()


def _plain_name(name: str) -> str:
    """A parameter's name without peft's wrappers ("base_model.model." prefix, ".base_layer"), so the base's
    weights hash the same bare or under an adapter."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _features_key(clf: Classifier, encoded: EncodedNotes, batch_size: int, model_digest: str) -> str:
    """What decides note_features' output: the model's function, the pooling, padding, batching and the windows."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{model_digest}|{clf.pooling}|{clf.tokenizer.padding_side}|{batch_size}|{encoded.n_notes}|".encode())
    digest.update(np.asarray(encoded.note_index, np.int64).tobytes())
    for window in encoded.windows:
        digest.update(np.asarray(window, np.int64).tobytes() + b"|")
    return digest.hexdigest()


def split_features(clf: Classifier, encoded: dict[str, EncodedNotes], batch_size: int = 16,
                   progress: bool = True) -> dict[str, NoteFeatures]:
    """note_features of each split of one (frozen) model; inside shared_features() its weights are hashed once for
    all the splits, not once per split."""
    digest = function_digest(clf.model, clf.head_name) if _SHARED is not None else None
    return {split: note_features(clf, notes, batch_size, progress, f"probe features ({split})", model_digest=digest)
            for split, notes in encoded.items()}


def note_features(clf: Classifier, encoded: EncodedNotes, batch_size: int = 16, progress: bool = True,
                  desc: str = "probe features", model_digest: str | None = None) -> NoteFeatures:
    """One forward pass over the notes' windows, reading the head's input with a forward pre-hook (the logits
    are discarded). Windows of one note are averaged. Prompt methods' virtual tokens (prepended by peft) are
    left out, as apply_pooling does. Encoders: the head reads one vector per window (BERT's pooler). Inside
    shared_features(), a model function already seen on these windows is not run again (model_digest: its
    function_digest, when the caller already has it)."""
    if _SHARED is None:
        return _note_features(clf, encoded, batch_size, progress, desc)
    key = _features_key(clf, encoded, batch_size, model_digest or function_digest(clf.model, clf.head_name))
    if key not in _SHARED:
        _SHARED[key] = _note_features(clf, encoded, batch_size, progress, desc)
    elif progress:
        print(f"{desc}: the same frozen model and notes as an earlier run: its features reused")
    return _SHARED[key]


@torch.no_grad()
def _note_features(clf: Classifier, encoded: EncodedNotes, batch_size: int, progress: bool,
                   desc: str) -> NoteFeatures:
    model = clf.model
    device = next(model.parameters()).device
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(inner, clf.head_name)  # the module transformers calls (peft's wrapper, if any)
    seen: dict[str, torch.Tensor] = {}
    hook = head.register_forward_pre_hook(lambda module, args: seen.__setitem__("hidden", args[0]))
    was_training = model.training
    model.eval()
    windows, n = encoded.windows, len(encoded.windows)
    mean_out = last_out = None
    try:
        order = np.argsort([len(x) for x in windows], kind="stable")
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
            index = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pad_batch(clf.tokenizer, [windows[i] for i in index]).items()}
            model(**batch)
            mean, last = pool_hidden(seen.pop("hidden").float(), batch["attention_mask"])
            if mean_out is None:
                mean_out, last_out = np.zeros((n, mean.shape[1]), np.float32), np.zeros((n, mean.shape[1]), np.float32)
            mean_out[index], last_out[index] = mean.cpu().numpy(), last.cpu().numpy()
    finally:
        hook.remove()
        model.train(was_training)
    mean_notes = _per_note(mean_out, encoded)
    head_notes = mean_notes if clf.pooling == "mean" else _per_note(last_out, encoded)
    return NoteFeatures(mean=mean_notes, head=head_notes)


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, seq, hidden) -> (mean over the tokens where mask is 1, the last such token), each (batch, hidden).
    seq may exceed the mask's length by a prompt method's virtual tokens (first; counted as 0). A 2-D input
    (an encoder's pooled [CLS]) is returned as both."""
    if hidden.dim() == 2:
        return hidden, hidden
    mask = torch.nn.functional.pad(mask.to(hidden.device, torch.float32), (hidden.shape[1] - mask.shape[1], 0))
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last_index = (mask * positions).argmax(1)  # the last note token, whichever side is padded
    return mean, hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]


def _per_note(features: np.ndarray, encoded: EncodedNotes) -> np.ndarray:
    if len(features) == encoded.n_notes:
        return features
    index = np.asarray(encoded.note_index)
    sums = np.zeros((encoded.n_notes, features.shape[1]), np.float64)
    np.add.at(sums, index, features)
    return (sums / np.bincount(index, minlength=encoded.n_notes)[:, None]).astype(np.float32)


# --------------------------------------------------------------------------- fitting


def _fit(task_type: str, x: np.ndarray, y: np.ndarray, c: float, fit_intercept: bool = True) -> list:
    """Logistic regression(s): one model (binary, multiclass) or one per label (multilabel; None for a
    label with one class in train). Single-label tasks weigh classes as the fine-tuning loss does."""
    from sklearn.linear_model import LogisticRegression

    def one(target, class_weight):
        model = LogisticRegression(C=c, max_iter=MAX_ITER, fit_intercept=fit_intercept, class_weight=class_weight)
        with warnings.catch_warnings():  # a few hundred iterations are enough to rank notes; no ConvergenceWarning
            warnings.simplefilter("ignore")
            return model.fit(x, target)

    if task_type == "multilabel":
        return [one(y[:, j], None) if 0 < y[:, j].sum() < len(y) else None for j in range(y.shape[1])]
    return [one(y, "balanced")]


def _logits(task_type: str, models: list, x: np.ndarray, num_labels: int) -> np.ndarray:
    """Scores in the form task_metrics reads: logits whose softmax (single-label) / sigmoid (multilabel) are
    the probe's probabilities (multilabel: 0 for a skipped label)."""
    if task_type == "multilabel":
        return np.stack([m.decision_function(x) if m is not None else np.zeros(len(x)) for m in models], axis=1)
    (model,) = models
    proba = np.zeros((len(x), num_labels))
    proba[:, model.classes_] = model.predict_proba(x)
    return np.log(np.clip(proba, 1e-12, None))


@dataclass
class Probe:
    c: float
    val_auroc: float
    test_auroc: float
    val_by_c: dict
    skipped_labels: int
    test_logits: np.ndarray | None = None  # the chosen probe's test scores (task_metrics' form); not in to_json

    def to_json(self) -> dict:
        return {"val": self.val_auroc, "test": self.test_auroc, "C": self.c, "val_by_C": self.val_by_c,
                "features": "mean-pooled head input of the frozen model", "skipped_labels": self.skipped_labels}


def fit_probe(task_type: str, labels: list[str], features: dict[str, np.ndarray], targets: dict[str, np.ndarray],
              cs=PROBE_CS) -> Probe:
    """The probe on {split: features}: standardised on train, C by val AUROC (first best), scored on val and test."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features["train"])
    x = {split: scaler.transform(f) for split, f in features.items()}
    num_labels = len(labels)
    by_c, fitted = {}, {}
    for c in cs:
        fitted[c] = _fit(task_type, x["train"], targets["train"], c)
        by_c[c] = _auroc(task_type, targets["val"], _logits(task_type, fitted[c], x["val"], num_labels), labels)
    best = max(cs, key=lambda c: (by_c[c] if not math.isnan(by_c[c]) else -1.0))
    test_logits = _logits(task_type, fitted[best], x["test"], num_labels)
    test = _auroc(task_type, targets["test"], test_logits, labels)
    skipped = sum(m is None for m in fitted[best])
    return Probe(c=best, val_auroc=by_c[best], test_auroc=test, val_by_c={str(c): a for c, a in by_c.items()},
                 skipped_labels=skipped, test_logits=test_logits)


def _auroc(task_type, y, logits, labels) -> float:
    return float(task_metrics(task_type, y, logits, labels)["auroc"])


def head_weights(task_type: str, num_labels: int, x: np.ndarray, y: np.ndarray, c: float,
                 bias: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(weight (num_labels, hidden), bias or None) of a linear head equal to a logistic regression on x.

    Fitted on x / std (train's): the same C means the same strength as on standardised features; without a
    bias (LLaMA's `score`) the features are not centred and the fit has no intercept, else it is folded into
    the bias. Binary with two outputs: softmax of (-z/2, z/2) is sigmoid(z). Multiclass: multinomial logits."""
    scale = x.std(0) + 1e-6
    mean = x.mean(0) if bias else np.zeros(x.shape[1])
    models = _fit(task_type, (x - mean) / scale, y, c, fit_intercept=bias)
    weight, intercept = np.zeros((num_labels, x.shape[1])), np.zeros(num_labels)
    if task_type == "multilabel":
        for j, m in enumerate(models):
            if m is not None:
                weight[j], intercept[j] = m.coef_[0], m.intercept_[0]
            elif bias:  # a label never (or always) positive in train: its prior
                intercept[j] = -10.0 if y[:, j].sum() == 0 else 10.0
    else:
        (m,) = models
        if len(m.classes_) == 2 and num_labels == 2:
            weight[m.classes_[1]], weight[m.classes_[0]] = m.coef_[0] / 2, -m.coef_[0] / 2
            intercept[m.classes_[1]], intercept[m.classes_[0]] = m.intercept_[0] / 2, -m.intercept_[0] / 2
        else:
            weight[m.classes_], intercept[m.classes_] = m.coef_, m.intercept_
    weight = weight / scale
    return weight, (intercept - weight @ mean) if bias else None


@torch.no_grad()
def init_head_from_probe(clf: Classifier, task_type: str, num_labels: int, x: np.ndarray, y: np.ndarray,
                         c: float) -> None:
    """LP-FT: set the trainable head to head_weights(...) of the features it reads (in place)."""
    head = head_module(clf.model, clf.head_name)
    has_bias = getattr(head, "bias", None) is not None
    weight, bias = head_weights(task_type, num_labels, x, y, c, has_bias)
    head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
    if has_bias:
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


# --------------------------------------------------------------------------- the guard


def prior_loss(task_type: str, targets: np.ndarray, num_labels: int) -> float:
    """The training loss of the best constant predictor, in the unit the trainer logs (nats per note; per note
    and label for multilabel). Single-label: the loss is class-balanced, under which the best constant is the
    uniform distribution: log K. Multilabel: the mean over labels of the binary entropy of train prevalence."""
    if task_type != "multilabel":
        return math.log(num_labels)
    p = np.clip(targets.mean(0), 1e-12, 1 - 1e-12)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def final_train_loss(loss_curve: list[dict], training_loss: float | None) -> float | None:
    """The mean logged loss over the last third of the logged steps (the run's end, not its start); the
    Trainer's whole-run mean when fewer than one logging interval was trained."""
    losses = [e["loss"] for e in loss_curve if e.get("loss") is not None]
    if not losses:
        return training_loss
    tail = losses[-max(1, len(losses) // 3):]
    return float(np.mean(tail))


def guard(val_auroc: float, probe: dict | None, train_loss: float | None, prior: float, *,
          head_init: str | None = None, pooling: str | None = None) -> dict:
    """metrics.json's "guard": whether the run ended below its own frozen model's probe on validation, or
    with a training loss above a constant predictor's; `warnings`: one console line each. head_init, pooling:
    the run's, so the hint names only what it did not already use."""
    lines = []
    below = probe is not None and not math.isnan(probe["val"]) and val_auroc < probe["val"]
    if below:
        hints = [hint for hint, used in (("train.head_init=probe (LP-FT)", head_init == "probe"),
                                         ("model.pooling=mean", pooling == "mean")) if not used]
        if head_init == "probe":  # the LP-FT start competed as epoch 0: its head lacks the probe's intercept
            hints.append("more epochs (the LP-FT head is the probe refit without an intercept: it may start a "
                         "little below it)")
        lines.append(f"warning: fine-tuning ended below the linear probe of its own frozen model: val AUROC "
                     f"{val_auroc:.4f} < probe {probe['val']:.4f}; try {', '.join(hints + ['a lower train.lr'])}")
    above = train_loss is not None and train_loss >= prior
    if above:
        lines.append(f"warning: the training loss stayed at or above a constant predictor's: {train_loss:.4f} "
                     f">= {prior:.4f} (label prior); the model did not learn: lower train.lr or check the labels")
    return {"below_probe": bool(below), "probe_val_auroc": None if probe is None else probe["val"],
            "val_auroc": val_auroc, "loss_above_prior": bool(above), "final_train_loss": train_loss,
            "prior_loss": prior, "warnings": lines}
