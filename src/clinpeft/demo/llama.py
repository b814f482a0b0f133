"""A tiny general-English LLaMA that stands in for LLaMA-7B in `clinpeft demo` and in tests.

Why this exists
---------------
Gema et al. (2023) start from LLaMA-7B, a model of *general* text, and show that domain-adaptive
pretraining on clinical notes lowers perplexity on clinical text. The demo has to reproduce that
effect on a laptop CPU, offline, without downloading anything. A randomly initialised model cannot
do it: it has no "general domain" to adapt away from, so any training looks like an improvement.
So we train a real (if tiny) language model of general, non-clinical English, once, and cache it.

The text source is the docstrings of Python's standard library: hundreds of thousands of words of
edited English prose that ship with every Python install, need no network and contain almost no
clinical vocabulary. Clinical notes ("Pt is a 67 yo M w/ hx of CHF ...") are therefore clearly
out of domain for this model, which is exactly the gap the demo measures.

The model is a `LlamaForCausalLM` (hidden 64, 2 layers) with its own byte-level BPE tokenizer
(2048 tokens) that follows LLaMA's conventions (`<unk>`=0, `<s>`=1, `</s>`=2, BOS added, no EOS).
It is saved in the standard Hugging Face layout, safetensors only, so clinpeft loads it through
`AutoModelForCausalLM.from_pretrained(dir)` / `AutoTokenizer.from_pretrained(dir)`: the same code
path a real local LLaMA-7B takes.

Building it (text extraction, tokenizer, 400 training steps, save) takes well under a minute on
two idle CPU cores. The result is cached under `$CLINPEFT_HOME` (default `~/.cache/clinpeft`) in a
directory named after `DEMO_BASE_VERSION`; bump the version whenever the recipe changes.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import sysconfig
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from clinpeft.errors import ClinpeftError
from clinpeft.home import clinpeft_home  # noqa: F401  (re-exported: demo.bert and older callers import it here)

if TYPE_CHECKING:  # heavy imports are deferred to the functions that need them
    from transformers import LlamaConfig, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

DEMO_BASE_VERSION = "v1"  # bump when the recipe changes, so caches rebuild

# --- the recipe ------------------------------------------------------------------------------
# Special tokens in LLaMA's order, so ids 0-2 mean what they mean for LLaMA; <pad> is ours.
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)  # ids 0, 1, 2, 3

# Vocabulary of the demo tokenizer. Smaller than LLaMA's 32000 (and than train_tokenizer's default)
# because in a hidden-64 model the output layer (vocab x 64) is most of the compute: measured on 2
# cores, 2048 learns the most per second of text (4096: ~2x slower per token for ~14% fewer tokens).
DEMO_VOCAB_SIZE = 2048
MAX_POSITIONS = 1024  # tokens
# 256-token training blocks: held-out perplexity then stays flat out to 512 positions (the paper's
# max length), so the demo's perplexities measure the domain gap, not length extrapolation.
BLOCK_SIZE = 256  # tokens per training sequence
BATCH_SIZE = 8  # sequences per optimizer step (2,048 tokens)
TRAIN_STEPS = 400  # optimizer steps: ~820k tokens, ~2.3 epochs; ~30 s on 2 cores
LEARNING_RATE = 5e-3  # peak; tiny models need a high rate to learn in few steps (1e-2 was worse)
WARMUP_STEPS = 20  # linear warmup, then cosine decay to MIN_LR_RATIO * peak
MIN_LR_RATIO = 0.1
WEIGHT_DECAY = 0.01
GRAD_CLIP = 1.0  # max global gradient norm
HELDOUT_EVERY = 20  # every 20th document (5%) is held out to measure general-text perplexity

# Directories of the standard library that are not prose or are large test suites.
_SKIP_DIRS = frozenset(
    {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
     "site-packages", "dist-packages", "__pycache__"}
)
_MIN_DOC_CHARS = 40  # shorter paragraphs are mostly headings ("Parameters", "Returns:")
_MIN_LETTER_FRACTION = 0.6  # below this a paragraph is mostly code, tables or punctuation
_RULE_LINE = re.compile(r"^\s*([-=~^*#+`:.]\s*){3,}$")  # reST underlines / table rules

# Files that make up a complete build; demo_base.json is written last, so its presence in the
# final directory (which only ever appears by an atomic rename) means the build finished.
_MODEL_FILES = ("config.json", "model.safetensors")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_RECIPE_FILE = "demo_base.json"
_REQUIRED_FILES = (*_MODEL_FILES, *_TOKENIZER_FILES, _RECIPE_FILE)
_OWN_FILES = frozenset({*_REQUIRED_FILES, "generation_config.json", "special_tokens_map.json"})

# A few lines in the style of clinical notes: the out-of-domain probe recorded in demo_base.json.
_CLINICAL_PROBE = (
    "Pt is a 67 yo M w/ hx of CHF, HTN, DM2 p/w SOB. CXR: bilateral pleural effusions. "
    "BP 128/76 HR 88.",
    "Pt c/o CP radiating to L arm x2d. EKG: ST elevation in II, III, aVF. Trop 2.3. "
    "Taken to cath lab, DES to RCA.",
    "A&O x3, NAD. Lungs CTAB. Abd soft, NT/ND. Ext: 2+ pitting edema b/l LE. "
    "Plan: diuresis w/ IV lasix 40mg BID, f/u BMP in AM.",
    "___ y/o F s/p MVC, GCS 14 on arrival. CT head neg. Admitted to TSICU for obs, "
    "NPO, serial neuro checks q1h.",
)


# --- locations -------------------------------------------------------------------------------
def demo_base_dir() -> Path:
    """clinpeft_home() / f"demo-base-{DEMO_BASE_VERSION}"."""
    return clinpeft_home() / f"demo-base-{DEMO_BASE_VERSION}"


# --- text ------------------------------------------------------------------------------------
def _stdlib_source_files() -> list[Path]:
    """The standard library's .py files, minus tests and GUI demos, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so os.walk does not descend; sort so the walk order is fixed.
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(tree: ast.Module) -> list[str]:
    """Docstrings of the module, its classes and functions (nested ones too), in source order.

    Walks statement bodies only (not expressions), which is several times faster than ast.walk.
    """
    out = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, (ast.If, ast.Try, ast.ExceptHandler, ast.With)):
            doc = ast.get_docstring(node)
            if doc:
                out.append(doc)
        children = []
        for field in ("body", "orelse", "finalbody", "handlers"):
            for child in getattr(node, field, ()):
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    children.append(child)
                elif isinstance(child, (ast.If, ast.Try, ast.ExceptHandler, ast.With)):
                    children.append(child)  # defs under `if`/`try` blocks are common in stdlib
        stack.extend(reversed(children))
    return out


