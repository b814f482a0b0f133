"""Packing notes into fixed-size blocks for causal-LM training, without cross-note attention.

The paper's code cut every note to 512 tokens and padded it to 512: long notes lost their tail,
short ones wasted most of the block on padding. Here each note becomes `[BOS] tokens [EOS]` and
nothing is thrown away. Four layouts (`data.packing`, PACKING_MODES):

- `fill` (default): notes laid end to end and cut at block boundaries, so no block is padded but
  the last of each window of notes. A note that crosses a boundary goes on in the next block as a
  new segment (positions from 0). Each such continuation adds one segment start whose first token
  has no left context and is not predicted (run.json: `segment_starts_added`), so fill predicts
  slightly fewer tokens than the other layouts and its perplexity is over a slightly different
  token set (about 1 token in 170 on the MIMIC-like mix at 512-token blocks).
- `ffd`: first-fit-decreasing within a window of notes: each note (cut into `block_size` segments
  only when longer than a block, as in next_fit) goes into the first block with room, longest
  first. Same segments, same predicted tokens as next_fit (tested): only the order and the
  padding change, so perplexities are directly comparable.
- `next_fit`: segments laid into blocks in order; one that does not fit starts a new block.
- `none`: one segment per row, right-padded (for methods that cannot pack).

Notes stay apart through `position_ids` that restart at 0 at every segment: with
`attention_mask=None` and no KV cache, transformers' sdpa/eager attention turns position-id
restarts into a block-diagonal causal mask (flash-attention 2 takes the same restarts as varlen
sequence boundaries), so a token attends only to its own segment (`tests/test_packing.py` checks
packed logits equal each note's own logits). The first token of every segment has label -100: it
would otherwise be predicted from the previous note. The tail of a block is padding: its own
segment, all labels -100.

Every function here is pure (lists of token ids in, lists out) so `datasets.map` can run it in
parallel processes.
"""

from __future__ import annotations

import math
from typing import Iterable

IGNORE_INDEX = -100  # label value the loss skips (PyTorch/transformers convention)
PACKING_MODES = ("fill", "ffd", "next_fit", "none")
DEFAULT_PACKING = "fill"  # highest labelled share per block position on the MIMIC-like mix (README, Packing)


def packing_mode(setting: str | bool) -> str:
    """`data.packing` as one of PACKING_MODES; old recipes' true/false mean the default / none."""
    if setting is True:
        return DEFAULT_PACKING
    if setting is False:
        return "none"
    if setting not in PACKING_MODES:
        raise ValueError(f"packing {setting!r}: expected one of {', '.join(PACKING_MODES)} (or true/false)")
    return setting


def note_segments(token_ids: list[int], block_size: int, bos_id: int | None, eos_id: int | None) -> list[list[int]]:
    """`[BOS] + token_ids + [EOS]` cut into consecutive segments of at most `block_size` tokens."""
    doc = note_document(token_ids, bos_id, eos_id)
    return [doc[i : i + block_size] for i in range(0, len(doc), block_size)]


def note_document(token_ids: list[int], bos_id: int | None, eos_id: int | None) -> list[int]:
    return ([bos_id] if bos_id is not None else []) + list(token_ids) + ([eos_id] if eos_id is not None else [])


def _empty() -> dict[str, list[list[int]]]:
    return {"input_ids": [], "position_ids": [], "labels": []}


def _emit(blocks: dict, segments: list[list[int]], block_size: int, pad_id: int) -> None:
    """Append one block made of `segments` (each its own positions and masked first label), padded."""
    ids: list[int] = []
    pos: list[int] = []
    labels: list[int] = []
    for segment in segments:
        ids += segment
        pos += range(len(segment))
        labels += [IGNORE_INDEX] + segment[1:]
    pad = block_size - len(ids)
    blocks["input_ids"].append(ids + [pad_id] * pad)
    blocks["position_ids"].append(pos + list(range(pad)))  # padding: a segment of its own
    blocks["labels"].append(labels + [IGNORE_INDEX] * pad)


def _check(segment: list[int], block_size: int) -> None:
    if len(segment) > block_size:
        raise ValueError(f"segment of {len(segment)} tokens exceeds block_size {block_size}")


