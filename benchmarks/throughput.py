"""Training throughput of the paper's layout against clinpeft's packed blocks, side by side.

    python benchmarks/throughput.py                          # defaults: <= 5 min on 2 CPU cores
    python benchmarks/throughput.py --json out.json --md out.md
    python benchmarks/throughput.py --device cuda --hidden 4096 --layers 32 --heads 32 --kv-heads 32 \
        --intermediate 11008 --lora-r 16 --layouts packed --precisions bf16-weights --attn sdpa,flash_attention_2
    python benchmarks/throughput.py --layouts packed,packed-unmasked --attn sdpa,eager --kernels plain,compile
    python benchmarks/throughput.py --base smollm2-135m --block 256 --lora-r 16 --precisions fp32,bf16-autocast

--base (a named base, a Hugging Face folder or a .gguf file): the real pretrained model instead of a
random-init shape, trained on synthetic clinical notes (clinpeft.demo.synthetic, --patients) cut into
tokens by the model's own tokenizer, with its own BOS/EOS/pad; the shape columns come from its config.

One process builds a random-init LLaMA of the given shape with LoRA on q/v (peft), a corpus of note
lengths (the MIMIC-IV-Note-like mix by default: 88% notes of ~300 tokens, 12% of 2,000-3,000;
or `--notes FILE`, one token count per line), lays it out twice and trains (forward, backward,
AdamW step on the adapter) in interleaved rounds, alternating the order, so a machine that slows
down mid-run slows every configuration alike:

- paper: one note per row, truncated to --block tokens, right-padded (attention_mask for the pad);
- packed: clinpeft's data.packing default (`fill`), blocks of --block tokens, notes kept apart by
  position ids (attention_mask=None), as `clinpeft pretrain` trains;
- packed-unmasked (timing reference only, opt in): the same blocks without position ids, so every
  position attends to the whole block before it, notes to each other: no mask at all. Its step time
  against `packed` is what keeping notes apart costs the attention path in use (sdpa and eager build
  a block-diagonal mask; flash_attention_2 passes sequence boundaries, varlen; flex_attention a block
  mask that skips other notes' blocks).

Attention (--attn): sdpa, eager, and on a CUDA GPU flex_attention and flash_attention_2 (flash-attn
installed); an implementation that cannot run here is listed as not measured, with why. Kernels
(--kernels): plain (eager PyTorch), compile (torch.compile of the model, inductor: what
`train.compile` does; with another setting, each setting runs in a process of its own: see
kernels_apart), liger (Liger-Kernel's fused linear cross-entropy, RMSNorm, RoPE and SwiGLU on a
CUDA GPU: what `train.fused_loss` does). LoRA dropout (--lora-dropout, a comma list; default 0.1
as the recipes): 0 makes peft skip the dropout mask and its multiply in every LoRA forward.

Precisions (each where the device runs it): fp32; bf16-autocast (fp32 weights, bf16 autocast:
what the Trainer's bf16 flag does); bf16-weights (bf16 base weights, fp32 LoRA weights and
optimizer state, bf16 autocast: `model.dtype=bfloat16 train.precision=bf16`).

The GEMM ceiling (fp32 and bf16) is measured in the same run: the best of several square
matmuls (--gemm-size), before the first round and after each. MFU = model FLOPs per second /
ceiling of the precision in use, with the model FLOPs of a step counted exactly for a frozen base
with LoRA:

    per processed position (padding included: the device computes it):
      forward   2 (N + N_lora)
      backward  2 (N + N_lora)   activation gradients through every linear layer (frozen or not)
              + 2 N_lora         weight gradients of the LoRA matrices only (frozen weights get none)
    => 4 N + 6 N_lora per position, N = every linear weight incl. lm_head (embedding lookups: 0);
    attention (scores and weighted sum; forward 4 d L per attended key, backward twice that):
      12 d L x (keys each position attends: its position id + 1 in its own segment).

Columns: step time (median over the timed steps, warm-up steps left out), tokens/s (block
positions), useful tokens/s (labelled tokens, i.e. the ones the loss trains on), share of the
corpus's predictable tokens the layout trains on, time to one epoch of the corpus, MFU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clinpeft.data.packing import DEFAULT_PACKING, IGNORE_INDEX, pack_documents  # noqa: E402
from clinpeft.errors import ClinpeftError  # noqa: E402
from clinpeft.modeling.base import check_attention  # noqa: E402
from clinpeft.training.precision import cpu_has_native_bf16  # noqa: E402

BOS, EOS, PAD = 1, 2, 0


def mimic_like_lengths(n: int, seed: int) -> list[int]:
    """Token counts of a MIMIC-IV-Note-like mix: 88% ~300 tokens (radiology), 12% 2,000-3,000 (discharge)."""
    rng = np.random.default_rng(seed)
    short = np.clip(rng.normal(300, 60, n), 20, None).astype(int)
    long = rng.integers(2000, 3001, n)
    return np.where(rng.random(n) < 0.88, short, long).tolist()


def documents(lengths: list[int], vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed + 1)
    return [[BOS, *rng.integers(3, vocab, n).tolist(), EOS] for n in lengths]


def real_documents(tokenizer, n_patients: int, seed: int) -> list[list[int]]:
    """Synthetic discharge summaries and radiology reports (clinpeft's demo corpus), tokenized by the real
    model's tokenizer as clinpeft pretrain does (its BOS when it adds one, its end-of-text after each note)."""
    import tempfile

    import pandas as pd

    from clinpeft.demo.synthetic import write_pretraining_corpus

    with tempfile.TemporaryDirectory() as tmp:
        files = write_pretraining_corpus(tmp, n_patients=n_patients, seed=seed)
        texts = [t for f in files.values() for t in pd.read_csv(f)["text"].astype(str)]
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [ids + [tokenizer.eos_token_id] for ids in encoded]


def paper_layout(docs: list[list[int]], block: int, pad: int = PAD) -> dict:
    """One note per row, truncated to `block`, right-padded; labels -100 on padding (as the paper's script)."""
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    pad_id = pad
    for doc in docs:
        kept = doc[:block]
        n_pad = block - len(kept)
        rows["input_ids"].append(kept + [pad_id] * n_pad)
        rows["attention_mask"].append([1] * len(kept) + [0] * n_pad)
        rows["labels"].append(kept + [IGNORE_INDEX] * n_pad)
    return rows


def packed_layout(docs: list[list[int]], block: int, mode: str, window: int = 1000, pad: int = PAD) -> dict:
    """clinpeft's layout, packed in windows of `window` notes as `clinpeft pretrain` does."""
    rows: dict = {"input_ids": [], "position_ids": [], "labels": []}
    for start in range(0, len(docs), window):
        part = pack_documents(docs[start : start + window], block, pad, mode)
        for key in rows:
            rows[key] += part[key]
    return rows


def to_tensors(rows: dict) -> dict:
    return {key: torch.tensor(value) for key, value in rows.items()}


def labelled(labels: torch.Tensor) -> int:
    """Tokens the loss trains on: the model shifts labels by one, so a row's first label never counts."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def attended_keys(rows: dict) -> torch.Tensor:
    """Per row: sum over positions of the keys each attends to (causal, within its own segment)."""
    if "position_ids" in rows:
        return (rows["position_ids"] + 1).sum(dim=1)
    n = rows["input_ids"].shape[1]
    return torch.full((rows["input_ids"].shape[0],), n * (n + 1) // 2)  # the paper's rows: full causal row


def gemm_ceiling(dtype: torch.dtype, device: str, size: int, reps: int = 5) -> float:
    """Best FLOP/s of a size x size x size matmul."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def build_model(args, precision: str, attn: str, kernels: str = "plain", dropout: float = 0.1):
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.base_path is not None:  # the real model, as clinpeft pretrain loads it
        from clinpeft.modeling.base import load_causal_lm

        model = load_causal_lm(args.base_path, "bfloat16" if precision == "bf16-weights" else "float32", attn)
        return add_lora(model, args, kernels, dropout)

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate or 4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.block, 2048), use_cache=False, attn_implementation=attn,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )
    dtype = torch.bfloat16 if precision == "bf16-weights" else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return add_lora(model, args, kernels, dropout)