def _clean_paragraph(paragraph: str) -> str:
    """One paragraph of a docstring as a single line of prose, or "" if it is not prose."""
    lines = []
    for line in paragraph.splitlines():
        if line.lstrip().startswith(">>>"):
            break  # a doctest example runs to the end of the paragraph (doctest's own rule)
        if _RULE_LINE.match(line):
            continue
        lines.append(line)
    text = " ".join(" ".join(lines).split())  # collapse all whitespace runs to one space
    if len(text) < _MIN_DOC_CHARS:
        return ""
    letters = sum(c.isalpha() or c == " " for c in text)
    return text if letters / len(text) >= _MIN_LETTER_FRACTION else ""


def general_english_documents(max_chars: int | None = None) -> list[str]:
    """The general-English training text (stdlib docstrings), deterministic order.

    Each document is one paragraph of one docstring of the Python standard library (parsed with
    `ast`, never imported), cleaned: doctest examples dropped, reST rules dropped, whitespace
    collapsed, code-like and very short paragraphs skipped, exact duplicates kept once. Files are
    read in sorted path order, so the list is the same on every call for a given Python version.
    `max_chars` stops once the documents returned hold that many characters in total.
    """
    documents: list[str] = []
    seen: set[str] = set()
    total = 0
    for path in _stdlib_source_files():
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # e.g. a deliberately broken file shipped for a tool's own tests
        for docstring in _docstrings(tree):
            for paragraph in re.split(r"\n\s*\n", docstring):
                text = _clean_paragraph(paragraph)
                if not text or text in seen:
                    continue
                if max_chars is not None and total + len(text) > max_chars:
                    return documents
                seen.add(text)
                documents.append(text)
                total += len(text)
    return documents


