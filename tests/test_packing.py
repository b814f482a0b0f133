"""Packing: every note's tokens kept, labels masked at note starts, and packed logits equal each note's own."""

import numpy as np
import pytest
import torch

from clinpeft.config import PretrainConfig, load_config
from clinpeft.data.packing import (
    IGNORE_INDEX,
    PACKING_MODES,
    count_predicted_tokens,
    note_segments,
    one_note_per_block,
    pack_documents,
    pack_segments,
    tokenize_and_pack,
)
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


def mimic_like_documents(n: int, seed: int = 0) -> list[list[int]]:
    """The MIMIC-IV-Note-like mix: ~88% notes around 300 tokens (radiology), ~12% 2,000-3,000 (discharge)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        length = max(int(rng.normal(300, 60)), 20) if rng.random() < 0.88 else int(rng.uniform(2000, 3000))
        docs.append([BOS, *rng.integers(10, 1000, length).tolist(), EOS])
    return docs


def _count(blocks) -> int:
    return sum(t != IGNORE_INDEX for row in blocks["labels"] for t in row)


def _segments(blocks) -> list[list[int]]:
    """Every non-padding segment of every block (a segment: a run of positions counting up from 0)."""
    out = []
    for ids, pos in zip(blocks["input_ids"], blocks["position_ids"]):
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        out += [ids[a:b] for a, b in zip(starts, starts[1:]) if set(ids[a:b]) != {PAD}]
    return out


def test_fill_cuts_at_block_boundaries_and_restarts_positions():
    docs = [[BOS, 5, 6, EOS], [BOS, 7, 8, 9, 10, 11, EOS]]  # 4 + 7 tokens into blocks of 5
    blocks = pack_documents(docs, 5, PAD, "fill")
    assert blocks["input_ids"] == [[BOS, 5, 6, EOS, BOS], [7, 8, 9, 10, 11], [EOS, PAD, PAD, PAD, PAD]]
    assert blocks["position_ids"] == [[0, 1, 2, 3, 0], [0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]
    assert blocks["labels"][1] == [IGNORE_INDEX, 8, 9, 10, 11]  # the continuation's first token: no context
    # next_fit cuts the 7-token note into 2 segments; fill into 3 pieces: one start added
    assert sum(blocks["segment_starts_added"]) == 1
    assert _count(pack_documents(docs, 5, PAD, "next_fit")) - _count(blocks) == 1


@pytest.mark.parametrize("mode", PACKING_MODES)
def test_every_mode_keeps_every_token_and_blocks_are_full_size(mode):
    docs = mimic_like_documents(60)
    blocks = pack_documents(docs, 512, PAD, mode)
    assert all(len(row) == 512 for key in ("input_ids", "position_ids", "labels") for row in blocks[key])
    kept = sorted(t for row in blocks["input_ids"] for t in row if t != PAD)
    assert kept == sorted(t for doc in docs for t in doc)  # no token lost or doubled


def test_ffd_predicts_the_same_tokens_as_next_fit_in_fewer_blocks():
    docs = mimic_like_documents(200)
    ffd, nf = pack_documents(docs, 512, PAD, "ffd"), pack_documents(docs, 512, PAD, "next_fit")
    predicted = lambda b: sorted(lab for row in b["labels"] for lab in row if lab != IGNORE_INDEX)  # noqa: E731
    assert predicted(ffd) == predicted(nf)  # the same token set: perplexities stay comparable
    assert sorted(map(tuple, _segments(ffd))) == sorted(map(tuple, _segments(nf)))  # the same segments
    assert len(ffd["input_ids"]) < len(nf["input_ids"])


def test_default_packing_fills_97_percent_of_slots_on_the_mimic_like_mix():
    config = load_config(PretrainConfig)
    docs = mimic_like_documents(1000)
    blocks = pack_documents(docs, 512, PAD, config.data.packing)
    share = _count(blocks) / (512 * len(blocks["input_ids"]))
    assert config.data.packing == "fill" and share >= 0.97
    assert _count(pack_documents(docs, 512, PAD, "next_fit")) - _count(blocks) == sum(blocks["segment_starts_added"])


def test_old_boolean_packing_values_still_read():
    assert load_config(PretrainConfig, None, ["data.packing=true"]).data.packing == "fill"
    assert load_config(PretrainConfig, None, ["data.packing=false"]).data.packing == "none"
    assert load_config(PretrainConfig, None, ["data.packing=ffd"]).data.packing == "ffd"


def test_count_predicted_tokens_matches_the_python_count():
    from datasets import Dataset

    blocks = pack_documents(mimic_like_documents(50), 256, PAD, "fill")
    blocks.pop("segment_starts_added")
    assert count_predicted_tokens(Dataset.from_dict(blocks), batch_size=7) == _count(blocks)


NOTES = ["Chief complaint: shortness of breath, worse on exertion for two days.", "BP 128/76 HR 88 RR 18.",
         "Pt s/p CABG, hx CHF, HTN, DM2; on metoprolol, lisinopril, metformin.", "CXR clear."]


def available_attention():
    """Every attention implementation that runs here (modeling/base.check_attention): flex_attention and
    flash_attention_2 need a CUDA GPU (and flash-attn); benchmarks/gpu_check.sh runs these tests there."""
    import importlib.util

    names = ["sdpa", "eager"]
    if torch.cuda.is_available():
        names.append("flex_attention")
        if importlib.util.find_spec("flash_attn") is not None:
            names.append("flash_attention_2")
    return names


@pytest.mark.parametrize("attn", available_attention())
@pytest.mark.parametrize("mode", ["fill", "ffd", "next_fit"])
def test_packed_logits_equal_each_segments_own_logits(tiny_llama, attn, mode):
    """For every layout and attention implementation: each segment of a block (a note, or for fill a
    piece of one) gets exactly the logits it gets alone, so no block lets notes attend to each other."""
    tokenizer = load_tokenizer(tiny_llama)
    half = attn == "flash_attention_2"  # runs in bf16 only: compared at bf16's resolution
    model = load_causal_lm(tiny_llama, "bfloat16" if half else "float32", attn).eval()
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if half else {"atol": 1e-5, "rtol": 1e-5}
    device = model.device
    block = 24 if mode == "fill" else 64  # fill: small blocks so notes are cut across them
    blocks = tokenize_and_pack({"text": NOTES}, tokenizer, "text", block_size=block, packing=mode)
    blocks.pop("segment_starts_added", None)
    assert any(row.count(0) > 1 for row in blocks["position_ids"])  # some block holds more than one segment
    with torch.no_grad():
        ids_t = torch.tensor(blocks["input_ids"], device=device)
        pos_t = torch.tensor(blocks["position_ids"], device=device)
        packed = model(input_ids=ids_t, position_ids=pos_t).logits
        for row, (ids, pos, labels) in enumerate(zip(blocks["input_ids"], blocks["position_ids"], blocks["labels"])):
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            for a, b in zip(starts, starts[1:]):
                if all(label == IGNORE_INDEX for label in labels[a:b]) and ids[a] == tokenizer.pad_token_id:
                    continue  # padding
                own = model(input_ids=torch.tensor([ids[a:b]], device=device)).logits[0]
                torch.testing.assert_close(packed[row, a:b], own, **tolerance)


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
