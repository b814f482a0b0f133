"""Step 1, domain-adaptive pretraining: train a clinical adapter on notes (paper Table 2).

    clinpeft pretrain configs/demo/pretrain_lora.yaml --out runs/pretrain-lora
    accelerate launch -m clinpeft pretrain configs/llama-7b/pretrain_lora.yaml --out runs/llama-lora

setup (base model, corpus split by patient, packed blocks) -> base perplexity -> add adapter
-> fit (HF Trainer: one device, or DDP/FSDP under torchrun / `accelerate launch`) -> perplexity ->
save the adapter (PEFT layout) and run.json.

`peft.method`: lora | prefix_tuning | prompt_tuning | p_tuning | adaption_prompt (an adapter on the
frozen base model) or full (every weight trains: the paper's Clinical LLaMA). Prefix, prompt and
p-tuning cannot keep packed notes apart, so they train on one note per row (the run says so in
its log and in run.json: "packing": false, "packing_fallback": why).

Output directory:
    adapter/            adapter_config.json, adapter_model.safetensors, clinpeft_adapter.json
    model/              instead of adapter/ for full: the whole model (safetensors) + tokenizer
    config.yaml         the resolved config
    run.json            parameters, perplexities, time, throughput (read by `clinpeft report`)
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from clinpeft.bases import resolve_base
from clinpeft.config import PretrainConfig, save_config
from clinpeft.data.notes import cache_file, load_corpus
from clinpeft.data.packing import count_predicted_tokens, packing_mode, slot_share, tokenize_and_pack
from clinpeft.methods import lora_flavours
from clinpeft.modeling import lora_init
from clinpeft.modeling.adapters import add_pretraining_adapter, packing_fallback, write_adapter_meta
from clinpeft.modeling.base import (
    base_display_name,
    base_fingerprint,
    base_record,
    check_base,
    check_positions,
    check_quantization,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
)
from clinpeft.run_files import RUN_RECORD
from clinpeft.rundir import atomic_run_dir, check_free_space, checkpoint_dir, expected_run_bytes, write_json
from clinpeft.training.checkpointing import Checkpointing
from clinpeft.training.fit import Fitted, fit, run_record
from clinpeft.training.perplexity import split_perplexity
from clinpeft.training.precision import Precision, check_precision, run_precision, upcast_trainable
from clinpeft.training.runtime import WARMUP_STEPS, StepClock, set_threads
from clinpeft.training.trainer import (
    ShardedTrainer,
    check_kernels,
    check_sharding,
    silence_trainer,
    training_arguments,
)

log = logging.getLogger(__name__)


def main(config: PretrainConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
         restart: bool = False) -> dict:
    """Run one pretraining job into `out` (created whole, or not at all). Returns run.json.

    Unfinished, it lives in `OUT.partial/` with its checkpoints; the same call resumes it (`restart`: discard it)."""
    # before any work: fp16 on a CPU, flash attention on fp32 weights
    check_precision(config.train.precision, config.model.dtype, config.model.attn_implementation)
    check_base(config.model.base)  # before any work: the folder, or the GGUF file's header
    check_quantization(config.model.quantization)  # before any work: 4bit/8bit need a GPU and bitsandbytes
    check_kernels(config.train)  # train.compile: a C++ compiler on a CPU; train.fused_loss: a GPU, liger-kernel
    check_sharding(config.train, config.peft.method, config.model.quantization)  # train.fsdp: processes, method
    with atomic_run_dir(out, overwrite, resumable=True, config=config.model_dump(mode="json"),
                        restart=restart) as run_dir:
        save_config(config, run_dir)
        return run(config, run_dir, progress, checkpoints=checkpoint_dir(out))


def summary(result: dict, out: str | Path) -> list[str]:
    """What `clinpeft pretrain` prints: trainable parameters and perplexities (the base model's, if measured)."""
    return [f"{out}: {result['trainable_params']:,} trainable params ({result['trainable_percent']:.4f}%), "
            f"train ppl {result['train_ppl']:.3f}, test ppl {result['test_ppl']:.3f}"
            + (f" (base model {result['base_test_ppl']:.3f})" if result.get("base_test_ppl") else "")
            + (f", val ppl {result['val_ppl']:.3f}" if result.get("val_ppl") is not None else "")]


def tokenize_corpus(splits, tokenizer, config: PretrainConfig, progress: bool = True, packing: str | bool | None = None,
                    cache_dir: Path | None = None):
    """Notes -> blocks of `max_seq_len` tokens in layout `packing` (see clinpeft.data.packing).

    Returns (blocks, segment_starts_added): the DatasetDict and, per split, the segment starts that
    `fill` added by cutting notes at block boundaries (0 for the other layouts).

    cache_dir: where the blocks' Arrow files go (default: datasets' choice, next to the notes' files;
    pass the run's cache so a prepared corpus directory is never written into).

    packing=none (or False): one note segment per row, right-padded. Those rows carry no
    position_ids: every row starts at position 0 anyway, real tokens never attend to the padding
    after them (causal), padding has label -100, and peft's prompt methods refuse position ids.
    """
    data = config.data
    mode = packing_mode(data.packing if packing is None else packing)
    blocks = splits.map(
        tokenize_and_pack,
        batched=True,
        batch_size=1000,  # notes per packing window: at most one part-filled block per window
        remove_columns=splits["train"].column_names,
        num_proc=data.num_proc if data.num_proc > 1 else None,
        fn_kwargs=dict(tokenizer=tokenizer, text_column="text", block_size=data.max_seq_len, packing=mode),
        desc=f"tokenise + pack ({mode})" if mode != "none" else "tokenise (one note per row)",
        **({"cache_file_names": {name: cache_file(cache_dir, f"blocks-{name}")["cache_file_name"] for name in splits},
            "load_from_cache_file": False} if cache_dir is not None else {}),
    )
    added = {name: 0 for name in blocks}
    if "segment_starts_added" in blocks["train"].column_names:
        import pyarrow.compute as pc

        added = {name: int(pc.sum(split.data.column("segment_starts_added")).as_py() or 0)
                 for name, split in blocks.items()}
        blocks = blocks.remove_columns("segment_starts_added")
    return (blocks if mode != "none" else blocks.remove_columns("position_ids")), added


def sample_blocks(blocks, max_blocks: int | None, seed: int):
    """A seeded sample of blocks for train perplexity (the whole split when small)."""
    if max_blocks is None or len(blocks) <= max_blocks:
        return blocks
    return blocks.shuffle(seed=seed).select(range(max_blocks))


def save_clinical(model, method: str, run_dir: Path, base_path: Path, fingerprint: str,
                  initial_adapter: Path | None = None, base_spec: str | None = None) -> Path:
    """adapter/ in PEFT layout, or for `full` model/ (safetensors + tokenizer), with its metadata.

    initial_adapter: the untrained adapter of a base-mutating init (pissa, olora, lora_ga): peft saves the trained
    one converted to a plain LoRA of rank 2r on the unchanged base (modeling/lora_init.py). base_spec: model.base
    as written (a GGUF base is rebuilt from it where its cached folder is gone)."""
    model.eval()  # peft saves p-tuning's encoder *output*: computed without dropout
    if method == "full":
        out_dir = run_dir / "model"
        model.save_pretrained(out_dir, safe_serialization=True)
        load_tokenizer(base_path).save_pretrained(out_dir)  # as loaded, not the packing-time copy
    else:
        out_dir = run_dir / "adapter"
        with lora_init.base_mutation_handled():
            model.save_pretrained(out_dir, safe_serialization=True, path_initial_model_for_weight_conversion=(
                str(initial_adapter) if initial_adapter is not None else None))
        if initial_adapter is not None:
            shutil.rmtree(initial_adapter.parent, ignore_errors=True)
    write_adapter_meta(out_dir, fingerprint, str(base_path), method, base_spec)
    return out_dir


@dataclass
class Corpus:
    """The corpus as the run trains and measures on it: notes split by patient, cut into blocks."""

    splits: object  # DatasetDict of notes: train, test (val with data.val_fraction > 0)
    info: dict  # run.json's data provenance (files, hashes, patients)
    blocks: object  # DatasetDict of blocks of data.max_seq_len tokens (one note per row without packing)
    starts_added: dict  # per split: segment starts fill's cuts added (see tokenize_corpus)
    mode: str  # the packing layout used: fill | ffd | next_fit | none
    fallback: str | None  # why this method could not pack (None: it packed, or packing was off)
    ppl_train: object  # the seeded sample of train blocks that train perplexity reads
    train_tokens: int  # labelled (predicted) tokens in the train blocks

    @property
    def val(self):
        return self.blocks["val"] if "val" in self.blocks else None  # carved from train patients


def run(config: PretrainConfig, run_dir: Path, progress: bool = True, checkpoints: Path | None = None) -> dict:
    """checkpoints: the Trainer's checkpoint folder (default run_dir/checkpoints); its newest complete
    checkpoint is resumed from."""
    from transformers import set_seed

    started = time.time()
    set_seed(config.train.seed)
    threads = set_threads(config.train.threads)  # this process's share of the CPU cores
    base_path = resolve_base(config.model.base, progress=progress)
    check_positions(base_path, config.data.max_seq_len, "data.max_seq_len")
    tokenizer = load_tokenizer(base_path)
    tokenizer.model_max_length = 2**62  # notes are cut into blocks by packing, not by the tokenizer

    corpus = load_blocks(config, tokenizer, run_dir / ".cache", progress)
    precision = run_precision(config.train.precision, config.model.dtype, base_path)  # once, for the whole run
    model = load_causal_lm(base_path, precision.weights, config.model.attn_implementation, config.model.quantization)
    fingerprint = base_fingerprint(model)
    if progress:
        names = ["train", "test"] + (["val"] if corpus.val is not None else [])
        print(f"corpus: {' / '.join(str(len(corpus.splits[n])) for n in names)} {' / '.join(names)} notes "
              f"-> {' / '.join(str(len(corpus.blocks[n])) for n in names)} blocks of {config.data.max_seq_len} tokens")
    base_ppl = base_perplexity(model, corpus, config, precision, progress)  # the row adaptation must beat
    model, initial_adapter = add_adapter(model, config, corpus, base_path, run_dir)
    params = count_parameters(model)
    check_free_space(run_dir, expected_run_bytes(*params, config.train, config.peft.method == "full"), "this run")

    clock = StepClock(warmup_steps=WARMUP_STEPS)
    fitted = train(model, config, corpus, precision, clock, checkpoints or run_dir / "checkpoints", run_dir,
                   progress)
    measured = {**throughput(fitted, config, corpus, clock),
                **perplexities(fitted.model, corpus, config, precision, progress)}

    save_clinical(fitted.model, config.peft.method, run_dir, base_path, fingerprint, initial_adapter,
                  config.model.base)
    shutil.rmtree(run_dir / ".cache", ignore_errors=True)
    result = {**record(config, corpus, base_path, fingerprint), **measured, **base_ppl, **corpus.info,
              **run_record(fitted, config.train, precision, threads, params, started, config.model.attn_implementation),
              "model_dtype": str(next(fitted.model.parameters()).dtype).removeprefix("torch.")}
    write_json(run_dir / RUN_RECORD, result)
    return result


def load_blocks(config: PretrainConfig, tokenizer, cache_dir: Path, progress: bool) -> Corpus:
    """Data: the corpus split by patient, cut into blocks in the layout this method can train on (prefix, prompt
    and p-tuning cannot keep packed notes apart: one note per row, said in the log). cache_dir: the notes' and
    blocks' Arrow files, inside the run (deleted at the end)."""
    splits, data_info = load_corpus(config.data, cache_dir)
    method = config.peft.method
    fallback = packing_fallback(method) if config.data.packing != "none" else None
    if fallback:
        log.warning("peft.method=%s trains on one note per row, not packed blocks: %s", method, fallback)
    mode = "none" if fallback else config.data.packing
    blocks, starts_added = tokenize_corpus(splits, tokenizer, config, progress, packing=mode, cache_dir=cache_dir)
    ppl_train = sample_blocks(blocks["train"], config.eval.train_max_blocks, config.data.split_seed)
    return Corpus(splits, data_info, blocks, starts_added, mode, fallback, ppl_train,
                  count_predicted_tokens(blocks["train"]))


def base_perplexity(model, corpus: Corpus, config: PretrainConfig, precision: Precision, progress: bool) -> dict:
    """The base model's perplexity on the same blocks (eval.base_model; None otherwise)."""
    if not config.eval.base_model:
        return {"base_train_ppl": None, "base_test_ppl": None}
    batch_size = config.eval.batch_size
    return {"base_train_ppl": split_perplexity(model, corpus.ppl_train, batch_size, "base ppl (train)", progress,
                                               precision.train),
            "base_test_ppl": split_perplexity(model, corpus.blocks["test"], batch_size, "base ppl (test)", progress,
                                              precision.train)}


def add_adapter(model, config: PretrainConfig, corpus: Corpus, base_path: Path, run_dir: Path):
    """Model: the clinical adapter, the only trainable weights (full: every weight), in fp32 on a half-precision
    base. A data-driven init_lora_weights (eva, corda, lora_ga) reads a capped, seeded sample of the training
    blocks; a base-mutating one (pissa, olora, lora_ga) keeps its untrained adapter for the conversion at save.
    Returns (model, the untrained adapter's folder or None)."""
    from transformers import default_data_collator

    init = lora_init.init_entry(config.peft) if config.peft.method == "lora" else None
    init_batches = (lora_init.calibration_batches(corpus.blocks["train"], config.train.seed, default_data_collator)
                    if init is not None and init.needs_data else None)
    model = add_pretraining_adapter(model, config.peft, tokenizer_path=base_path, init_batches=init_batches)
    initial_adapter = (lora_init.save_initial_adapter(model, "default", run_dir / lora_init.INITIAL_ADAPTER)
                       if init is not None else None)
    upcast_trainable(model)  # bf16 base: adapter weights and optimizer state stay fp32
    return model, initial_adapter


def train(model, config: PretrainConfig, corpus: Corpus, precision: Precision, clock: StepClock, checkpoints: Path,
          run_dir: Path, progress: bool) -> Fitted:
    """Fit: the HF Trainer on the train blocks (one device, or DDP/FSDP under torchrun / accelerate launch),
    from the last checkpoint of an interrupted run if any."""
    from transformers import default_data_collator

    checkpointing = Checkpointing(config.train)
    trainer = silence_trainer(ShardedTrainer(
        model=model,
        args=training_arguments(config.train, checkpoints, progress, precision.train),
        train_dataset=corpus.blocks["train"],
        data_collator=default_data_collator,  # rows are fixed-size; no attention_mask on purpose (see packing)
        callbacks=[checkpointing, clock.callback()],
    ), progress)
    return fit(trainer, checkpointing, model, checkpoints, run_dir, progress)


def throughput(fitted: Fitted, config: PretrainConfig, corpus: Corpus, clock: StepClock) -> dict:
    """Measure: block tokens (padding included) per second over all devices in this process's share of the steps,
    and labelled tokens per second after the warm-up steps (their blocks carry the split's mean labelled share)."""
    section, blocks = config.train, corpus.blocks["train"]
    blocks_per_step = section.batch_size * section.grad_accum * fitted.trainer.args.world_size
    blocks_seen = min((fitted.steps - fitted.resumed_from) * blocks_per_step,
                      int(len(blocks) * section.epochs) if section.max_steps <= 0 else float("inf"))
    tokens_seen = blocks_seen * config.data.max_seq_len
    useful_per_s = clock.rate(blocks_per_step * corpus.train_tokens / max(len(blocks), 1))
    log.info("trained %d optimizer steps in %.1f s: %.0f block tokens/s, %.0f labelled tokens/s (after %d warm-up "
             "steps)", fitted.steps, fitted.train_time, tokens_seen / max(fitted.train_time, 1e-9),
             useful_per_s or float("nan"), clock.warmup_steps)
    return {"tokens_per_s": tokens_seen / fitted.train_time if fitted.train_time > 0 else None,  # warm-up in
            "useful_tokens_per_s": useful_per_s,  # labelled tokens/s, the first `useful_warmup_steps` steps excluded
            "useful_warmup_steps": clock.warmup_steps}


def perplexities(model, corpus: Corpus, config: PretrainConfig, precision: Precision, progress: bool) -> dict:
    """Measure: token-weighted perplexity of the trained model on each split (val: the split a sweep may select on,
    so the test perplexity stays untouched by model selection; None without data.val_fraction)."""
    batch_size = config.eval.batch_size
    return {
        "train_ppl": split_perplexity(model, corpus.ppl_train, batch_size, "ppl (train)", progress, precision.train),
        "test_ppl": split_perplexity(model, corpus.blocks["test"], batch_size, "ppl (test)", progress,
                                     precision.train),
        "val_ppl": (None if corpus.val is None
                    else split_perplexity(model, corpus.val, batch_size, "ppl (val)", progress, precision.train)),
    }


def record(config: PretrainConfig, corpus: Corpus, base_path: Path, fingerprint: str) -> dict:
    """run.json's description of the run: method, base model, blocks and packing."""
    method, blocks, train_tokens = config.peft.method, corpus.blocks, corpus.train_tokens
    return {
        "kind": "pretrain",
        "method": method,
        "lora_flavours": lora_flavours(config.peft) if method == "lora" else [],  # e.g. ["use_dora"]: Table 2 says DoRA
        # peft's init_lora_weights (True: its default); Table 2 says e.g. "LoRA (PiSSA)"
        "init_lora_weights": config.peft.init_lora_weights if method == "lora" else None,
        "base_model": str(base_path),
        "base_model_name": config.model.name or base_display_name(base_path),
        "base_fingerprint": fingerprint,
        **base_record(config.model.base, base_path),  # base_spec, and base_source for a GGUF base
        "train_blocks": len(blocks["train"]),
        "test_blocks": len(blocks["test"]),
        "val_blocks": len(corpus.val) if corpus.val is not None else None,
        "train_tokens": train_tokens,
        "test_tokens": count_predicted_tokens(blocks["test"]),
        "packing": corpus.mode != "none",
        "packing_mode": corpus.mode,  # fill | ffd | next_fit | none (data.packing, or none for a fallback)
        "packing_fallback": corpus.fallback,  # why this method could not pack (None: it packed, or packing was off)
        "packing_efficiency": slot_share(train_tokens, len(blocks["train"]), config.data.max_seq_len),  # labelled/slots
        "segment_starts_added": corpus.starts_added,  # per split: unpredicted continuation starts made by fill's cuts
    }