# --- tokenizer -------------------------------------------------------------------------------
def train_tokenizer(documents: list[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained offline. Special tokens: <unk> (id 0), <s> (bos, id 1), </s> (eos, id 2), <pad> (id 3).

    Adds BOS at the start of every encoded text and no EOS (LLaMA's convention: add_bos_token=True,
    add_eos_token=False); pad_token set; model_max_length set to the model's max positions.
    Byte-level means any text (clinical abbreviations, `___` de-identification marks, non-ASCII)
    encodes without <unk> and decodes back exactly. Digits are split one per token, as in LLaMA,
    so numbers (doses, vitals) get a consistent representation. Deterministic for given documents.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),  # take ids 0..3 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no <unk> ever
        show_progress=False,
    )
    backend.train_from_iterator(documents, trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=MAX_POSITIONS,
        padding_side="right",
        clean_up_tokenization_spaces=False,  # keep "BP 128/76 ." exactly as written
    )


# --- model -----------------------------------------------------------------------------------
def tiny_llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    """hidden_size 64, 2 layers, 4 attention heads (num_key_value_heads 4), intermediate 176,
    max_position_embeddings 1024, bos/eos/pad ids matching the tokenizer, tie_word_embeddings
    False, default rope. `overrides` replace any of these (e.g. `num_hidden_layers=1`)."""
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,  # head dim 16
        num_key_value_heads=4,  # no grouped-query attention, as in LLaMA-7B
        intermediate_size=176,  # ~2.75 x hidden, LLaMA-7B's ratio (11008 / 4096 = 2.69)
        max_position_embeddings=MAX_POSITIONS,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        tie_word_embeddings=False,  # LLaMA keeps lm_head separate from the input embeddings
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _split_heldout(documents: list[str]) -> tuple[list[str], list[str]]:
    """(train, held-out): every HELDOUT_EVERY-th document is held out."""
    train = [d for i, d in enumerate(documents) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [d for i, d in enumerate(documents) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return train, heldout


def _pack_blocks(tokenizer: PreTrainedTokenizerFast, documents: list[str], block_size: int):
    """Token ids of all documents as `<s> doc </s> <s> doc </s> ...`, cut into full blocks.

    Returns a LongTensor of shape (n_blocks, block_size) and the total number of tokens.
    """
    import torch

    ids: list[int] = []
    for encoded in tokenizer(documents, add_special_tokens=True)["input_ids"]:
        ids.extend(encoded)  # starts with <s>
        ids.append(tokenizer.eos_token_id)
    n_blocks = len(ids) // block_size
    blocks = torch.tensor(ids[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)
    return blocks, len(ids)


def _perplexity(model, tokenizer, texts: list[str], batch_size: int = 32) -> float:
    """Perplexity = exp(total NLL / number of predicted tokens) over `texts`, each text scored on
    its own from `<s>` (token-weighted over all texts, not a mean of per-text perplexities)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total_nll, total_tokens = 0.0, 0
    # Sort by length so each batch pads little; the result does not depend on the order.
    order = sorted(texts, key=len)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = tokenizer(
                order[start : start + batch_size], return_tensors="pt", padding=True,
                truncation=True, max_length=tokenizer.model_max_length,
            )
            logits = model(**batch, use_cache=False).logits[:, :-1].float()
            targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
            total_nll += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                ignore_index=-100, reduction="sum",
            ).item()
            total_tokens += int((targets != -100).sum())
    return math.exp(total_nll / max(total_tokens, 1))


def _train(model, blocks, *, seed: int, steps: int, progress: bool) -> list[float]:
    """Plain AdamW loop over random batches of `blocks`; returns the loss of every step."""
    import torch
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY
    )

    def lr_factor(step: int) -> float:
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        progress_frac = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
        return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress_frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    # Epochs of shuffled blocks, concatenated: every block is seen once before any repeats.
    n_epochs = math.ceil(steps * BATCH_SIZE / len(blocks))
    order = torch.cat([torch.randperm(len(blocks), generator=generator) for _ in range(n_epochs)])

    model.train()
    losses = []
    bar = tqdm(range(steps), desc="demo base: training", unit="step", disable=not progress)
    for step in bar:
        batch = blocks[order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]]
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    return losses


@contextlib.contextmanager
def transformers_progress_bars(enabled: bool):
    """Turn transformers' own tqdm bars (e.g. "Writing model shards") off while `enabled` is False."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _build(out_dir: Path, *, seed: int, progress: bool) -> dict:
    """Build the demo base model + tokenizer into `out_dir` (which must exist); return the recipe."""
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    t0 = time.perf_counter()
    documents = general_english_documents()
    train_docs, heldout_docs = _split_heldout(documents)
    t_text = time.perf_counter()

    tokenizer = train_tokenizer(train_docs, vocab_size=DEMO_VOCAB_SIZE)
    blocks, n_train_tokens = _pack_blocks(tokenizer, train_docs, BLOCK_SIZE)
    t_tok = time.perf_counter()

    torch.manual_seed(seed)
    config = tiny_llama_config(len(tokenizer))
    model = LlamaForCausalLM(config)
    losses = _train(model, blocks, seed=seed, steps=TRAIN_STEPS, progress=progress)
    t_train = time.perf_counter()

    general_ppl = _perplexity(model, tokenizer, heldout_docs)
    clinical_ppl = _perplexity(model, tokenizer, list(_CLINICAL_PROBE))

    with transformers_progress_bars(progress):
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    t_end = time.perf_counter()

    n_params = sum(p.numel() for p in model.parameters())
    recipe = {
        "version": DEMO_BASE_VERSION,
        "purpose": "tiny general-English LLaMA standing in for LLaMA-7B in `clinpeft demo`",
        "text_source": "docstrings of the Python standard library (ast.get_docstring), one "
                       "paragraph per document",
        "python_version": platform.python_version(),
        "n_documents": len(documents),
        "n_train_documents": len(train_docs),
        "n_heldout_documents": len(heldout_docs),
        "n_train_chars": sum(map(len, train_docs)),
        "n_train_tokens": n_train_tokens,
        "vocab_size": len(tokenizer),
        "n_parameters": n_params,
        "block_size": BLOCK_SIZE,
        "batch_size": BATCH_SIZE,
        "steps": TRAIN_STEPS,
        "tokens_seen": TRAIN_STEPS * BATCH_SIZE * BLOCK_SIZE,
        "learning_rate": LEARNING_RATE,
        "schedule": f"linear warmup {WARMUP_STEPS} steps, cosine to {MIN_LR_RATIO} x peak",
        "seed": seed,
        "final_train_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),  # mean of last 20
        "heldout_general_perplexity": round(general_ppl, 3),
        "clinical_probe_perplexity": round(clinical_ppl, 3),
        "wall_time_s": {
            "text": round(t_text - t0, 2),
            "tokenizer": round(t_tok - t_text, 2),
            "train": round(t_train - t_tok, 2),
            "eval_and_save": round(t_end - t_train, 2),
            "total": round(t_end - t0, 2),
        },
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    # Written last: a directory with this file in it is a finished build.
    (out_dir / _RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return recipe


def _is_complete(path: Path) -> bool:
    """A finished build of the current recipe version lives at `path`."""
    if not all((path / name).is_file() for name in _REQUIRED_FILES):
        return False
    try:
        recipe = json.loads((path / _RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recipe.get("version") == DEMO_BASE_VERSION


def _is_ours(path: Path) -> bool:
    """`path` holds only what a (possibly partial or old) demo-base build writes, so replacing
    it destroys nothing of the user's. A user's real model directory is never replaced."""
    if (path / _RECIPE_FILE).is_file():
        return True
    return all(child.name in _OWN_FILES for child in path.iterdir())


def build_into_place(target: Path, build: Callable[[Path], dict], is_complete: Callable[[Path], bool]) -> dict:
    """Run `build(tmp)` in a hidden temporary sibling of `target`, then rename it into place, so an
    interrupted build never leaves a half-written model. Returns what `build` returned.

    Same parent, so the rename is atomic (one filesystem). If another process finished a build of
    `target` first (`is_complete(target)`), its build is kept and ours dropped. An existing
    incomplete or outdated `target` (the caller checked it holds nothing of the user's) is moved
    aside and deleted. The build seeds torch for itself; the caller's torch RNG state is restored
    afterwards, so a run that builds the demo model on first use draws the same numbers as one
    that finds it cached.
    """
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with torch.random.fork_rng(devices=[]):  # CPU generator; the builds run on CPU
            result = build(tmp)
        if not is_complete(target):
            if target.exists():
                trash = tmp.with_name(tmp.name + "-old")
                target.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            try:
                tmp.rename(target)
            except OSError:  # a concurrent build renamed its own into place first
                if not is_complete(target):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return result


def ensure_demo_base(path: str | Path | None = None, *, seed: int = 0, progress: bool = True) -> Path:
    """Return a directory holding the demo base model + tokenizer, building it first if missing
    (or incomplete). Builds into a temporary sibling dir and renames it into place when complete,
    so an interrupted build never leaves a half-written model. Loadable with
    AutoModelForCausalLM.from_pretrained(dir) and AutoTokenizer.from_pretrained(dir) — the same
    code path a real local LLaMA-7B takes. Also writes dir/demo_base.json with the recipe
    (text source, n documents, n tokens, steps, wall time, held-out perplexity on general text).

    `path` defaults to `demo_base_dir()`. An existing directory is rebuilt only if it is
    incomplete or from another recipe version *and* holds nothing but demo-base files; anything
    else raises ClinpeftError rather than deleting it.
    """
    target = Path(path).expanduser() if path is not None else demo_base_dir()
    if _is_complete(target):
        return target
    if target.exists() and not (target.is_dir() and _is_ours(target)):
        raise ClinpeftError(
            f"{target}: exists and is not a clinpeft demo base model; "
            "remove it or choose another path for the demo base"
        )

    if progress:
        print(f"Building the demo base model (once) in {target} ...", file=sys.stderr)
    recipe = build_into_place(target, lambda tmp: _build(tmp, seed=seed, progress=progress), _is_complete)

    logger.info(
        "demo base model built in %s (%.0f s, held-out perplexity %.1f)",
        target, recipe["wall_time_s"]["total"], recipe["heldout_general_perplexity"],
    )
    if progress:
        wall = recipe["wall_time_s"]["total"]
        print(
            f"Demo base model ready: {recipe['n_documents']} documents, "
            f"{recipe['n_train_tokens']} training tokens, {recipe['steps']} steps, {wall:.0f} s; "
            f"held-out general-text perplexity {recipe['heldout_general_perplexity']:.1f}, "
            f"clinical-note perplexity {recipe['clinical_probe_perplexity']:.1f}",
            file=sys.stderr,
        )
    return target
