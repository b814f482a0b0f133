"""Packing notes into fixed-size blocks for causal-LM training, without cross-note attention.

The paper's code cut every note to 512 tokens and padded it to 512: long notes lost their tail,
short ones wasted most of the block on padding. Here each note becomes
`[BOS] tokens [EOS]`, is cut into segments of at most `block_size` tokens (nothing is thrown
away), and segments are laid one after another into blocks of `block_size`.

Notes stay apart through `position_ids` that restart at 0 at every segment: with
`attention_mask=None` and no KV cache, transformers' sdpa/eager attention turns position-id
restarts into a block-diagonal causal mask, so a token attends only to its own segment
(`tests/test_packing.py` checks packed logits equal each note's own logits). The first token of
every segment has label -100: it would otherwise be predicted from the previous note. The tail
of a block is padding: its own segment, all labels -100.

Every function here is pure (lists of token ids in, lists out) so `datasets.map` can run it in
parallel processes.
"""

from __future__ import annotations

from typing import Iterable

IGNORE_INDEX = -100  # label value the loss skips (PyTorch/transformers convention)


def note_segments(token_ids: list[int], block_size: int, bos_id: int | None, eos_id: int | None) -> list[list[int]]:
    """`[BOS] + token_ids + [EOS]` cut into consecutive segments of at most `block_size` tokens."""
    doc = ([bos_id] if bos_id is not None else []) + list(token_ids) + ([eos_id] if eos_id is not None else [])
    return [doc[i : i + block_size] for i in range(0, len(doc), block_size)]


def pack_segments(segments: Iterable[list[int]], block_size: int, pad_id: int) -> dict[str, list[list[int]]]:
    """Lay segments into blocks in order; a segment that does not fit starts a new block.

    Returns {"input_ids", "position_ids", "labels"}, each a list of blocks of exactly
    `block_size` tokens. Labels equal input_ids except -100 on each segment's first token and
    on padding.
    """
    blocks: dict[str, list[list[int]]] = {"input_ids": [], "position_ids": [], "labels": []}
    ids: list[int] = []
    pos: list[int] = []
    labels: list[int] = []

    def close_block() -> None:
        pad = block_size - len(ids)
        blocks["input_ids"].append(ids + [pad_id] * pad)
        blocks["position_ids"].append(pos + list(range(pad)))  # padding: a segment of its own
        blocks["labels"].append(labels + [IGNORE_INDEX] * pad)

    for segment in segments:
        if not segment:
            continue
        if len(segment) > block_size:
            raise ValueError(f"segment of {len(segment)} tokens exceeds block_size {block_size}")
        if len(ids) + len(segment) > block_size:
            close_block()
            ids, pos, labels = [], [], []
        ids += segment
        pos += range(len(segment))
        labels += [IGNORE_INDEX] + segment[1:]
    if ids:
        close_block()
    return blocks


def one_note_per_block(segments: Iterable[list[int]], block_size: int, pad_id: int) -> dict[str, list[list[int]]]:
    """The unpacked layout (one segment per row, right-padded): for methods that cannot pack."""
    blocks: dict[str, list[list[int]]] = {"input_ids": [], "position_ids": [], "labels": []}
    for segment in segments:
        if not segment:
            continue
        pad = block_size - len(segment)
        blocks["input_ids"].append(segment + [pad_id] * pad)
        blocks["position_ids"].append(list(range(len(segment))) + list(range(pad)))
        blocks["labels"].append([IGNORE_INDEX] + segment[1:] + [IGNORE_INDEX] * pad)
    return blocks


def tokenize_and_pack(batch: dict, tokenizer, text_column: str, block_size: int, packing: bool = True) -> dict:
    """`datasets.map(batched=True)` function: a batch of notes -> a batch of blocks."""
    encoded = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
    segments = [
        seg
        for ids in encoded
        for seg in note_segments(ids, block_size, tokenizer.bos_token_id, tokenizer.eos_token_id)
    ]
    layout = pack_segments if packing else one_note_per_block
    return layout(segments, block_size, tokenizer.pad_token_id)


def count_predicted_tokens(blocks, batch_size: int = 1000) -> int:
    """Tokens with a label (not -100) in a dataset of blocks, read batch by batch (bounded memory)."""
    return sum(
        sum(t != IGNORE_INDEX for row in batch["labels"] for t in row)
        for batch in blocks.select_columns(["labels"]).iter(batch_size=batch_size)
    )
