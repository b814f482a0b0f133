"""A tiny general-English BERT: the demo's stand-in for the paper's clinical BERT baselines.

    model.base=demo-bert        # in any finetune recipe or experiment grid

The paper compares its LLaMA variants with four BERT-family encoders fine-tuned in full
(BlueBERT, UmlsBERT, Bio+ClinicalBERT, CORe). On a laptop CPU, offline, the demo cannot use
them, so it builds one encoder of the same kind: a `BertForMaskedLM` (hidden 64, 2 layers) with
its own lower-cased WordPiece tokenizer ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4), given a
short masked-language-model pretraining on the same general English as the demo LLaMA (the
docstrings of Python's standard library, `demo/llama.general_english_documents`). Like the demo
LLaMA it has seen no clinical text; unlike the real baselines it is not a *clinical* model.

Saved in the standard Hugging Face layout (safetensors), so `finetune` loads it through
`AutoModelForSequenceClassification.from_pretrained(dir)` exactly like a local BlueBERT. The
pooler (the dense layer over [CLS] that BERT's classification head reads) is not part of an MLM
checkpoint, so it starts random and trains with the rest under variant `full`. Its pretraining is
short: held-out masked-token accuracy about 5% (demo_bert.json), little more than word
frequencies; the demo row shows that the encoder path works, not what a pretrained BERT scores.

Build: text (~2 s), tokenizer (<1 s), 300 MLM steps (~50 s on one busy core), cached under
`$CLINPEFT_HOME/demo-bert-<DEMO_BERT_VERSION>`; bump the version when the recipe changes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from clinpeft.demo.llama import (
    build_into_place,
    clinpeft_home,
    general_english_documents,
    transformers_progress_bars,
)
from clinpeft.errors import ClinpeftError

DEMO_BERT_VERSION = "v1"  # bump when the recipe changes, so caches rebuild
DEMO_BERT = "demo-bert"  # the `model.base` value that names this model

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, BERT's roles
VOCAB_SIZE = 2048  # WordPiece, lower-cased (BERT-base-uncased has 30522); small: the MLM output layer is the cost
MAX_POSITIONS = 512  # BERT's limit; the paper's max length
BLOCK_SIZE = 128  # tokens per MLM training sequence ("[CLS] doc [SEP] doc [SEP] ...")
BATCH_SIZE = 16  # sequences per optimiser step (2,048 tokens)
TRAIN_STEPS = 300  # optimiser steps: ~610k tokens
LEARNING_RATE = 5e-3  # peak, linear warmup then linear decay to 0; tiny model, few steps
WARMUP_STEPS = 30
MLM_PROBABILITY = 0.15  # BERT's: of the chosen tokens 80% -> [MASK], 10% random, 10% kept
HELDOUT_EVERY = 20  # every 20th document (5%) held out for the MLM accuracy in demo_bert.json
_RECIPE_FILE = "demo_bert.json"  # written last: its presence means a finished build


def demo_bert_dir() -> Path:
    """clinpeft_home() / f"demo-bert-{DEMO_BERT_VERSION}"."""
    return clinpeft_home() / f"demo-bert-{DEMO_BERT_VERSION}"


def train_wordpiece_tokenizer(documents: list[str], vocab_size: int = VOCAB_SIZE):
    """A BERT tokenizer (lower-cased WordPiece, `[CLS] A [SEP]`) trained offline on `documents`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        show_progress=False)
    backend.train_from_iterator(documents, trainer=trainer)
    cls, sep = SPECIAL_TOKENS.index("[CLS]"), SPECIAL_TOKENS.index("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", model_max_length=MAX_POSITIONS)


def tiny_bert_config(vocab_size: int, **overrides):
    """hidden 64, 2 layers, 4 heads, intermediate 256 (BERT's 4x), 512 positions; `overrides` replace any."""
    from transformers import BertConfig

    kwargs = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=256, max_position_embeddings=MAX_POSITIONS, pad_token_id=0)
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def _blocks(tokenizer, documents: list[str]):
    """All documents as `[CLS] doc [SEP] [CLS] doc [SEP] ...`, cut into BLOCK_SIZE rows (a LongTensor)."""
    import torch

    ids = [i for row in tokenizer(documents, truncation=True, max_length=MAX_POSITIONS)["input_ids"] for i in row]
    n = len(ids) // BLOCK_SIZE
    return torch.tensor(ids[: n * BLOCK_SIZE], dtype=torch.long).view(n, BLOCK_SIZE)


