"""Benchmark: what checkpointing costs per optimizer step, on the demo's clinical LoRA pretraining.

    python benchmarks/checkpoint_overhead.py --steps 24 --every 1

Runs configs/demo/pretrain_lora.yaml on the quick demo data (the demo base model is built once into
CLINPEFT_HOME) twice for --steps optimizer steps: without checkpoints, and with a checkpoint every
--every steps (each one the HF Trainer's: adapter, optimizer, scheduler, RNG, trainer state, plus
clinpeft's trainable.safetensors). Prints the time one checkpoint takes (measured around the save
inside the run, from run.json's checkpoint_time_s / checkpoints_written), the training time per
step of each run, and the checkpoint's size. Not a timed test: numbers depend on the machine and on
its load (printed with them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from clinpeft.config import PretrainConfig, load_config
from clinpeft.demo.synthetic import write_demo_data
from clinpeft.recipes import pretrain
from clinpeft.rundir import checkpoint_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    data = write_demo_data(work / "data", size="quick")
    recipe = Path(pretrain.__file__).resolve().parents[1] / "configs" / "demo" / "pretrain_lora.yaml"
    common = [f"data.paths=[{data['corpus']['discharge']},{data['corpus']['radiology']}]",
              f"train.max_steps={args.steps}", "eval.base_model=false", "eval.train_max_blocks=8",
              "train.checkpoint_minutes=0"]
    print(f"load average (1 min): {os.getloadavg()[0]:.1f}")
    for every in (0, args.every):
        config = load_config(PretrainConfig, recipe, [*common, f"train.checkpoint_every={every}"])
        out = work / f"every-{every}"
        started = time.perf_counter()
        result = pretrain.main(config, out, progress=False)
        wall = time.perf_counter() - started
        per_step = result["train_time_s"] / result["optimizer_steps"]
        line = f"checkpoint_every={every}: train {per_step * 1000:.0f} ms/step (wall {wall:.0f} s)"
        if every:
            per_save = result["checkpoint_time_s"] / max(result["checkpoints_written"], 1)
            size = sum(f.stat().st_size for f in (out / "adapter").rglob("*") if f.is_file())
            line += (f", {result['checkpoints_written']} checkpoints, {per_save * 1000:.0f} ms each "
                     f"({per_save / every * 1000:.0f} ms per step), adapter {size / 1e6:.1f} MB")
        print(line)
        assert not checkpoint_dir(out).exists()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
