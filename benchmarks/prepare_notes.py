"""Benchmark: `clinpeft prepare notes` (notes/s, peak memory) and pretrain's tokenise + pack (tokens/s).

    python benchmarks/prepare_notes.py --notes 200000 --num-proc 2 --work /tmp/clinpeft-bench

1. writes a MIMIC-IV-Note-shaped discharge.csv.gz + radiology.csv.gz of --notes notes, fast: the
   synthetic generator writes a few thousand notes, which are repeated with new subject / note ids
   (the text is reused, so gzip sees no more redundancy than in real files: repeats are megabytes apart);
2. runs `python -m clinpeft prepare notes` under /usr/bin/time: wall time, CPU time, peak RSS;
3. runs pretrain's tokenise + pack (clinpeft.recipes.pretrain.tokenize_corpus: datasets.map over
   clinpeft.data.packing.tokenize_and_pack) on the prepared corpus with the demo tokenizer (byte-level
   BPE, as LLaMA's is a fast BPE), --num-proc processes, in a child process under /usr/bin/time too.

Prints a table and an extrapolation to MIMIC-IV-Note's 2,653,149 notes on --target-cores cores,
scaling by characters (the synthetic notes are shorter than real ones). Writes results.json in --work.
Not a timed test: numbers depend on the machine and on its load (reported with them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MIMIC_NOTES = 2_653_149  # MIMIC-IV-Note v2.2: 331,794 discharge + 2,321,355 radiology
# Characters of text in MIMIC-IV-Note, an estimate (about 10.5K per discharge summary, 1.7K per
# radiology report); a real corpus's manifest.json gives the exact figure under splits.*.characters.
MIMIC_CHARS_ESTIMATE = 331_794 * 10_500 + 2_321_355 * 1_700
DISCHARGE_SHARE = 331_794 / MIMIC_NOTES  # the real mix: 1 discharge summary per 7 radiology reports


def generate(work: Path, n_notes: int, seed: int = 0) -> dict[str, Path]:
    """discharge.csv.gz and radiology.csv.gz with about n_notes notes in MIMIC-IV-Note's mix."""
    import pandas as pd

    from clinpeft.demo.synthetic import write_pretraining_corpus

    seeds = write_pretraining_corpus(work / "seed-notes", n_patients=1000, seed=seed)
    paths = {}
    for kind, share in (("discharge", DISCHARGE_SHARE), ("radiology", 1 - DISCHARGE_SHARE)):
        base = pd.read_csv(seeds[kind], dtype=str, keep_default_na=False)
        target = max(1, round(n_notes * share))
        paths[kind] = work / f"{kind}.csv.gz"
        with open(paths[kind], "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            written, copy = 0, 0
            while written < target:
                frame = base.iloc[: target - written].copy()
                # a new cohort per copy: distinct patients and note ids, same MIMIC-IV id shapes
                frame["subject_id"] = (frame["subject_id"].astype("int64") + copy * 10_000_000).astype(str)
                frame["note_id"] = frame["note_id"] + f"-{copy}"
                gz.write(frame.to_csv(index=False, header=written == 0, lineterminator="\n").encode())
                written += len(frame)
                copy += 1
    return paths


def timed(command: list[str], work: Path, name: str) -> dict:
    """Run command under /usr/bin/time: wall s, user+sys CPU s, peak RSS (MiB)."""
    stats = work / f"{name}.time"
    started = time.time()
    subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(stats), *command], check=True)
    wall = time.time() - started
    elapsed, user, system, max_kb = stats.read_text().split()[-4:]
    return {"wall_s": wall, "cpu_s": float(user) + float(system), "peak_rss_mib": int(max_kb) / 1024}


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (datasets.map's workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def tokenise(corpus: Path, num_proc: int, max_seq_len: int, work: Path) -> None:
    """(child process) tokenise + pack the prepared corpus as pretrain does; write tokens and time."""
    from clinpeft.config import PretrainConfig, load_config
    from clinpeft.data.notes import load_corpus
    from clinpeft.data.packing import count_predicted_tokens
    from clinpeft.demo import llama as demo_base
    from clinpeft.recipes.pretrain import tokenize_corpus
    from clinpeft.training.runtime import set_progress_bars

    set_progress_bars(False)
    tokenizer = demo_base.train_tokenizer(demo_base.general_english_documents(max_chars=2_000_000),
                                          vocab_size=demo_base.DEMO_VOCAB_SIZE)
    tokenizer.model_max_length = 2**62
    config = load_config(PretrainConfig, None, [f"data.paths=[{corpus}]", f"data.num_proc={num_proc}",
                                                f"data.max_seq_len={max_seq_len}"])
    cache = work / "tokenise-cache"
    splits, _ = load_corpus(config.data, cache)
    started, cpu_started = time.time(), cpu_seconds()
    blocks = tokenize_corpus(splits, tokenizer, config, progress=False, cache_dir=cache)
    seconds, cpu = time.time() - started, cpu_seconds() - cpu_started
    tokens = sum(count_predicted_tokens(blocks[name]) for name in blocks)
    n_blocks = sum(len(blocks[name]) for name in blocks)
    (work / "tokenise.json").write_text(json.dumps({"seconds": seconds, "map_cpu_s": cpu, "predicted_tokens": tokens,
                                                         "blocks": n_blocks}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notes", type=int, default=200_000)
    parser.add_argument("--num-proc", type=int, default=2, help="tokenisation processes (data.num_proc)")
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--target-cores", type=int, default=8, help="cores of the machine to extrapolate to")
    parser.add_argument("--work", type=Path, default=Path("bench-prepare-notes"))
    parser.add_argument("--tokenise-only", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.tokenise_only:
        return tokenise(args.tokenise_only, args.num_proc, args.max_seq_len, args.work)

    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    started = time.time()
    raw = generate(args.work, args.notes)
    generate_s = time.time() - started
    raw_bytes = sum(p.stat().st_size for p in raw.values())

    corpus = args.work / "corpus"
    prepare = timed([sys.executable, "-m", "clinpeft", "prepare", "notes", "--discharge", str(raw["discharge"]),
                     "--radiology", str(raw["radiology"]), "--out", str(corpus), "--overwrite", "--quiet"],
                    args.work, "prepare")
    manifest = json.loads((corpus / "manifest.json").read_text())
    notes = manifest["notes_read"]
    chars = sum(s["characters"] for s in manifest["splits"].values())

    tok = timed([sys.executable, __file__, "--tokenise-only", str(corpus), "--num-proc", str(args.num_proc),
                 "--max-seq-len", str(args.max_seq_len), "--work", str(args.work)], args.work, "tokenise")
    tok.update(json.loads((args.work / "tokenise.json").read_text()))

    # extrapolation: scale by characters; prepare is one process (scales with the core's speed, not
    # the count); tokenisation scales with processes up to the cores (measured here on num_proc)
    scale = MIMIC_CHARS_ESTIMATE / chars
    prepare_mimic_s = prepare["wall_s"] * scale
    tokens_per_char = tok["predicted_tokens"] / chars
    tokenise_mimic_s = tok["seconds"] * scale * args.num_proc / args.target_cores
    # on a shared machine wall time counts other users' work too: CPU seconds give the idle-machine figure
    prepare_mimic_cpu_s = prepare["cpu_s"] * scale
    tokenise_mimic_cpu_s = tok["map_cpu_s"] * scale / args.target_cores
    results = {
        "notes": notes, "characters": chars, "gzip_bytes": raw_bytes, "generate_s": generate_s,
        "load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0], "cores": os.cpu_count(),
        "prepare": {**prepare, "notes_per_s": notes / prepare["wall_s"],
                    "mb_text_per_s": chars / prepare["wall_s"] / 1e6, "notes_per_cpu_s": notes / prepare["cpu_s"]},
        "tokenise": {**tok, "num_proc": args.num_proc, "tokens_per_s": tok["predicted_tokens"] / tok["seconds"],
                     "tokens_per_char": tokens_per_char},
        "mimic_iv_note_estimate": {
            "characters": MIMIC_CHARS_ESTIMATE, "tokens": MIMIC_CHARS_ESTIMATE * tokens_per_char,
            "prepare_min": prepare_mimic_s / 60, "tokenise_min_on_target_cores": tokenise_mimic_s / 60,
            "prepare_min_from_cpu": prepare_mimic_cpu_s / 60,
            "tokenise_min_on_target_cores_from_cpu": tokenise_mimic_cpu_s / 60,
            "target_cores": args.target_cores,
        },
    }
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    est = results["mimic_iv_note_estimate"]
    print(
        "\n"
        "| step | notes | MB text | wall s | CPU s | peak RSS MiB | throughput |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| prepare notes | {notes:,} | {chars / 1e6:.0f} | {prepare['wall_s']:.1f} | {prepare['cpu_s']:.1f} "
        f"| {prepare['peak_rss_mib']:.0f} | {results['prepare']['notes_per_s']:,.0f} notes/s "
        f"({results['prepare']['mb_text_per_s']:.1f} MB/s) |\n"
        f"| tokenise + pack ({args.num_proc} proc) | {notes:,} | {chars / 1e6:.0f} | {tok['wall_s']:.1f} "
        f"| {tok['cpu_s']:.1f} | {tok['peak_rss_mib']:.0f} | {results['tokenise']['tokens_per_s']:,.0f} tokens/s "
        f"({tok['predicted_tokens']:,} tokens in {tok['seconds']:.1f} s) |\n"
        "\n"
        f"load average (1 min) {load_before:.1f} before, {results['load_average_1min_after']:.1f} after, "
        f"on {os.cpu_count()} cores\n"
        f"MIMIC-IV-Note (2,653,149 notes, ~{MIMIC_CHARS_ESTIMATE / 1e9:.1f} GB text, estimated; "
        "scaled by characters):\n"
        f"  prepare  ~{est['prepare_min']:.1f} min from wall time here, "
        f"~{est['prepare_min_from_cpu']:.1f} min from CPU time (one process)\n"
        f"  tokenise ~{est['tokenise_min_on_target_cores']:.1f} min from wall time, "
        f"~{est['tokenise_min_on_target_cores_from_cpu']:.1f} min from CPU time, on {args.target_cores} processes\n"
        f"  (~{est['tokens'] / 1e9:.2f}B tokens at {tokens_per_char:.3f} tokens/char with the demo tokenizer)")


if __name__ == "__main__":
    main()