def add_lora(model, args, kernels: str, dropout: float):
    from peft import LoraConfig, get_peft_model

    if kernels == "liger":
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        # what TrainingArguments.use_liger_kernel does with train.fused_loss's config (training/trainer.kernel_flags)
        _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=True, cross_entropy=False,
                                        rms_norm=True, rope=True, swiglu=True)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=dropout,
                      target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)  # autocast_adapter_dtype: LoRA weights in fp32 on a bf16 base
    if kernels == "compile":
        model = torch.compile(model)
    return model


def linear_params(model) -> tuple[int, int]:
    """(N: weights of every linear layer incl. lm_head, LoRA excluded; N_lora)."""
    n = n_lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if "lora_" in name:
                n_lora += module.weight.numel()
            elif not any(part.startswith("lora_") for part in name.split(".")):
                n += module.weight.numel()
    return n, n_lora


class Runner:
    """One (layout, precision, attention, kernels) configuration: its model, optimizer and batches."""

    def __init__(self, args, layout: str, rows: dict, precision: str, attn: str, kernels: str, dropout: float,
                 models: dict):
        self.args, self.layout, self.precision, self.attn, self.kernels = args, layout, precision, attn, kernels
        self.dropout = dropout
        self.rows = rows
        # one model (and optimizer) per weight dtype, attention and kernels: fp32 and bf16-autocast share fp32
        # weights, the layouts share everything (fits a 7B model on one 80 GB GPU)
        key = (precision == "bf16-weights", attn, kernels, dropout)
        if key not in models:
            model = build_model(args, precision, attn, kernels, dropout)
            model.train()
            models[key] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4))
        self.model, self.optimizer = models[key]
        self.n, self.n_lora = linear_params(self.model)
        self.peak = 0.0
        self.times: list[float] = []
        self.all_times: list[float] = []  # warm-up steps included: the wall-time share spent in training steps
        self.cursor = 0
        self.steps_done = 0
        self.positions = self.useful = self.keys = 0
        self.losses: list[float] = []

    def batch(self) -> dict:
        n = len(self.rows["input_ids"])
        idx = [(self.cursor + i) % n for i in range(self.args.batch)]
        self.cursor += self.args.batch
        return {key: value[idx].to(self.args.device) for key, value in self.rows.items()}

    def step(self) -> None:
        batch = self.batch()
        autocast = self.precision != "fp32"
        device_type = "cuda" if self.args.device.startswith("cuda") else "cpu"
        sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
        sync()
        if device_type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync()
        elapsed = time.perf_counter() - start
        self.all_times.append(elapsed)
        self.steps_done += 1
        self.losses.append(float(loss.detach()))
        if device_type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated() / 2**30)
        if self.steps_done > self.args.warmup:
            self.times.append(elapsed)
            self.positions += batch["input_ids"].numel()
            self.useful += labelled(batch["labels"])
            self.keys += int(attended_keys(batch).sum())

    def result(self, ceilings: dict, corpus_tokens: int, corpus_rows: dict) -> dict:
        seconds = sum(self.times)
        step = statistics.median(self.times)
        steps = len(self.times)
        cfg = self.args
        flops = (4 * self.n + 6 * self.n_lora) * self.positions + 12 * cfg.hidden * cfg.layers * self.keys
        ceiling = ceilings["bf16" if self.precision != "fp32" else "fp32"]
        layout_useful = labelled(self.rows["labels"])
        epoch_steps = math.ceil(len(self.rows["input_ids"]) / cfg.batch)
        out = {
            "layout": self.layout, "precision": self.precision, "attn": self.attn, "kernels": self.kernels,
            "lora_dropout": self.dropout,
            "timed_steps": steps, "step_s": step,
            "tokens_per_s": self.positions / seconds, "useful_tokens_per_s": self.useful / seconds,
            "slot_share": layout_useful / self.rows["input_ids"].numel(),
            "corpus_share": layout_useful / corpus_tokens,
            "epoch_h": epoch_steps * (seconds / steps) / 3600,
            "model_tflops_per_s": flops / seconds / 1e12,
            "mfu": flops / seconds / ceiling,
            "first_loss": self.losses[0], "last_loss": self.losses[-1],
        }
        if cfg.device.startswith("cuda"):
            out["peak_mem_gib"] = self.peak
        if cfg.peak_tflops:
            out["mfu_vs_published_peak"] = flops / seconds / (cfg.peak_tflops * 1e12)
        return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default 4 x hidden; LLaMA-7B: 11008)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-dropout", default="0.1", help="comma list, e.g. 0.1,0")
    p.add_argument("--block", type=int, default=512, help="tokens per row (max_seq_len)")
    p.add_argument("--batch", type=int, default=4, help="rows per step")
    p.add_argument("--notes", type=Path, default=None, help="one note length (tokens) per line instead of the mix")
    p.add_argument("--n-notes", type=int, default=2000, help="notes in the generated mix")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps per configuration per round")
    p.add_argument("--warmup", type=int, default=1, help="first steps of each configuration left out of the timing")
    p.add_argument("--layouts", default="paper,packed", help="comma list: paper,packed,packed-unmasked")
    p.add_argument("--packing", default=DEFAULT_PACKING, help="clinpeft layout for `packed`")
    p.add_argument("--precisions", default="auto",
                   help="comma list of fp32,bf16-autocast,bf16-weights; auto: fp32 + both bf16 where runnable")
    p.add_argument("--attn", default="sdpa", help="comma list: sdpa,eager,flex_attention,flash_attention_2")
    p.add_argument("--kernels", default="plain", help="comma list: plain,compile,liger")
    p.add_argument("--compile", action="store_true", help="same as --kernels compile")
    p.add_argument("--device", default="cpu")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--corpus-tokens", type=float, default=None,
                   help="also project one epoch over a corpus of this many tokens with this corpus's mix")
    p.add_argument("--corpus-notes", type=float, default=None, help="notes in that corpus (for the paper layout)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's published dense peak of the precision in use (H100 SXM / H200 bf16: 989)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", default=None, help="a real model: a named base (smollm2-135m), a Hugging Face folder "
                   "or a .gguf file; its shape replaces --hidden/--layers/--heads/--kv-heads/--intermediate/--vocab")
    p.add_argument("--patients", type=int, default=60,
                   help="--base: synthetic patients whose discharge and radiology notes make the corpus")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    return p.parse_args(argv)


