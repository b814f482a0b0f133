"""Benchmark: `clinpeft predict` notes/s and peak memory, truncate vs chunks, batch sizes 1/8/32.

    python benchmarks/predict.py          # demo LLaMA + a ~110M random LLaMA: a few minutes on 2 cores
    python benchmarks/predict.py --notes 256 --big-notes 32 --max-seq-len 256

Two models: the demo LLaMA (`model.base=demo`, built once into CLINPEFT_HOME) and a random-init
LLaMA of ~110M parameters (hidden 768, 12 layers, 12 heads, intermediate 2048, vocabulary 32000;
no download), each as a `head` classifier bundle (speed does not depend on the head's weights).
Notes: synthetic admission notes (about 1,100 tokens each with the demo tokenizer), so with
`--max-seq-len 128` truncate reads one window per note and chunks (stride 16, max_chunks 4) four.
Each configuration runs in its own process (peak RSS = that process's VmHWM: torch, the model,
tokenised notes, activations): notes/s of the scoring as `predict` does it (read the file in chunks,
tokenise, forward passes sorted by length, pooling; torch imported and the model loaded before the
clock starts, load time apart). Not a timed test: the numbers depend on the machine and its load
(the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_bundle(base: Path, run: Path, max_seq_len: int, chunks: bool) -> None:
    from clinpeft.config import DownstreamLoraSection
    from clinpeft.modeling.classifier import build_classifier, save_bundle

    clf = build_classifier(base, "binary", 2, "head", None, DownstreamLoraSection(), "float32")
    long_notes = {"mode": "chunks", "chunk_stride": 16, "max_chunks": 4, "chunk_pooling": "max"} if chunks else {}
    run.mkdir(parents=True)
    save_bundle(clf, run, {"base_model": str(base), "variant": "head", "task": "mor", "task_type": "binary",
                           "labels": ["0", "1"], "max_seq_len": max_seq_len, "padding_side": "right",
                           "clinical_adapter": None, "long_notes": long_notes})


def big_llama(path: Path, tokenizer_dir: Path) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return sum(p.numel() for p in model.model.parameters())


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: on Linux that keeps the parent's peak
    across fork + exec, so every child would report the benchmark driver's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(run: str, notes: str, batch_size: int) -> None:
    """Child process: load the model (timed apart), then score the file's notes as `predict` does, chunk
    by chunk (tokenise, forward passes sorted by length, pooling). Prints a JSON line."""
    import torch  # noqa: F401  imported before the clocks start
    import transformers  # noqa: F401

    from clinpeft.data.note_files import check_note_file, read_note_chunks
    from clinpeft.inference import Predictor

    started = time.perf_counter()
    predictor = Predictor(run, device="cpu", batch_size=batch_size)
    load = time.perf_counter() - started
    started = time.perf_counter()
    n_notes, windows, seen, tokens = 0, 0, 0, 0
    for _, texts in read_note_chunks(check_note_file(notes)):
        encoded = predictor.encode(texts)
        predictor.predict(encoded)
        n_notes, windows = n_notes + encoded.n_notes, windows + len(encoded.windows)
        seen, tokens = seen + sum(encoded.seen_tokens), tokens + sum(encoded.note_tokens)
    scoring = time.perf_counter() - started
    print(json.dumps({"load_s": load, "scoring_s": scoring, "n_notes": n_notes, "windows": windows,
                      "tokens_seen_share": seen / tokens, "peak_rss_mib": peak_rss_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=64, help="notes scored with the demo model")
    parser.add_argument("--big-notes", type=int, default=4, help="notes scored with the ~110M model")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--one", nargs=3, metavar=("RUN", "NOTES", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args.one[0], args.one[1], int(args.one[2]))

    import pandas as pd

    from clinpeft.bases import resolve_base
    from clinpeft.demo.synthetic import write_tasks

    work = Path(tempfile.mkdtemp(prefix="clinpeft-bench-"))
    try:
        demo = resolve_base("demo", progress=False)
        tasks = write_tasks(work / "tasks", n_patients=max(80, args.notes), seed=0)
        texts = pd.concat(pd.read_csv(tasks["mor"] / f"{s}.csv") for s in ("train", "val", "test"))["text"]
        models = {"demo": (demo, args.notes)}
        n_big = big_llama(work / "big", demo)
        models[f"llama-{n_big / 1e6:.0f}M"] = (work / "big", args.big_notes)
        print(f"load average (1 min): {os.getloadavg()[0]:.1f}; CPU threads: {os.cpu_count()}")
        print("| model | notes | long_notes | batch | notes/s | load s | windows/note | tokens seen | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, (base, n) in models.items():
            notes = work / f"notes-{n}.csv"
            pd.DataFrame({"id": range(n), "text": texts.iloc[:n].tolist()}).to_csv(notes, index=False)
            for chunks in (False, True):
                run = work / f"{name}-{'chunks' if chunks else 'truncate'}"
                make_bundle(base, run, args.max_seq_len, chunks)
                for batch in map(int, args.batch_sizes.split(",")):
                    done = subprocess.run([sys.executable, __file__, "--one", str(run), str(notes), str(batch)],
                                          capture_output=True, text=True, check=True)
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    mode = "chunks" if chunks else "truncate"
                    print(f"| {name} | {n} | {mode} | {batch} | {row['n_notes'] / row['scoring_s']:.1f} | "
                          f"{row['load_s']:.1f} | {row['windows'] / row['n_notes']:.1f} | "
                          f"{100 * row['tokens_seen_share']:.0f}% | {row['peak_rss_mib']:.0f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
