"""Which sentences of a note drove a prediction: sentence occlusion, as pure functions of a scoring callable.

Method (`occlusion`): for a note split into sentences s_1..s_S (`split_sentences`), the attribution of
sentence i to label k is

    a_ik = P_k(note) - P_k(note with s_i removed)

with P the model's probabilities (softmax for binary/multiclass, sigmoid for multilabel). a_ik > 0: the
sentence pushes label k up (shown red); < 0: it pushes it down (blue). Cost: S + 1 forward passes per note.

Why occlusion and not integrated gradients: it needs nothing but the model's forward pass, so it works the
same for every variant clinpeft trains (stacked LoRAs, prompt/p-tuning adapters whose virtual tokens are
not input embeddings, full fine-tunes, BERT encoders, last-token or mean pooling) and through the same
batched scoring that produced predictions.csv (inference.Predictor, long-note settings included); its
unit, a sentence, is what a clinician reads and checks; and its numbers are differences of
probabilities, readable without a baseline choice.
Integrated gradients would need gradients through peft's adapters and pooling hooks, an arbitrary
baseline embedding, and would spread credit over subword tokens. Occlusion's known weakness: a fact
stated in two sentences is redundant, so removing either one alone changes little.

`top_phrases` aggregates attributions across a set of notes: per label, the sentences (lower-cased,
whitespace-collapsed) with the largest mean attribution, with how many notes they occur in.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# a sentence ends at . ! ? followed by whitespace, or at a line break; "HEADING: body" blocks start anew
_BOUNDARY = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the note's sentences, in order, covering every non-space character."""
    spans, start = [], 0
    for match in _BOUNDARY.finditer(text):
        if text[start:match.start()].strip():
            spans.append((start, match.start()))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


@dataclass
class NoteAttribution:
    """One note: its sentence spans, the probabilities of the full note (L,), and attributions (S, L)."""

    spans: list[tuple[int, int]]
    probs: np.ndarray
    attributions: np.ndarray


def occlusion(texts: Sequence[str], score: Callable[[list[str]], np.ndarray],
              batch_notes: int = 8) -> list[NoteAttribution]:
    """Sentence occlusion of every note (module docstring). `score(list of texts) -> (n, L) probabilities`
    is called on batches holding several notes' full and occluded versions."""
    results: list[NoteAttribution] = []
    for start in range(0, len(texts), batch_notes):
        chunk = list(texts[start:start + batch_notes])
        spans = [split_sentences(t) for t in chunk]
        variants, owners = [], []
        for j, (text, sp) in enumerate(zip(chunk, spans)):
            variants.append(text)
            owners.append(j)
            for a, b in sp:
                variants.append((text[:a] + text[b:]).strip() or " ")
                owners.append(j)
        probs = np.asarray(score(variants), dtype=np.float64)
        cursor = 0
        for j, sp in enumerate(spans):
            full, occluded = probs[cursor], probs[cursor + 1:cursor + 1 + len(sp)]
            results.append(NoteAttribution(sp, full, full[None, :] - occluded))
            cursor += 1 + len(sp)
    return results


def _phrase(text: str) -> str:
    return " ".join(text.lower().split())


def top_phrases(texts: Sequence[str], notes: list[NoteAttribution], labels: Sequence[str],
                n: int = 10) -> dict[str, list[dict]]:
    """Per label: the n sentences with the largest mean attribution across the notes where they occur
    ([{"phrase", "mean", "notes"}], largest first; only positive means)."""
    out = {}
    for k, label in enumerate(labels):
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for text, note in zip(texts, notes):
            for (a, b), value in zip(note.spans, note.attributions[:, k]):
                phrase = _phrase(text[a:b])
                sums[phrase] += float(value)
                counts[phrase] += 1
        ranked = sorted(((sums[p] / counts[p], p) for p in sums), reverse=True)
        out[str(label)] = [{"phrase": p, "mean": m, "notes": counts[p]} for m, p in ranked[:n] if m > 0]
    return out
