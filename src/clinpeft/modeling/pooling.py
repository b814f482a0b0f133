"""`model.pooling`: what a decoder classifier's head reads, the last non-pad token or the note's mean.

An encoder's head always reads [CLS] through BERT's pooler: `check_pooling` refuses mean pooling there.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clinpeft.errors import ClinpeftError
from clinpeft.modeling.base import is_encoder

POOLINGS = ("last", "mean")


def check_pooling(base: str | Path, pooling: str) -> None:
    """Mean pooling is for decoders: an encoder's head reads [CLS] through BERT's pooler (trained for it)."""
    if pooling not in POOLINGS:
        raise ClinpeftError(f"model.pooling={pooling}: choose one of {', '.join(POOLINGS)}")
    if pooling != "last" and is_encoder(base):
        raise ClinpeftError(f"model.pooling={pooling}: model.base {base} is a BERT-family encoder, whose head reads "
                            "[CLS] through its pooler; set model.pooling=last for encoders")


def apply_pooling(model, head_name: str, pooling: str) -> None:
    """Make a decoder classifier's logits pool the note by `pooling` (in place; "last" changes nothing).

    mean: logits = score(mean of the final hidden states over the note's tokens, attention_mask == 1).
    LLaMA's head `score` is linear without bias, so this equals the masked mean of the per-token
    logits. Two hooks do it without touching transformers' forward: a pre-hook on the outermost
    model (the one called) keeps the caller's attention_mask, and a hook on the head replaces its
    (batch, seq, labels) output by the masked mean broadcast over seq, so that transformers'
    last-non-pad-token selection picks the mean whatever the padding side.

    Prompt methods (prompt tuning, p-tuning): peft prepends num_virtual_tokens positions inside the
    outer model, so the head sees seq + num_virtual_tokens positions while the kept mask covers the
    note only; the virtual positions are left out of the mean (mask padded with zeros on the left).
    Their final hidden states do not depend on the note (causal attention: they come first), so
    including them would only add a constant whose weight shrinks with note length; the prompt still
    acts on the note through attention.
    """
    if pooling == "last":
        return
    if pooling != "mean":
        raise ClinpeftError(f"model.pooling={pooling}: choose one of {', '.join(POOLINGS)}")
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(inner, head_name)  # the module transformers calls (peft's wrapper, if any)
    kept: dict[str, torch.Tensor | None] = {}

    def keep_mask(module, args, kwargs):
        kept["mask"] = kwargs["attention_mask"] if "attention_mask" in kwargs else (args[1] if len(args) > 1 else None)

    def mean_over_note(module, args, logits):
        mask = kept.pop("mask", None)  # popped: a stale mask never reaches a later call
        return masked_mean_over_seq(logits, mask)

    model.register_forward_pre_hook(keep_mask, with_kwargs=True)
    head.register_forward_hook(mean_over_note)


def masked_mean_over_seq(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, seq, labels) logits -> their mean over the positions where `mask` is 1, broadcast back over seq.

    mask: (batch, seq') attention mask with seq' <= seq; the first seq - seq' positions (a prompt
    method's virtual tokens) count as 0. None: every position is a note token (as transformers assumes).
    """
    batch, seq = logits.shape[:2]
    if mask is None:
        mask = torch.ones(batch, seq, device=logits.device)
    mask = torch.nn.functional.pad(mask.to(logits.device, torch.float32), (seq - mask.shape[1], 0))  # virtual tokens: 0
    pooled = (logits.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    return pooled.to(logits.dtype)[:, None, :].expand(batch, seq, logits.shape[-1])


WINDOW_POOLINGS = ("max", "mean")


def pool_windows(logits: torch.Tensor, note_index: torch.Tensor, n_notes: int, how: str) -> torch.Tensor:
    """(windows, labels) logits -> (n_notes, labels): each note's windows pooled by `how` (task.chunk_pooling).

    max: the largest logit of each output over the note's windows (a finding anywhere in the note counts);
    mean: their average. A note with one window keeps its logits unchanged either way. Differentiable
    (training takes the loss on the pooled logits)."""
    index = note_index.to(logits.device)[:, None].expand_as(logits)
    if how == "max":
        out = torch.full((n_notes, logits.shape[1]), float("-inf"), device=logits.device, dtype=logits.dtype)
        return out.scatter_reduce(0, index, logits, reduce="amax", include_self=True)
    if how == "mean":
        out = torch.zeros((n_notes, logits.shape[1]), device=logits.device, dtype=logits.dtype)
        return out.scatter_reduce(0, index, logits, reduce="mean", include_self=False)
    raise ClinpeftError(f"task.chunk_pooling={how}: choose one of {', '.join(WINDOW_POOLINGS)}")
