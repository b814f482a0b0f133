"""Benchmark: disk per task, merged model (`clinpeft export`) vs one task adapter (`clinpeft export --as-adapter`).

    python benchmarks/task_adapter_size.py                    # a ~110M random LLaMA: about a minute on 2 cores
    python benchmarks/task_adapter_size.py --hidden 256 --layers 4

A random-init LLaMA (default hidden 768, 12 layers, intermediate 2048, vocabulary 32000; no download),
a clinical LoRA (r 16, q_proj/v_proj, random B) saved as a pretrain run's adapter, and a
`clinical_frozen+downstream` bundle (downstream r 8 on q_proj/v_proj, binary head) built by clinpeft and
exported both ways in fp32 and bf16. Sizes are the files each export writes (weights + config +
tokenizer), in MiB, and the weight files alone; the LLaMA-7B line is the same arithmetic at 7B's shape
(32 layers, hidden 4096, vocabulary 32000, 6.74B parameters), checked against the measured model here.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

MIB = 2**20


def folder_mib(path: Path, pattern: str = "*") -> float:
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file()) / MIB


def random_llama(path: Path, hidden: int, layers: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from clinpeft.demo.llama import train_tokenizer

    tokenizer = train_tokenizer(["Chief complaint: chest pain. History of present illness: 67 year old man."] * 20,
                                vocab_size=300)
    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 64), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def clinical_adapter(base: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    model.save_pretrained(out / "adapter", safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from clinpeft.config import DownstreamLoraSection
    from clinpeft.modeling.adapters import find_clinical_adapter
    from clinpeft.modeling.classifier import build_classifier, save_bundle
    from clinpeft.recipes import export

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_params = random_llama(tmp / "base", args.hidden, args.layers)
        clinical_adapter(tmp / "base", tmp / "clinical")
        clf = build_classifier(tmp / "base", "binary", 2, "clinical_frozen+downstream",
                               find_clinical_adapter(tmp / "clinical"), DownstreamLoraSection(r=8), "float32")
        save_bundle(clf, tmp / "run", {"base_model": str(tmp / "base"), "variant": "clinical_frozen+downstream",
                                       "task": "mor", "task_type": "binary", "labels": ["0", "1"],
                                       "max_seq_len": 512, "padding_side": "right"})
        del clf
        print(f"random LLaMA: hidden {args.hidden}, {args.layers} layers, {n_params / 1e6:.1f}M parameters; "
              "clinical LoRA r16 + downstream LoRA r8 on q_proj, v_proj; binary head")
        print("| export | dtype | folder MiB | weights MiB |\n|---|---|---|---|")
        for as_adapter in (False, True):
            for dtype in ("fp32", "bf16"):
                out = tmp / f"out-{as_adapter}-{dtype}"
                export.main(tmp / "run", out, dtype=dtype, as_adapter=as_adapter, progress=False)
                what = "task adapter (--as-adapter)" if as_adapter else "merged model"
                print(f"| {what} | {dtype} | {folder_mib(out):.2f} | {folder_mib(out, '*.safetensors'):.3f} |")
        # LLaMA-7B at bf16: the same arithmetic (2 bytes per weight)
        lora_7b = 32 * 2 * (16 + 8) * (4096 + 4096)  # layers x modules x (r1 + r2) x (d_in + d_out)
        head_7b = 4096 * 2
        print(f"LLaMA-7B, bf16: merged {6.74e9 * 2 / 2**30:.1f} GiB per task; task adapter "
              f"{(lora_7b + head_7b) * 2 / MIB:.1f} MiB per task ({lora_7b + head_7b:,} weights)")


if __name__ == "__main__":
    main()