def _mlm_loss(model, batch):
    """Cross-entropy over the masked tokens only. The output layer runs on those ~15% of positions
    instead of all of them (what BertForMaskedLM's own loss does): ~3x faster on a CPU."""
    import torch.nn.functional as F

    hidden = model.bert(input_ids=batch["input_ids"]).last_hidden_state  # blocks are full: no padding
    masked = batch["labels"] != -100
    return F.cross_entropy(model.cls(hidden[masked]), batch["labels"][masked])


def _mlm_accuracy(model, collator, blocks) -> float:
    """Share of masked tokens of `blocks` predicted exactly (one seeded masking)."""
    import torch

    model.eval()
    torch.manual_seed(0)
    hits = total = 0
    with torch.inference_mode():
        for start in range(0, len(blocks), 64):
            batch = collator([{"input_ids": row} for row in blocks[start:start + 64]])
            logits = model(input_ids=batch["input_ids"]).logits
            mask = batch["labels"] != -100
            hits += int((logits.argmax(-1)[mask] == batch["labels"][mask]).sum())
            total += int(mask.sum())
    return hits / max(total, 1)


def _build(out_dir: Path, seed: int, progress: bool) -> dict:
    import torch
    from tqdm.auto import tqdm
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

    started = time.perf_counter()
    documents = general_english_documents()
    train_docs = [d for i, d in enumerate(documents) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout_docs = [d for i, d in enumerate(documents) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    tokenizer = train_wordpiece_tokenizer(train_docs)
    blocks, heldout = _blocks(tokenizer, train_docs), _blocks(tokenizer, heldout_docs)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY, return_tensors="pt")

    torch.manual_seed(seed)
    model = BertForMaskedLM(tiny_bert_config(len(tokenizer)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / WARMUP_STEPS, max(0.0, (TRAIN_STEPS - s) / (TRAIN_STEPS - WARMUP_STEPS))))
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(blocks), generator=generator)
                       for _ in range(math.ceil(TRAIN_STEPS * BATCH_SIZE / len(blocks)))])
    model.train()
    losses = []
    for step in tqdm(range(TRAIN_STEPS), desc="demo bert: MLM", unit="step", disable=not progress):
        rows = blocks[order[step * BATCH_SIZE:(step + 1) * BATCH_SIZE]]
        loss = _mlm_loss(model, collator([{"input_ids": row} for row in rows]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

    accuracy = _mlm_accuracy(model, collator, heldout)
    with transformers_progress_bars(progress):
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    recipe = {
        "version": DEMO_BERT_VERSION,
        "purpose": "tiny general-English BERT standing in for the paper's clinical BERT baselines",
        "text_source": "docstrings of the Python standard library (as the demo LLaMA)",
        "n_train_documents": len(train_docs),
        "vocab_size": len(tokenizer),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "steps": TRAIN_STEPS,
        "tokens_seen": TRAIN_STEPS * BATCH_SIZE * BLOCK_SIZE,
        "final_train_loss": round(sum(losses[-20:]) / 20, 4),  # mean of the last 20 steps
        "heldout_mlm_accuracy": round(accuracy, 4),  # masked tokens predicted exactly, held-out docs
        "wall_time_s": round(time.perf_counter() - started, 2),
        "seed": seed,
    }
    (out_dir / _RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")  # last: marks a finished build
    return recipe


def _is_complete(path: Path) -> bool:
    try:
        return json.loads((path / _RECIPE_FILE).read_text()).get("version") == DEMO_BERT_VERSION
    except (OSError, ValueError):
        return False


def ensure_demo_bert(path: str | Path | None = None, *, seed: int = 0, progress: bool = True) -> Path:
    """The demo BERT's directory, built first if missing (into a temporary sibling, renamed when
    complete, so an interrupted build leaves nothing). `path` defaults to `demo_bert_dir()`."""
    target = Path(path).expanduser() if path is not None else demo_bert_dir()
    if _is_complete(target):
        return target
    if target.exists() and not (target / _RECIPE_FILE).is_file() and any(target.iterdir()):
        raise ClinpeftError(f"{target}: exists and is not a clinpeft demo BERT; remove it or choose another path")
    if progress:
        print(f"Building the demo BERT (once) in {target} ...", file=sys.stderr)
    recipe = build_into_place(target, lambda tmp: _build(tmp, seed, progress), _is_complete)
    if progress:
        print(f"Demo BERT ready: {recipe['steps']} MLM steps, {recipe['wall_time_s']:.0f} s, held-out masked-token "
              f"accuracy {recipe['heldout_mlm_accuracy']:.2f}", file=sys.stderr)
    return target
