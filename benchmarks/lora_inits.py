"""Benchmark: held-out perplexity of the demo's clinical LoRA after the same steps, one run per `init_lora_weights`.

    CLINPEFT_THREADS=1 python benchmarks/lora_inits.py --out /tmp/lora-inits          # ~10 min on a busy 2-core CPU
    python benchmarks/lora_inits.py --out /tmp/lora-inits --steps 40 --inits true,pissa,eva

The demo's pretraining recipe (configs/demo/pretrain_lora.yaml: the tiny demo LLaMA, r 16 on every linear
layer, lr 2e-3) on the quick synthetic corpus (blocks of 128 tokens), the same seed, data order and
`--steps` optimizer steps for every init; only `peft.init_lora_weights` differs. Prints a Markdown table:
test perplexity (token-weighted, the held-out patients), train perplexity, trainable parameters (EVA moves
rank between modules of different shapes) and the training loop's time (the inits' own SVDs and EVA /
LoRA-GA's calibration passes on 64 blocks come before it). Run two seeds: a few percent is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a folder for the data and the runs (reused when rerun)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--inits", default="true,gaussian,pissa,pissa_niter_4,olora,eva,lora_ga,mica")
    parser.add_argument("--seed", type=int, default=42, help="train.seed: data order, dropout, random inits")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from clinpeft.config import BUNDLED_CONFIGS, PretrainConfig, load_config
    from clinpeft.demo.synthetic import write_demo_data
    from clinpeft.recipes import pretrain

    out = Path(args.out)
    corpus = out / "data" / "corpus"
    if not (corpus / "radiology.csv.gz").is_file():
        write_demo_data(out / "data", size="quick", seed=0)
    rows = []
    for init in args.inits.split(","):
        run = out / f"run-{init}"
        if not (run / "run.json").is_file():
            config = load_config(PretrainConfig, BUNDLED_CONFIGS / "demo" / "pretrain_lora.yaml", [
                f"data.paths=[{corpus / 'discharge.csv.gz'},{corpus / 'radiology.csv.gz'}]", "data.max_seq_len=128",
                f"train.max_steps={args.steps}", "train.logging_steps=5", f"train.seed={args.seed}",
                f"peft.init_lora_weights={init}"])
            started = time.time()
            pretrain.main(config, run, progress=False)
            print(f"{init}: {time.time() - started:.0f} s", flush=True)
        result = json.loads((run / "run.json").read_text())
        rows.append((init, result))
    base = rows[0][1]["base_test_ppl"]
    print(f"\n{args.steps} optimizer steps, batch 8 x 128 tokens, seed {args.seed}; base model test ppl {base:.2f}\n")
    print("| init_lora_weights | test ppl | train ppl | trainable | training (s) |\n|---|---|---|---|---|")
    for init, result in rows:
        print(f"| {init} | {result['test_ppl']:.2f} | {result['train_ppl']:.2f} | {result['trainable_params']:,} "
              f"| {result['train_time_s']:.0f} |")


if __name__ == "__main__":
    main()
