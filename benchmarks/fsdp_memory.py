"""Benchmark: per-process peak memory of full fine-tuning on 2 CPU processes, DDP against FSDP.

    python benchmarks/fsdp_memory.py                      # ~106M-parameter LLaMA, 6 optimizer steps each
    python benchmarks/fsdp_memory.py --hidden 1024 --layers 8 --intermediate 2816
    python benchmarks/fsdp_memory.py --device cuda --hidden 2048 --layers 16 --intermediate 5632   # 2+ GPUs

Builds a random LLaMA of the given shape (vocabulary 32,000, untied embeddings, fp32) with the test suite's
small tokenizer, writes a small synthetic corpus, and runs `clinpeft pretrain configs/demo/pretrain_full.yaml`
(every weight trains, AdamW) under `torchrun --standalone --nproc_per_node 2` twice: plain data-parallel
(DDP) and `train.fsdp=true` (FSDP2, one unit per decoder layer). Each training process records its own peak
resident set size (ru_maxrss) when it exits; the table gives both processes' peaks and what AdamW's training
state should take: 16 bytes per parameter (fp32 weights, gradients, two moments) in each DDP process, half
of it per process when the 2 processes shard it. Also printed: the peak of a process that only imports the
libraries and loads the model (the floor every process pays).

Each pair runs twice: with glibc's default allocator settings and with MALLOC_MMAP_THRESHOLD_=131072. FSDP
allocates and frees a gathered layer's weights and gradients at every unit of every step; glibc's dynamic mmap
threshold soon serves such buffers from its heap, where freed ones fragment it and stay resident, so the default
rows overstate FSDP's peak (measured: its RSS grew step after step). A fixed threshold hands buffers of 128 KiB
and more back to the OS when freed: the rows that show the memory the tensors need.

Peak RSS counts everything the process ever held: the whole model is loaded by every process before FSDP
shards it, and gathered whole again after training (clinpeft scores and saves the consolidated model), so
FSDP's peak is at least the weights once plus its share of the training state. Not a timed test.

--device cuda (a machine with 2 or more GPUs; benchmarks/gpu_check.sh runs it there): the same two runs on
GPUs (NCCL), fp32, with each process's torch.cuda.max_memory_allocated beside its RSS; one allocator row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the worker: clinpeft's CLI in this process, then its own peak RSS into $PEAK_DIR/rank-N.json
WORKER = """
import json, os, resource, sys
from clinpeft.cli import main
code = main(sys.argv[1:])
import torch
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
with open(os.path.join(os.environ["PEAK_DIR"], f"rank-{os.environ['RANK']}.json"), "w") as f:
    json.dump({"peak_rss": peak, "peak_cuda": cuda}, f)
sys.exit(code)
"""
FLOOR = """
import resource, sys
from clinpeft.modeling.base import load_causal_lm
model = load_causal_lm(sys.argv[1], "float32")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def build_model(path: Path, hidden: int, layers: int, intermediate: int, heads: int) -> int:
    import torch
    from transformers import LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from clinpeft.demo.llama import tiny_llama_config, train_tokenizer
    from conftest import TOKENIZER_TEXT

    tokenizer = train_tokenizer(TOKENIZER_TEXT, vocab_size=400)
    config = tiny_llama_config(32000, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                               num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # bytes: larger blocks mmap-ed, returned to the OS when freed


def env(extra: dict) -> dict:
    path = f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "CLINPEFT_THREADS": "1",
            "HF_HUB_OFFLINE": "1", **extra}


def run(mode: str, model: Path, corpus: dict, work: Path, steps: int, malloc: dict) -> list[dict]:
    peaks = work / f"peaks-{mode}-{len(malloc)}"
    peaks.mkdir()
    args = ["pretrain", "configs/demo/pretrain_full.yaml", f"model.base={model}",
            f"data.paths=[{corpus['discharge']},{corpus['radiology']}]", "data.max_seq_len=128",
            "data.test_fraction=0.25", "train.batch_size=1", "train.grad_accum=1", f"train.max_steps={steps}",
            "eval.base_model=false", "train.precision=fp32", "model.dtype=float32",
            "eval.train_max_blocks=2", "eval.batch_size=2", "train.checkpoint_minutes=0",
            *(["train.fsdp=true"] if mode == "fsdp" else []), "--out", str(peaks / "run"), "--quiet"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(work / "worker.py"), *args]
    done = subprocess.run(command, cwd=ROOT, env=env({"PEAK_DIR": str(peaks), **malloc}), capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return [json.loads((peaks / f"rank-{r}.json").read_text()) for r in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()

    import torch

    from clinpeft.demo.synthetic import write_pretraining_corpus

    if args.device == "cuda" and torch.cuda.device_count() < 2:
        raise SystemExit(f"fsdp_memory.py --device cuda: needs 2 GPUs, {torch.cuda.device_count()} visible")
    if args.device == "cpu" and torch.cuda.is_available():
        raise SystemExit("fsdp_memory.py: CUDA is visible, so the runs would train on GPUs: use --device cuda, "
                         "or hide the GPUs (CUDA_VISIBLE_DEVICES=) to measure CPU processes")

    work = Path(tempfile.mkdtemp(prefix="fsdp-memory-"))
    (work / "worker.py").write_text(WORKER)
    n = build_model(work / "model", args.hidden, args.layers, args.intermediate, args.heads)
    corpus = write_pretraining_corpus(work / "corpus", n_patients=6, seed=0)
    floor = int(subprocess.run([sys.executable, "-c", FLOOR, str(work / "model")], env=env({}), capture_output=True,
                               text=True, check=True).stdout.split()[-1])
    gb = 1e9
    print(f"model: {n / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers, MLP {args.intermediate}, "
          f"vocab 32000), fp32 weights {4 * n / gb:.2f} GB; full fine-tuning, AdamW, {args.steps} steps, "
          f"2 CPU processes (gloo); load average {os.getloadavg()[0]:.1f}")
    print(f"floor (libraries + the model loaded, one process): {floor / gb:.2f} GB")
    cuda = args.device == "cuda"
    key = "peak_cuda" if cuda else "peak_rss"
    what = "peak GPU memory allocated" if cuda else "peak RSS"
    print(f"| run | allocator | {what} rank 0 | {what} rank 1 | training state per process (16 B/param) |")
    print("|---|---|---|---|---|")
    results = {}
    rows = [({}, "caching allocator")] if cuda else [({}, "glibc default"), (MMAP, "MALLOC_MMAP_THRESHOLD_=131072")]
    for malloc, label in rows:
        for mode in ("ddp", "fsdp"):
            peaks = run(mode, work / "model", corpus, work, args.steps, malloc)
            results[f"{mode} {label}"] = peaks
            state = 16 * n / (2 if mode == "fsdp" else 1)
            print(f"| {mode.upper()} | {label} | {peaks[0][key] / gb:.2f} GB | {peaks[1][key] / gb:.2f} GB "
                  f"| {state / gb:.2f} GB |")
        saved = max(p[key] for p in results[f"ddp {label}"]) - max(p[key] for p in results[f"fsdp {label}"])
        print(f"{label}: FSDP saves {saved / gb:.2f} GB per process "
              f"(half of the 16 B/param state: {8 * n / gb:.2f} GB)")
    print(json.dumps({"params": n, "floor": floor, **results}))


if __name__ == "__main__":
    main()