def available_attn(names: list[str], device: str) -> tuple[list[str], list[str]]:
    """The attention implementations of `names` that train on `device` (clinpeft's own check, for bf16
    weights), and the others with why not."""
    keep, skipped = [], []
    for name in names:
        try:
            if not device.startswith("cuda") and name in ("flex_attention", "flash_attention_2"):
                raise ClinpeftError("needs a CUDA GPU")  # --device cpu on a machine that has one
            check_attention(name, torch.bfloat16)
        except ClinpeftError as err:
            skipped.append(f"{name} ({err})")
        else:
            keep.append(name)
    return keep, skipped


def available_kernels(names: list[str], device: str) -> tuple[list[str], list[str]]:
    """The kernel settings of `names` that run on `device`, and the others with why not."""
    import importlib.util

    keep, skipped = [], []
    for name in names:
        if name == "liger" and not (device.startswith("cuda") and importlib.util.find_spec("liger_kernel")):
            skipped.append("liger (needs a CUDA GPU and liger-kernel: pip install 'clinpeft[gpu]')")
        else:
            keep.append(name)
    return keep, skipped


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()
    torch.manual_seed(args.seed)
    cuda = args.device.startswith("cuda")
    native_bf16 = (torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16())
    precisions = (["fp32", "bf16-autocast", "bf16-weights"] if args.precisions == "auto"
                  else args.precisions.split(","))
    attns, skipped = available_attn(args.attn.split(","), args.device)
    kernels, skipped_kernels = available_kernels(["compile"] if args.compile else args.kernels.split(","),
                                                 args.device)
    skipped += skipped_kernels
    if "compile" in kernels and len(kernels) > 1:
        return finish(args, kernels_apart(sys.argv[1:] if argv is None else list(argv), kernels, skipped))

    pad = PAD
    args.base_path = None
    if args.base:  # the real model: its shape, its tokenizer, clinical-style notes
        from clinpeft.bases import resolve_base
        from clinpeft.modeling.base import load_tokenizer

        args.base_path = resolve_base(args.base)
        read_shape(args, args.base_path)
        tokenizer = load_tokenizer(args.base_path)
        docs, pad = real_documents(tokenizer, args.patients, args.seed), tokenizer.pad_token_id
    else:
        lengths = ([int(x) for x in args.notes.read_text().split()] if args.notes
                   else mimic_like_lengths(args.n_notes, args.seed))
        docs = documents(lengths, args.vocab, args.seed)
    corpus_tokens = sum(len(d) - 1 for d in docs)  # predictable: every token after the note's first
    layouts = {}
    for name in args.layouts.split(","):
        rows = (paper_layout(docs, args.block, pad) if name == "paper"
                else packed_layout(docs, args.block, args.packing, pad=pad))
        if name == "packed-unmasked":
            rows.pop("position_ids")  # timing reference: one causal sequence per block, notes see each other
        layouts[name] = to_tensors(rows)

    def measure_ceilings(best: dict) -> dict:
        """The best GEMM FLOP/s seen so far: a co-tenant slowing one measurement must not make MFU exceed 100%."""
        now = {"fp32": gemm_ceiling(torch.float32, args.device, args.gemm_size),
               "bf16": gemm_ceiling(torch.bfloat16, args.device, args.gemm_size)}
        return {k: max(best.get(k, 0.0), v) for k, v in now.items()}

    ceilings = measure_ceilings({})
    models: dict = {}
    dropouts = [float(x) for x in args.lora_dropout.split(",")]
    runners = [Runner(args, layout, rows, precision, attn, kernel, dropout, models)
               for layout, rows in layouts.items() for precision in precisions for attn in attns for kernel in kernels
               for dropout in dropouts]
    for r in range(args.rounds):
        order = runners if r % 2 == 0 else runners[::-1]
        for runner in order:
            for _ in range(args.steps + (args.warmup if r == 0 else 0)):
                runner.step()
        ceilings = measure_ceilings(ceilings)  # before, between and after the rounds
        print(f"round {r + 1}/{args.rounds} done ({time.time() - started:.0f} s)", file=sys.stderr)
    results = [runner.result(ceilings, corpus_tokens, layouts) for runner in runners]
    step_seconds = sum(sum(runner.all_times) for runner in runners)
    add_paper_ratio(results)
    for x in results:
        if args.corpus_tokens:
            # same mix: blocks scale with the tokens (packed) or with the notes (paper)
            scale = args.corpus_notes / len(docs) if x["layout"] == "paper" and args.corpus_notes \
                else args.corpus_tokens / corpus_tokens
            x["corpus_epoch_h"] = x["epoch_h"] * scale
    report = {
        "device": args.device if not cuda else torch.cuda.get_device_name(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_native_bf16": native_bf16 if not cuda else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "shape": {k: getattr(args, k) for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab",
                                                "lora_r", "lora_dropout", "block", "batch")},
        "params": {"linear": runners[0].n, "lora": runners[0].n_lora},
        "corpus": {"notes": len(docs), "predictable_tokens": corpus_tokens, "packing": args.packing},
        "gemm_ceiling_tflops": {k: v / 1e12 for k, v in ceilings.items()},
        "skipped_attn": skipped, "results": results, "wall_s": time.time() - started,
        "base": str(args.base) if args.base else None,
        # the whole process: model loading, the corpus, GEMM ceilings and warm-up steps included
        "peak_rss_gib": peak_rss_gib(),
        "steps_share_of_wall": step_seconds / (time.time() - started),
    }
    return finish(args, report)


