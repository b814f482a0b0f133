"""Packing: every note's tokens kept, labels masked at note starts, and packed logits equal each note's own."""

import pytest
import torch

from clinpeft.data.packing import IGNORE_INDEX, note_segments, one_note_per_block, pack_segments, tokenize_and_pack
from clinpeft.modeling.base import load_causal_lm, load_tokenizer

BOS, EOS, PAD = 1, 2, 3


def test_note_segments_add_bos_eos_and_cut_long_notes():
    assert note_segments([10, 11, 12], 8, BOS, EOS) == [[BOS, 10, 11, 12, EOS]]
    segments = note_segments(list(range(10, 20)), 4, BOS, EOS)
    assert segments == [[BOS, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, EOS]]
    assert sum(map(len, segments)) == 12  # nothing is thrown away


def test_pack_segments_layout():
    blocks = pack_segments([[1, 5, 6], [1, 7], [1, 8, 9, 10]], block_size=6, pad_id=PAD)
    assert blocks["input_ids"] == [[1, 5, 6, 1, 7, PAD], [1, 8, 9, 10, PAD, PAD]]
    assert blocks["position_ids"] == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    # the first token of each segment is never predicted from the previous note; padding never counts
    assert blocks["labels"] == [[IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7, IGNORE_INDEX],
                                [IGNORE_INDEX, 8, 9, 10, IGNORE_INDEX, IGNORE_INDEX]]
    assert all(len(row) == 6 for key in blocks for row in blocks[key])


def test_pack_rejects_oversized_segment():
    with pytest.raises(ValueError, match="exceeds block_size"):
        pack_segments([[1, 2, 3, 4, 5]], block_size=4, pad_id=PAD)


def test_one_note_per_block_predicts_the_same_tokens_as_packing():
    segments = [[1, 5, 6], [1, 7], [1, 8, 9, 10]]
    packed = pack_segments(segments, 6, PAD)
    unpacked = one_note_per_block(segments, 6, PAD)
    assert len(unpacked["input_ids"]) == 3
    count = lambda b: sum(t != IGNORE_INDEX for row in b["labels"] for t in row)  # noqa: E731
    assert count(packed) == count(unpacked) == 6


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_notes_own_logits(tiny_llama, attn):
    tokenizer = load_tokenizer(tiny_llama)
    model = load_causal_lm(tiny_llama, "float32", attn).eval()
    notes = ["Chief complaint: shortness of breath.", "BP 128/76 HR 88 RR 18.", "Pt s/p CABG, hx CHF, HTN."]
    blocks = tokenize_and_pack({"text": notes}, tokenizer, "text", block_size=128)
    assert len(blocks["input_ids"]) == 1  # all three notes share one block
    ids = torch.tensor(blocks["input_ids"])
    pos = torch.tensor(blocks["position_ids"])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos).logits[0]
        start = 0
        for note in notes:
            own_ids = ([tokenizer.bos_token_id] + tokenizer(note, add_special_tokens=False)["input_ids"]
                       + [tokenizer.eos_token_id])
            own = model(input_ids=torch.tensor([own_ids])).logits[0]
            torch.testing.assert_close(packed[start : start + len(own_ids)], own, atol=1e-5, rtol=1e-5)
            start += len(own_ids)


def test_packed_loss_equals_sum_of_per_note_losses(tiny_llama):
    """Token-weighted NLL over a packed block == summed NLL of the notes run one by one."""
    from datasets import Dataset

    from clinpeft.training.perplexity import token_nll

    tokenizer = load_tokenizer(tiny_llama)
    model = load_causal_lm(tiny_llama, "float32")
    notes = ["Discharge diagnosis: pneumonia.", "Medications on admission: aspirin 81 mg daily.", "CXR clear."]
    packed = Dataset.from_dict(tokenize_and_pack({"text": notes}, tokenizer, "text", block_size=64))
    single = Dataset.from_dict(tokenize_and_pack({"text": notes}, tokenizer, "text", block_size=64, packing=False))
    nll_packed, n_packed = token_nll(model, packed, batch_size=4, progress=False)
    nll_single, n_single = token_nll(model, single, batch_size=1, progress=False)
    assert n_packed == n_single == sum(len(tokenizer(n, add_special_tokens=False)["input_ids"]) + 1 for n in notes)
    assert nll_packed == pytest.approx(nll_single, rel=1e-5)