def pack_segments(segments: Iterable[list[int]], block_size: int, pad_id: int) -> dict[str, list[list[int]]]:
    """next_fit: lay segments into blocks in order; a segment that does not fit starts a new block.

    Returns {"input_ids", "position_ids", "labels"}, each a list of blocks of exactly
    `block_size` tokens. Labels equal input_ids except -100 on each segment's first token and
    on padding.
    """
    blocks = _empty()
    current: list[list[int]] = []
    used = 0
    for segment in segments:
        if not segment:
            continue
        _check(segment, block_size)
        if used + len(segment) > block_size:
            _emit(blocks, current, block_size, pad_id)
            current, used = [], 0
        current.append(segment)
        used += len(segment)
    if current:
        _emit(blocks, current, block_size, pad_id)
    return blocks


def pack_first_fit_decreasing(segments: Iterable[list[int]], block_size: int, pad_id: int) -> dict:
    """ffd: longest segment first, each into the first block with room (a new block when none has)."""
    ordered = sorted((s for s in segments if s), key=len, reverse=True)
    bins: list[list[list[int]]] = []
    room: list[int] = []
    for segment in ordered:
        _check(segment, block_size)
        n = len(segment)
        for i, free in enumerate(room):
            if free >= n:
                bins[i].append(segment)
                room[i] -= n
                break
        else:
            bins.append([segment])
            room.append(block_size - n)
    blocks = _empty()
    for content in bins:
        _emit(blocks, content, block_size, pad_id)
    return blocks


def pack_fill(documents: Iterable[list[int]], block_size: int, pad_id: int) -> dict[str, list[list[int]]]:
    """fill: documents end to end, cut at block boundaries; a cut document goes on as a new segment.

    Adds a "segment_starts_added" column (per block: continuation segments starting in it), which
    the caller sums and drops.
    """
    blocks = _empty()
    added: list[int] = []
    current: list[list[int]] = []
    used = 0
    pending = 0  # segment starts added since the last emitted block
    for doc in documents:
        pieces = 0
        start = 0
        while start < len(doc):
            take = min(block_size - used, len(doc) - start)
            current.append(doc[start : start + take])
            used += take
            start += take
            pieces += 1
            if used == block_size:
                _emit(blocks, current, block_size, pad_id)
                added.append(pending)
                current, used, pending = [], 0, 0
        # next_fit would cut this document into ceil(len / block_size) segments
        pending += pieces - math.ceil(len(doc) / block_size)
    if current:
        _emit(blocks, current, block_size, pad_id)
        added.append(pending)
    elif pending and added:
        added[-1] += pending
    blocks["segment_starts_added"] = added
    return blocks


def one_note_per_block(segments: Iterable[list[int]], block_size: int, pad_id: int) -> dict[str, list[list[int]]]:
    """The unpacked layout (one segment per row, right-padded): for methods that cannot pack."""
    blocks = _empty()
    for segment in segments:
        if segment:
            _emit(blocks, [segment], block_size, pad_id)
    return blocks


def tokenize_and_pack(batch: dict, tokenizer, text_column: str, block_size: int, packing: str | bool = True) -> dict:
    """`datasets.map(batched=True)` function: a batch of notes (the packing window) -> a batch of blocks."""
    mode = packing_mode(packing)
    encoded = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
    documents = [note_document(ids, tokenizer.bos_token_id, tokenizer.eos_token_id) for ids in encoded]
    return pack_documents(documents, block_size, tokenizer.pad_token_id, mode)


def pack_documents(documents: list[list[int]], block_size: int, pad_id: int, mode: str) -> dict:
    """Documents (`[BOS] tokens [EOS]` each) -> blocks in layout `mode` (see the module docstring)."""
    if mode == "fill":
        return pack_fill(documents, block_size, pad_id)
    segments = [doc[i : i + block_size] for doc in documents for i in range(0, len(doc), block_size)]
    layout = {"ffd": pack_first_fit_decreasing, "next_fit": pack_segments, "none": one_note_per_block}[mode]
    return layout(segments, block_size, pad_id)


def count_predicted_tokens(blocks, batch_size: int = 10_000) -> int:
    """Tokens with a label (not -100) in a dataset of blocks, read batch by batch as Arrow (bounded memory)."""
    import numpy as np
    import pyarrow.compute as pc

    total = 0
    for table in blocks.select_columns(["labels"]).with_format("arrow").iter(batch_size=batch_size):
        values = pc.list_flatten(table.column("labels")).to_numpy()
        total += int(np.count_nonzero(values != IGNORE_INDEX))
    return total


def slot_share(predicted_tokens: int, n_blocks: int, block_size: int) -> float:
    """Labelled tokens / block positions: the share of the compute that trains on something."""
    return predicted_tokens / (n_blocks * block_size) if n_blocks else math.nan
