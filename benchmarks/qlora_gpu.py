"""QLoRA on a GPU: does LoRA train on a 4-bit base, and how much memory does it save?

    python benchmarks/qlora_gpu.py                     # a CUDA GPU with bitsandbytes (pip install 'clinpeft[gpu]')
    python benchmarks/qlora_gpu.py --quantization 8bit
    python benchmarks/qlora_gpu.py --cpu-smoke         # without a GPU: refuses in one line (exit 2)

A random-init model of Llama 3.2 1B's shape (1.24B parameters: hidden 2048, 16 layers, GQA 32/8
heads, vocabulary 128,256, tied embeddings) is saved once in bf16, then loaded twice through
clinpeft's own loader (`clinpeft.modeling.base.load_causal_lm`): as bf16 (LoRA) and quantized
(`model.quantization`, QLoRA: NF4 + double quantization, bf16 compute, prepare_model_for_kbit_training).
Each gets the same LoRA (r 16 on every attention and MLP projection) and trains `--steps` AdamW
steps on one fixed batch of token sequences with a repeating pattern (learnable even from random
weights). Prints, per mode, the first and last losses and the peak GPU memory of loading + training
(torch.cuda.max_memory_allocated), and checks that the loss fell. `--out FILE` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from clinpeft.errors import ClinpeftError
from clinpeft.modeling.base import check_quantization, load_causal_lm

# Llama 3.2 1B's config.json (clinpeft params preset llama-3.2-1b)
LLAMA_32_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                   rms_norm_eps=1e-5, tie_word_embeddings=True,
                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192})
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_base(path: Path, seed: int = 0) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_32_1B)).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    del model
    torch.cuda.empty_cache()


def batch(batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """Sequences that repeat a random 32-token pattern: the second and later periods are predictable."""
    generator = torch.Generator().manual_seed(seed)
    pattern = torch.randint(1000, 120000, (batch_size, 32), generator=generator)
    return pattern.repeat(1, seq_len // 32 + 1)[:, :seq_len].cuda()


def train(path: Path, quantization: str, steps: int, batch_size: int, seq_len: int, lr: float) -> dict:
    from peft import LoraConfig, get_peft_model

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.time()
    model = load_causal_lm(path, "bfloat16", "sdpa", quantization)
    loaded_gb = torch.cuda.memory_allocated() / 2**30
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids = batch(batch_size, seq_len)
    model.train()
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    torch.cuda.synchronize()
    result = {"quantization": quantization, "trainable_params": trainable, "losses": losses,
              "first_loss": losses[0], "last_loss": losses[-1],
              "loss_fell": sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5,
              "weights_gb": loaded_gb, "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
              "seconds": time.time() - started}
    del model, optimizer
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", choices=["4bit", "8bit"], default="4bit")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="only check that this machine can quantize (on a CPU: the one-line refusal)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        check_quantization(args.quantization)
    except ClinpeftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cpu_smoke:
        print(f"model.quantization={args.quantization} can run here")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llama-3.2-1b-random"
        build_base(path)
        results = [train(path, mode, args.steps, args.batch_size, args.seq_len, args.lr)
                   for mode in ("none", args.quantization)]
    print(f"{args.steps} LoRA steps (r16, all projections), batch {args.batch_size} x {args.seq_len} tokens, "
          f"random-init Llama 3.2 1B shape, {torch.cuda.get_device_name(0)}")
    for r in results:
        name = "bf16 LoRA" if r["quantization"] == "none" else f"{r['quantization']} QLoRA"
        print(f"{name:>11}: loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}, weights {r['weights_gb']:.2f} GiB, "
              f"peak {r['peak_gb']:.2f} GiB, {r['seconds']:.1f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if not all(r["loss_fell"] for r in results):
        print("error: the loss did not fall in every mode", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
