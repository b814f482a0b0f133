"""The whole two-step framework on a tiny model and synthetic notes, from one command.

    clinpeft demo --out demo-out            # about 10 minutes on a 2-core CPU
    clinpeft demo --out demo-out --quick    # about 2 minutes
    clinpeft demo --out demo-out --methods all   # Table 2 with all six pretraining methods

1. the demo base model: a tiny LLaMA trained on general English (built once, cached);
2. synthetic MIMIC-style data: a MIMIC-IV-Note-shaped corpus and the five outcome tasks;
3. domain-adaptive pretraining of a clinical LoRA, and of the other `--methods` (Table 2);
4. downstream fine-tuning of LOS, MOR, PMV, DIAG and PROC with three variants (Table 3);
5. the report: Table 2 and Table 3 in demo-out/report/.

Each step is an ordinary run directory made by the same recipes as `clinpeft pretrain` /
`finetune`, from the recipes in configs/demo/. A rerun skips the runs that already finished.
The numbers prove the pipeline, not clinical performance: the data are synthetic.
"""

from __future__ import annotations

import time
from pathlib import Path

from clinpeft.config import BUNDLED_CONFIGS, FinetuneConfig, PretrainConfig, load_config
from clinpeft.data.definitions import TASKS
from clinpeft.demo.llama import ensure_demo_base
from clinpeft.demo.synthetic import write_demo_data
from clinpeft.errors import ClinpeftError
from clinpeft.methods import METHOD_NAMES
from clinpeft.reporting.report import write_report
from clinpeft.rundir import atomic_run_dir

CONFIGS = BUNDLED_CONFIGS / "demo"
VARIANTS = ("lora", "clinical_frozen+downstream", "clinical_trainable+downstream")

# --quick: less data (size "quick") and shorter training; same recipes otherwise.
QUICK_PRETRAIN = ["train.epochs=1", "data.max_seq_len=128"]
QUICK_FINETUNE = ["task.max_seq_len=128"]


def parse_methods(text: str) -> list[str]:
    """`--methods`: "all" or a comma list of pretraining methods -> list, LoRA first (step 4 needs it)."""
    methods = list(METHOD_NAMES) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ClinpeftError(f"--methods: unknown method(s) {', '.join(unknown)}; "
                            f"use all or some of {', '.join(METHOD_NAMES)}")
    return ["lora"] + [m for m in dict.fromkeys(methods) if m != "lora"]


def step(message: str) -> None:
    print(f"\n== {message}", flush=True)


def demo_data(out: Path, quick: bool, seed: int) -> Path:
    """Synthetic corpus + tasks under out/data (reused when already there)."""
    data = out / "data"
    if not (data / "tasks" / TASKS[-1] / "labels.txt").is_file():
        with atomic_run_dir(data, overwrite=True) as tmp:
            write_demo_data(tmp, size="quick" if quick else "default", seed=seed)
    return data


def main(out: str | Path, *, quick: bool = False, seed: int = 0, progress: bool = True,
         methods: list[str] | tuple = ("lora",)) -> dict:
    from clinpeft.recipes import finetune, pretrain  # torch: imported once the arguments are known to be good

    started = time.time()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClinpeftError(f"--out {out} is an existing file, not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    seed_override = [f"train.seed={seed}"]

    step("1/5 demo base model (tiny LLaMA trained on general English; cached after the first run)")
    base = ensure_demo_base(progress=progress)
    print(f"base model: {base}")

    step(f"2/5 synthetic MIMIC-style data ({'quick' if quick else 'default'} size)")
    data = demo_data(out, quick, seed)
    corpus = [data / "corpus" / "discharge.csv.gz", data / "corpus" / "radiology.csv.gz"]
    print(f"data: {data}")

    methods = parse_methods(",".join(methods))
    step(f"3/5 domain-adaptive pretraining: {', '.join(methods)}")
    for method in methods:  # each from configs/demo/pretrain_<method>.yaml
        run_dir = out / "pretrain" / method
        if (run_dir / "run.json").is_file():
            print(f"reusing {run_dir}")
            continue
        config = load_config(PretrainConfig, CONFIGS / f"pretrain_{method}.yaml", [
            f"model.base={base}", f"data.paths=[{', '.join(map(str, corpus))}]", *seed_override,
            *(QUICK_PRETRAIN if quick else [])])
        result = pretrain.main(config, run_dir, overwrite=True, progress=progress)
        print(f"{method}: test perplexity: base model {result['base_test_ppl']:.2f} -> {result['test_ppl']:.2f}")
    clinical = out / "pretrain" / "lora"  # the paper fine-tunes on the clinical LoRA

    step(f"4/5 downstream fine-tuning: {len(TASKS)} tasks x {len(VARIANTS)} variants")
    for variant in VARIANTS:
        recipe = CONFIGS / ("finetune_lora.yaml" if variant == "lora" else "finetune_clinical.yaml")
        for task in TASKS:
            run_dir = out / "finetune" / variant / task
            if (run_dir / "metrics.json").is_file():
                continue
            config = load_config(FinetuneConfig, recipe, [
                f"model.base={base}", f"variant={variant}", f"clinical_adapter={clinical}",
                f"task.path={data / 'tasks' / task}", *seed_override, *(QUICK_FINETUNE if quick else [])])
            result = finetune.main(config, run_dir, overwrite=True, progress=progress)
            print(f"{variant:>30} {task:>4}: test AUROC {result['test']['auroc']:.3f}")

    step("5/5 report")
    written = write_report([out / "pretrain", out / "finetune"], out / "report", html=True,
                           subgroups=["gender", "age_group"])
    return {"wall_time_s": time.time() - started, "report": written}


def summary(result: dict, out: str | Path) -> list[str]:
    """Table 2 and Table 3, the time taken, and what the numbers mean."""
    tables = ["\n" + result["report"][name].read_text() for name in ("table2.md", "table3.md")]
    return [*tables, f"demo finished in {result['wall_time_s'] / 60:.1f} min; tables in {Path(out) / 'report'}",
            "Synthetic data: these numbers show the pipeline works, not how a model does on real notes."]