def read_shape(args, path: Path) -> None:
    """--base: the shape arguments (used in the FLOP count and the report) from the model's config.json."""
    config = json.loads((Path(path) / "config.json").read_text())
    args.hidden, args.layers = config["hidden_size"], config["num_hidden_layers"]
    args.heads = config["num_attention_heads"]
    args.kv_heads = config.get("num_key_value_heads") or args.heads
    args.intermediate, args.vocab = config["intermediate_size"], config["vocab_size"]


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def finish(args, report: dict) -> dict:
    table = markdown(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.md:
        args.md.write_text(table + "\n")
    return report


def add_paper_ratio(results: list[dict]) -> None:
    """useful_vs_paper_fp32: useful tokens/s against the paper's layout in fp32 (sdpa, plain kernels)."""
    base = next((x for x in results if x["layout"] == "paper" and x["precision"] == "fp32"
                 and x["attn"] == "sdpa" and x["kernels"] == "plain"), None)
    for x in results:
        x["useful_vs_paper_fp32"] = x["useful_tokens_per_s"] / base["useful_tokens_per_s"] if base else None


def kernels_apart(argv: list[str], kernels: list[str], skipped: list[str]) -> dict:
    """Each kernels setting measured in a process of its own, one after the other, merged into one report.

    Why: with compiled models in the process, the uncompiled ones ran slower (measured, packed, hidden 512 x 8
    layers, this 2-core CPU: fp32 452 against 634 useful tokens/s in a process of their own, bf16 autocast 767
    against 1,021), so paired rounds in one process credit compilation with a gain it does not have. The price:
    the settings are not interleaved, so run this on a quiet machine. Each part keeps its own GEMM ceiling."""
    import subprocess
    import tempfile

    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for kernel in kernels:
            out = Path(tmp) / f"{kernel}.json"
            print(f"kernels={kernel}: a process of its own", file=sys.stderr)
            subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--kernels", kernel,
                            "--json", str(out), "--md", os.devnull], check=True, stdout=subprocess.DEVNULL)
            reports.append(json.loads(out.read_text()))
    report = reports[0]
    report["results"] = [x for part in reports for x in part["results"]]
    report["gemm_ceiling_tflops"] = {k: max(part["gemm_ceiling_tflops"][k] for part in reports)
                                     for k in report["gemm_ceiling_tflops"]}
    report["wall_s"] = sum(part["wall_s"] for part in reports)
    report["skipped_attn"] = skipped
    report["kernels_apart"] = True
    add_paper_ratio(report["results"])
    return report


