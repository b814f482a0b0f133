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
from pathlib import Path

from clinpeft import __version__
from clinpeft.config import PretrainConfig, save_config
from clinpeft.data.notes import cache_file, load_corpus
from clinpeft.data.packing import count_predicted_tokens, packing_mode, slot_share, tokenize_and_pack
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
    device_summary,
    load_causal_lm,
    load_tokenizer,
    resolve_base,
)
from clinpeft.modeling.methods import lora_flavours
from clinpeft.rundir import atomic_run_dir, check_free_space, checkpoint_dir, expected_run_bytes, write_json
from clinpeft.training.checkpointing import Checkpointing, resume_point
from clinpeft.training.perplexity import split_perplexity
from clinpeft.training.precision import check_precision, end_mixed_precision, run_precision, upcast_trainable
from clinpeft.training.runtime import WARMUP_STEPS, StepClock, loss_curve, set_threads
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


def run(config: PretrainConfig, run_dir: Path, progress: bool = True, checkpoints: Path | None = None) -> dict:
    """checkpoints: the Trainer's checkpoint folder (default run_dir/checkpoints); its newest complete
    checkpoint is resumed from."""
    from transformers import default_data_collator, set_seed

    started = time.time()
    set_seed(config.train.seed)
    threads = set_threads(config.train.threads)  # this process's share of the CPU cores

    # --- setup: base model, corpus, blocks
    base_path = resolve_base(config.model.base, progress=progress)
    check_positions(base_path, config.data.max_seq_len, "data.max_seq_len")
    tokenizer = load_tokenizer(base_path)
    tokenizer.model_max_length = 2**62  # notes are cut into blocks by packing, not by the tokenizer
    cache_dir = run_dir / ".cache"  # Arrow files of the notes: inside the run, deleted at the end
    splits, data_info = load_corpus(config.data, cache_dir)
    method = config.peft.method
    fallback = packing_fallback(method) if config.data.packing != "none" else None
    if fallback:
        log.warning("peft.method=%s trains on one note per row, not packed blocks: %s", method, fallback)
    mode = "none" if fallback else config.data.packing
    packing = mode != "none"
    blocks, starts_added = tokenize_corpus(splits, tokenizer, config, progress, packing=mode, cache_dir=cache_dir)
    train_blocks, test_blocks = blocks["train"], blocks["test"]
    val_blocks = blocks["val"] if "val" in blocks else None  # data.val_fraction > 0: carved from train patients
    train_tokens = count_predicted_tokens(train_blocks)
    ppl_train_blocks = sample_blocks(train_blocks, config.eval.train_max_blocks, config.data.split_seed)

    precision = run_precision(config.train.precision, config.model.dtype, base_path)
    model = load_causal_lm(base_path, precision.weights, config.model.attn_implementation, config.model.quantization)
    fingerprint = base_fingerprint(model)
    if progress:
        names = ["train", "test"] + (["val"] if val_blocks is not None else [])
        print(f"corpus: {' / '.join(str(len(splits[n])) for n in names)} {' / '.join(names)} notes "
              f"-> {' / '.join(str(len(blocks[n])) for n in names)} blocks of {config.data.max_seq_len} tokens")

    # --- the base model's perplexity on the same blocks: the row that adaptation must beat
    batch_size = config.eval.batch_size
    base_ppl = {"base_train_ppl": None, "base_test_ppl": None}
    if config.eval.base_model:
        base_ppl = {
            "base_train_ppl": split_perplexity(model, ppl_train_blocks, batch_size, "base ppl (train)", progress,
                                               precision.train),
            "base_test_ppl": split_perplexity(model, test_blocks, batch_size, "base ppl (test)", progress,
                                              precision.train),
        }

    # --- the clinical adapter: the only trainable weights (full: every weight); a data-driven init_lora_weights
    # (eva, corda, lora_ga) reads a capped, seeded sample of the training blocks
    init = lora_init.init_entry(config.peft) if method == "lora" else None
    init_batches = (lora_init.calibration_batches(train_blocks, config.train.seed, default_data_collator)
                    if init is not None and init.needs_data else None)
    model = add_pretraining_adapter(model, config.peft, tokenizer_path=base_path, init_batches=init_batches)
    initial_adapter = (lora_init.save_initial_adapter(model, "default", run_dir / lora_init.INITIAL_ADAPTER)
                       if init is not None else None)
    upcast_trainable(model)  # bf16 base: adapter weights and optimizer state stay fp32
    trainable, total = count_parameters(model)
    check_free_space(run_dir, expected_run_bytes(trainable, total, config.train, method == "full"), "this run")

    # --- fit (from the last checkpoint of an interrupted run, if any: same data order, schedule, RNG)
    checkpoints = checkpoints or run_dir / "checkpoints"
    checkpointing = Checkpointing(config.train)
    clock = StepClock(warmup_steps=WARMUP_STEPS)
    trainer = silence_trainer(ShardedTrainer(
        model=model,
        args=training_arguments(config.train, checkpoints, progress, precision.train),
        train_dataset=train_blocks,
        data_collator=default_data_collator,  # rows are fixed-size; no attention_mask on purpose (see packing)
        callbacks=[checkpointing, clock.callback()],
    ), progress)
    resume = resume_point(checkpoints)
    resumed_from = int(Path(resume).name.split("-")[-1]) if resume else 0
    checkpointing.resume = resume
    if resume and progress:
        print(f"resuming from {resume} (optimizer step {resumed_from})")
    fit_started = time.time()
    trainer.train(resume_from_checkpoint=resume)
    end_mixed_precision(trainer)  # scores below in the model's dtype, as evaluate/predict do
    model = trainer.consolidated(model)  # FSDP: the whole trained model on every process (else unchanged)
    train_time = time.time() - fit_started
    checkpointing.raise_if_interrupted(trainer.state, run_dir)
    # block tokens (padding included) per second over all devices, in this process's share of the steps
    steps_here = trainer.state.global_step - resumed_from
    blocks_seen = min(
        steps_here * config.train.batch_size * config.train.grad_accum * trainer.args.world_size,
        int(len(train_blocks) * config.train.epochs) if config.train.max_steps <= 0 else float("inf"),
    )
    tokens_seen = blocks_seen * config.data.max_seq_len
    # labelled tokens per second after the warm-up steps (their blocks carry the split's mean labelled share)
    blocks_per_step = config.train.batch_size * config.train.grad_accum * trainer.args.world_size
    useful_per_s = clock.rate(blocks_per_step * train_tokens / max(len(train_blocks), 1))
    log.info("trained %d optimizer steps in %.1f s: %.0f block tokens/s, %.0f labelled tokens/s (after %d warm-up "
             "steps)", trainer.state.global_step, train_time, tokens_seen / max(train_time, 1e-9),
             useful_per_s or float("nan"), clock.warmup_steps)

    # --- validate: token-weighted perplexity on each split
    train_ppl = split_perplexity(model, ppl_train_blocks, batch_size, "ppl (train)", progress, precision.train)
    test_ppl = split_perplexity(model, test_blocks, batch_size, "ppl (test)", progress, precision.train)
    # the split a sweep may select on, so the test perplexity stays untouched by model selection
    val_ppl = (None if val_blocks is None
               else split_perplexity(model, val_blocks, batch_size, "ppl (val)", progress, precision.train))

    # --- save: adapter in PEFT layout (full: the whole model + tokenizer) + what it was trained on
    save_clinical(model, method, run_dir, base_path, fingerprint, initial_adapter, config.model.base)
    shutil.rmtree(cache_dir, ignore_errors=True)

    result = {
        "kind": "pretrain",
        "method": method,
        "lora_flavours": lora_flavours(config.peft) if method == "lora" else [],  # e.g. ["use_dora"]: Table 2 says DoRA
        # peft's init_lora_weights (True: its default); Table 2 says e.g. "LoRA (PiSSA)"
        "init_lora_weights": config.peft.init_lora_weights if method == "lora" else None,
        "base_model": str(base_path),
        "base_model_name": config.model.name or base_display_name(base_path),
        "base_fingerprint": fingerprint,
        **base_record(config.model.base, base_path),  # base_spec, and base_source for a GGUF base
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "train_ppl": train_ppl,
        "test_ppl": test_ppl,
        "val_ppl": val_ppl,  # None without data.val_fraction
        **base_ppl,
        "train_blocks": len(train_blocks),
        "test_blocks": len(test_blocks),
        "val_blocks": len(val_blocks) if val_blocks is not None else None,
        "train_tokens": train_tokens,
        "test_tokens": count_predicted_tokens(test_blocks),
        "packing": packing,
        "packing_mode": mode,  # fill | ffd | next_fit | none (data.packing, or none for a fallback)
        "packing_fallback": fallback,  # why this method could not pack (None: it packed, or packing was off)
        "packing_efficiency": slot_share(train_tokens, len(train_blocks), config.data.max_seq_len),  # labelled/slots
        "segment_starts_added": starts_added,  # per split: unpredicted continuation starts made by fill's cuts
        "optimizer_steps": trainer.state.global_step,  # in all, counted once across resumptions
        "resumed_from_step": resumed_from,  # 0: trained in one go
        "fsdp": trainer.sharding,  # sharded training: FSDP version, processes, units per layer class (None: not)
        "loss_curve": loss_curve(trainer.state),  # every logged step once (a resumption continues the history)
        "checkpoints_written": checkpointing.saves,  # by this process
        "checkpoint_time_s": checkpointing.save_seconds,
        "train_time_s": train_time,  # this process's share (since the resumption)
        "tokens_per_s": tokens_seen / train_time if train_time > 0 else None,  # block positions, padding and warm-up in
        "useful_tokens_per_s": useful_per_s,  # labelled tokens/s, the first `useful_warmup_steps` steps excluded
        "useful_warmup_steps": clock.warmup_steps,
        "wall_time_s": time.time() - started,
        **data_info,
        "cpu_threads": threads,
        "precision": precision.train,  # train.precision as resolved on this machine (auto -> fp32 or bf16)
        "kernels": {"attn_implementation": config.model.attn_implementation, "compile": config.train.compile,
                    "fused_loss": config.train.fused_loss},
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **device_summary(),
        "clinpeft_version": __version__,
    }
    write_json(run_dir / "run.json", result)
    return result
