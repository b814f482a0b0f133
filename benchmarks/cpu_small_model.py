"""Time per 1,000 notes of configs/cpu/ on a CPU: pretraining, fine-tuning per epoch, predict.

    python benchmarks/cpu_small_model.py                     # the real SmolLM2-135M (model.base=smollm2-135m)
    python benchmarks/cpu_small_model.py --base /models/Qwen2.5-0.5B-Instruct-Q8_0.gguf
    python benchmarks/cpu_small_model.py --shape qwen2.5-0.5b  # a random-init model of that shape instead
    python benchmarks/cpu_small_model.py --set train.compile=true   # any recipe key, both steps

Runs the recipes of configs/cpu/ as they are (their perplexity passes included) on synthetic
MIMIC-style notes through `clinpeft pretrain` / `finetune` / `predict` and prints seconds per 1,000
notes (pretraining: the corpus notes; fine-tuning: training notes x epochs; predict: notes scored),
useful tokens/s, and the share of pretraining's wall time outside its training steps (the perplexity
passes, tokenisation, loading). --shape builds a random-init model with the published config.json
shape (SmolLM2-135M: hidden 576, 30 layers, 9/3 heads, vocabulary 49,152, tied; Qwen2.5-0.5B:
hidden 896, 24 layers, 14/2 heads, vocabulary 151,936, tied) and a small BPE tokenizer trained on the
notes (the embedding and output layer keep the full size, so the compute is the real model's).
Timings depend on the CPU and its load: the result records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SHAPES = {
    "smollm2-135m": ("LlamaConfig", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                         max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    "qwen2.5-0.5b": ("Qwen2Config", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                         max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
}
RECIPES = {"smollm2-135m": "pretrain_lora.yaml", "qwen2.5-0.5b": "pretrain_lora_qwen2.5-0.5b.yaml"}


def build(shape: str, path: Path, texts: list[str]) -> Path:
    import torch
    import transformers

    from clinpeft.demo.llama import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=4096)
    class_name, fields = SHAPES[shape]
    config = getattr(transformers, class_name)(**fields, bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    import pandas as pd

    from clinpeft.bases import resolve_base
    from clinpeft.config import BUNDLED_CONFIGS, FinetuneConfig, PretrainConfig, load_config
    from clinpeft.demo.synthetic import write_pretraining_corpus, write_tasks
    from clinpeft.recipes import finetune, predict, pretrain

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m", help="a named base, a Hugging Face folder or a .gguf file")
    parser.add_argument("--shape", choices=list(SHAPES), default=None,
                        help="a random-init model of this shape instead of --base")
    parser.add_argument("--patients", type=int, default=12, help="synthetic patients of the corpus")
    parser.add_argument("--task-patients", type=int, default=60, help="synthetic patients of the MOR task")
    parser.add_argument("--max-notes", type=int, default=24,
                        help="notes pretrained on, and training notes fine-tuned on (the rate is per note)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for both steps (repeatable), e.g. train.compile=true")
    parser.add_argument("--pretrain-only", action="store_true")
    args = parser.parse_args()
    recipes = BUNDLED_CONFIGS / "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = write_pretraining_corpus(tmp / "corpus", n_patients=args.patients, seed=0)
        tasks = write_tasks(tmp / "tasks", n_patients=args.task_patients, seed=0, tasks=["mor"])
        texts = list(pd.read_csv(corpus["discharge"])["text"])
        base = build(args.shape, tmp / "model", texts) if args.shape else resolve_base(args.base)
        config = load_config(PretrainConfig, recipes / RECIPES[args.shape or "smollm2-135m"], [
            f"model.base={base}", f"data.paths=[{corpus['discharge']}, {corpus['radiology']}]",
            f"data.max_documents={args.max_notes}", *args.set])
        run = pretrain.main(config, tmp / "pretrain", progress=False)
        result = {
            "base": f"random-init {args.shape}" if args.shape else args.base, "overrides": args.set,
            "threads": run["cpu_threads"], "load_average": os.getloadavg(),
            "pretrain_wall_s": run["wall_time_s"],
            # what is not optimizer steps: tokenisation, loading, the four perplexity passes
            "pretrain_share_outside_training": 1 - run["train_time_s"] / run["wall_time_s"],
            "pretrain_test_ppl": run["test_ppl"], "pretrain_base_test_ppl": run["base_test_ppl"],
            "pretrain_notes": run["train_notes"], "pretrain_tokens": run["train_tokens"],
            "pretrain_train_s": run["train_time_s"],
            "pretrain_s_per_1000_notes": 1000 * run["train_time_s"] / run["train_notes"],
            "pretrain_useful_tokens_per_s": run["useful_tokens_per_s"],
        }
        if args.pretrain_only:
            print(json.dumps(result, indent=2))
            return
        ft_config = load_config(FinetuneConfig, recipes / "finetune_clinical.yaml", [
            f"model.base={base}", f"clinical_adapter={tmp / 'pretrain'}", f"task.path={tasks['mor']}",
            "train.epochs=1", "eval.bootstrap_resamples=0", f"task.max_examples={args.max_notes}", *args.set])
        started = time.time()
        metrics = finetune.main(ft_config, tmp / "finetune", progress=False)
        ft_wall = time.time() - started
        notes = pd.read_csv(tasks["mor"] / "test.csv")
        started = time.time()
        predict.main(tmp / "finetune", tasks["mor"] / "test.csv", tmp / "predict", progress=False)
        predict_s = time.time() - started
    result.update({
        "finetune_notes": metrics["n_train"], "finetune_train_s": metrics["train_time_s"], "finetune_wall_s": ft_wall,
        "finetune_s_per_1000_notes": 1000 * metrics["train_time_s"] / metrics["n_train"],
        "finetune_val_auroc": metrics["val"]["auroc"],
        "predict_notes": len(notes), "predict_s": predict_s, "predict_s_per_1000_notes": 1000 * predict_s / len(notes),
    })
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