def markdown(report: dict) -> str:
    ceil = report["gemm_ceiling_tflops"]
    lines = [
        f"device {report['device']}, torch {report['torch']}, {report['threads']} threads, load average "
        f"{report['load_average']}; GEMM ceiling fp32 {ceil['fp32'] * 1e3:.0f} GFLOP/s, bf16 "
        f"{ceil['bf16'] * 1e3:.0f} GFLOP/s; model {report['params']['linear'] / 1e6:.1f}M linear weights + "
        f"{report['params']['lora'] / 1e6:.2f}M LoRA; corpus {report['corpus']['notes']} notes, "
        f"{report['corpus']['predictable_tokens']:,} tokens; {report['wall_s']:.0f} s"
        + (f"; base {report['base']}" if report.get("base") else "")
        + (f"; peak RSS {report['peak_rss_gib']:.1f} GiB, {report['steps_share_of_wall']:.0%} of the wall time in "
           "training steps" if report.get("peak_rss_gib") else ""),
        "",
        "| layout | precision | attn | kernels | LoRA dropout | step s | tokens/s | useful tokens/s | x paper fp32 "
        "| slot share | corpus trained on | epoch h | MFU | loss first -> last |"
        + (" peak GiB |" if "peak_mem_gib" in report["results"][0] else "")
        + (" MFU vs published peak |" if "mfu_vs_published_peak" in report["results"][0] else "")
        + (" corpus epoch h |" if "corpus_epoch_h" in report["results"][0] else ""),
        "|---" * (14 + sum(k in report["results"][0] for k in ("peak_mem_gib", "mfu_vs_published_peak",
                                                                 "corpus_epoch_h"))) + "|",
    ]
    for x in report["results"]:
        ratio = f"{x['useful_vs_paper_fp32']:.2f}" if x["useful_vs_paper_fp32"] else "-"
        line = (f"| {x['layout']} | {x['precision']} | {x['attn']} | {x['kernels']} | {x['lora_dropout']:g} | "
                f"{x['step_s']:.3f} | "
                f"{x['tokens_per_s']:,.0f} | "
                f"{x['useful_tokens_per_s']:,.0f} | {ratio} | {x['slot_share']:.1%} | {x['corpus_share']:.1%} | "
                f"{x['epoch_h']:.3g} | {x['mfu']:.1%} | {x['first_loss']:.2f} -> {x['last_loss']:.2f} |")
        if "peak_mem_gib" in x:
            line += f" {x['peak_mem_gib']:.1f} |"
        if "mfu_vs_published_peak" in x:
            line += f" {x['mfu_vs_published_peak']:.1%} |"
        if "corpus_epoch_h" in x:
            line += f" {x['corpus_epoch_h']:.1f} |"
        lines.append(line)
    if report.get("kernels_apart"):
        lines += ["", "each kernels setting ran in a process of its own, one after the other (MFU against that "
                  "process's GEMM ceiling); the header shows the first process's figures"]
    if report["skipped_attn"]:
        lines += ["", "not measured: " + ", ".join(report["skipped_attn"])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
