"""The `clinpeft` command: argparse and dispatch only. Each command validates its recipe, calls a
recipe module's main() and prints that module's summary() of the result.

Offline by default: the Hugging Face libraries are told not to reach the network
(HF_HUB_OFFLINE=1 and friends) unless CLINPEFT_ALLOW_NETWORK=1 is set.

Fast to start: recipe modules (torch, transformers, ...) are imported inside the command
functions, after the config is valid, so --help and a config error answer at once.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from clinpeft._version import __version__
from clinpeft.argtypes import count, fraction, seed
from clinpeft.errors import ClinpeftError, Stopped
from clinpeft.rundir import check_out_not_input, is_main_process, out_lock, set_command

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",  # quiet fork warnings from datasets.map
}

EPILOG = """\
the two steps of the paper:
  clinpeft pretrain configs/demo/pretrain_lora.yaml --out runs/clinical-lora
  clinpeft finetune configs/demo/finetune_lora.yaml variant=clinical_trainable+downstream \\
      clinical_adapter=runs/clinical-lora task.path=demo-out/data/tasks/mor --out runs/mor
  clinpeft report runs --out runs/report

use a trained run: score new notes, or export a standalone Hugging Face model
  clinpeft predict runs/mor --notes new_notes.csv --out scored/mor
  clinpeft export runs/mor --out exported/mor --dtype bf16

the paper's Table 3 grid (variants x tasks + BERT baselines), resumable:
  clinpeft experiment configs/demo/table3.yaml --out t3

everything at once on a tiny model (CPU, a few minutes):
  clinpeft demo --out demo-out
  clinpeft demo --out demo-out --methods all      # Table 2 with all six pretraining methods

trainable parameters of a recipe, without weights (the paper's Table 2 counts):
  clinpeft params llama-7b configs/llama-7b/pretrain_prefix_tuning.yaml

hyperparameter search (Optuna GP, resumable; --workers N, --storage postgresql://... for several machines):
  clinpeft sweep configs/demo/sweep_lora.yaml --out sweeps/demo-mor --trials 6

the recipes shipped with clinpeft (their configs/... paths work from any directory), and the named base models:
  clinpeft recipes
  clinpeft bases
"""

# `clinpeft prepare DATASET`: each builder module registers its own subcommand with
# add_parser(subparsers), which sets `run=<function(args, progress) -> None>` as a default.
PREPARE_MODULES: tuple[str, ...] = ("clinpeft.prepare.notes", "clinpeft.prepare.mimic3", "clinpeft.prepare.pmv")


def set_offline() -> None:
    if os.environ.get("CLINPEFT_ALLOW_NETWORK") != "1":
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)


def quiet_library_deprecations() -> None:
    """Deprecation notices between our libraries that a user cannot act on: peft still calls transformers'
    old `is_gradient_checkpointing` (renamed activation checkpointing in 5.x), which printed a FutureWarning
    into every training command's output, even before a one-line error. Other warnings still show."""
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def print_lines(lines: list[str], file=None) -> None:
    """A command's result lines, on stdout; under torchrun / accelerate launch (every process runs the recipe)
    only the main process prints them, once."""
    if file is None and not is_main_process():
        return
    for line in lines:
        print(line, file=file or sys.stdout)


def hf_progress_bars(progress: bool) -> None:
    """The Hugging Face libraries' own bars (weights loading, datasets.map) follow --quiet."""
    from clinpeft.training.runtime import set_progress_bars

    set_progress_bars(progress)


# --------------------------------------------------------------------------- shared arguments


def add_recipe_args(parser: argparse.ArgumentParser, recipe_help: str, overrides_help: str) -> None:
    parser.add_argument("recipe", help=recipe_help + " (`clinpeft recipes` lists the bundled ones)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)


def add_workflow_args(parser: argparse.ArgumentParser, recipe_help: str) -> None:
    add_recipe_args(parser, recipe_help,
                    "config overrides, e.g. train.lr=1e-4 peft.r=8 (YAML values: lists as [a,b])")
    add_out_args(parser)
    parser.add_argument("--restart", action="store_true",
                        help="discard an unfinished OUT.partial/ run instead of resuming it")


def add_out_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="run directory to create (written whole, or not at all)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    add_quiet_arg(parser)


def add_quiet_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------- the commands
# Each command: add_<command>(subparsers) builds its parser; run_<command>(args, progress) -> exit code.


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the paper's two steps on a real small LLaMA and synthetic notes",
                       description="Convert (or reuse) the real base SmolLM2-135M, write a synthetic clinical "
                       "world, pretrain a clinical LoRA, fine-tune head only, + LoRA and the clinical variants, add "
                       "TF-IDF and linear-probe reference rows, and print Table 2 and Table 3 (~25 min on 2 CPU "
                       "cores). Synthetic numbers show the method in a world built for its question, not clinical "
                       "results.")
    p.add_argument("--out", required=True,
                   help="demo directory (data/, pretrain/, finetune/, reference/, report/); rerunning reuses "
                   "finished runs; held by one demo at a time")
    p.add_argument("--quick", action="store_true",
                   help="the tiny 64-wide base on small data (under 2 minutes): the pipeline, not the method")
    p.add_argument("--full", action="store_true",
                   help="the full grid: both tasks (MOR, PMV), a 5x larger pretraining corpus, 2 epochs "
                   "(about 1.5 hours)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the synthetic data and of training")
    p.add_argument("--methods", default="lora", metavar="M[,M...]|all",
                   help="pretraining methods for Table 2 (lora, prefix_tuning, prompt_tuning, p_tuning, "
                   "adaption_prompt, full, or all; default lora); fine-tuning always uses the clinical LoRA")
    add_quiet_arg(p)
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.recipes import demo

    methods = demo.parse_methods(args.methods)
    hf_progress_bars(progress)
    result = demo.main(args.out, quick=args.quick, full=args.full, seed=args.seed, progress=progress,
                       methods=methods)
    print_lines(demo.summary(result, args.out))
    return 0


def add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="step 1: domain-adaptive pretraining of a clinical adapter (Table 2)",
                       description="Train a PEFT adapter on clinical notes on top of a local causal LM; "
                       "writes adapter/, config.yaml and run.json (parameters, perplexities, time).")
    add_workflow_args(p, "YAML recipe, e.g. configs/demo/pretrain_lora.yaml")
    p.set_defaults(handler=run_pretrain)


def run_pretrain(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.config import PretrainConfig, load_config

    config = load_config(PretrainConfig, args.recipe, args.overrides)
    check_out_not_input(args.out, [config.model.base, *config.data.paths])
    from clinpeft.recipes import pretrain

    hf_progress_bars(progress)
    result = pretrain.main(config, args.out, overwrite=args.overwrite, progress=progress, restart=args.restart)
    print_lines(pretrain.summary(result, args.out))
    return 0


def add_params(sub) -> None:
    p = sub.add_parser("params", help="trainable / total parameters of a pretraining recipe, without loading weights",
                       description="Build MODEL on the meta device (no weights, no memory), apply the recipe's "
                       "PEFT method and print trainable parameters, total parameters and the percentage "
                       "(the paper's Table 2 column).")
    p.add_argument("model", help="a local model directory (its config.json), demo, or a preset: llama-7b, llama-13b")
    add_recipe_args(p, "pretraining recipe, e.g. configs/llama-7b/pretrain_lora.yaml",
                    "config overrides, e.g. peft.r=8")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: trainable_params, total_params, percent")
    p.set_defaults(handler=run_params)


def run_params(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.config import PretrainConfig, load_config

    config = load_config(PretrainConfig, args.recipe, args.overrides)
    from clinpeft.recipes import params  # transformers and peft, on the meta device

    print_lines(params.summary(params.main(args.model, config), None, as_json=args.json))
    return 0


def add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="step 2: downstream fine-tuning for a clinical task (Table 3)",
                       description="Train a classifier (variant: head, lora, clinical_frozen, "
                       "clinical_frozen+downstream, clinical_trainable, clinical_trainable+downstream, full; "
                       "model.base may also be a BERT-family encoder, fine-tuned with variant full) on a task "
                       "directory (train/val/test.csv with id,text,label + labels.txt); writes the model bundle, "
                       "metrics.json and predictions.csv.")
    add_workflow_args(p, "YAML recipe, e.g. configs/demo/finetune_lora.yaml")
    p.set_defaults(handler=run_finetune)


def run_finetune(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.config import FinetuneConfig, load_config

    config = load_config(FinetuneConfig, args.recipe, args.overrides)
    check_out_not_input(args.out, [config.model.base, config.task.path, config.clinical_adapter])
    from clinpeft.recipes import finetune

    hf_progress_bars(progress)
    result = finetune.main(config, args.out, overwrite=args.overwrite, progress=progress, restart=args.restart)
    print_lines(finetune.summary(result, args.out))
    return 0


def add_experiment(sub) -> None:
    p = sub.add_parser("experiment",
                       help="the Table 3 grid: base models x variants x tasks (+ encoder baselines), resumable",
                       description="Run every cell of a grid recipe into OUT/<model>/<variant>/<task>/ (each a "
                       "finetune run directory), pretraining the clinical adapters it names first, then write "
                       "OUT/report/table3.md/.csv. Rerunning the same command skips finished cells and retries "
                       "failed ones (their errors: OUT/<model>/<variant>/<task>.failed.json, OUT/experiment.json).")
    add_recipe_args(p, "grid recipe, e.g. configs/demo/table3.yaml",
                    "grid overrides, e.g. data.tasks=[mor,pmv] 'finetune.overrides=[train.epochs=1]'")
    p.add_argument("--out", required=True, help="experiment directory; an existing one is resumed")
    add_quiet_arg(p)
    p.set_defaults(handler=run_experiment)


def run_experiment(args: argparse.Namespace, progress: bool) -> int:
    """Exit 1 when a cell failed (listed on stderr; a rerun retries it)."""
    from clinpeft.config import load_config
    from clinpeft.recipes import experiment  # the grid's schema; torch comes with its first cell

    grid = load_config(experiment.ExperimentConfig, args.recipe, args.overrides)
    hf_progress_bars(progress)
    state = experiment.main(grid, args.out, args.recipe, progress=progress)
    print_lines(experiment.summary(state, args.out))
    failures = experiment.failures(state, args.out)
    print_lines(failures, file=sys.stderr)
    return 1 if failures else 0


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="re-score a saved fine-tuning run on a CSV of labelled notes",
                       description="Rebuild a fine-tuned classifier from its run directory and score a CSV "
                       "(id,text,label).")
    p.add_argument("run", help="a `clinpeft finetune` run directory")
    p.add_argument("--data", required=True, help="CSV with id,text,label (labels from the run's labels.txt)")
    p.add_argument("--base", help="base model path, if it moved since training")
    p.add_argument("--batch-size", type=count(1), default=16)
    add_out_args(p)
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.recipes import evaluate

    hf_progress_bars(progress)
    result = evaluate.main(args.run, args.data, args.out, base=args.base, batch_size=args.batch_size,
                           overwrite=args.overwrite, progress=progress)
    print_lines(evaluate.summary(result, args.out))
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="score unlabelled notes with a saved fine-tuning run",
                       description="Write OUT/predictions.csv (id, the predicted class or labels, one "
                       "probability column per label) and OUT/labels.json (column -> label) for the notes "
                       "of a CSV, CSV.GZ or JSONL.")
    p.add_argument("run", help="a `clinpeft finetune` run directory")
    p.add_argument("--notes", required=True, help="CSV, CSV.GZ or JSONL of notes (a label column is ignored)")
    p.add_argument("--text-column", default="text", help="column holding the note text (default: text)")
    p.add_argument("--id-column", help="column of note ids (default: id, and when the file has no id column: row "
                   "numbers 1, 2, ...; a column named here must exist)")
    p.add_argument("--batch-size", type=count(1), default=16, help="windows per forward pass (default: 16)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available, else cpu)")
    p.add_argument("--threshold", type=fraction, default=0.5,
                   help="multilabel: labels with probability >= this are predicted (default: 0.5)")
    p.add_argument("--base", help="base model path, if it moved since training")
    add_out_args(p)
    p.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.recipes import predict

    hf_progress_bars(progress)
    result = predict.main(args.run, args.notes, args.out, text_column=args.text_column, id_column=args.id_column,
                          batch_size=args.batch_size, device=args.device, threshold=args.threshold, base=args.base,
                          overwrite=args.overwrite, progress=progress)
    print_lines(predict.summary(result, args.out))
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="merge a run's LoRAs into a standalone Hugging Face model",
                       description="Merge the clinical and downstream LoRA of a finetune run (or the clinical LoRA "
                       "of a pretrain run) into the base weights and write a model directory that transformers "
                       "alone loads (safetensors, config with id2label, tokenizer).")
    p.add_argument("run", help="a `clinpeft finetune` (or `clinpeft pretrain`) run directory")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="weights' dtype (default: fp32)")
    p.add_argument("--base", help="base model path, if it moved since training")
    p.add_argument("--as-adapter", action="store_true",
                   help="write one peft LoRA adapter with the head (clinical + downstream LoRA concatenated, rank "
                   "r1+r2) instead of a merged model: many tasks served over one base")
    add_out_args(p)
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.recipes import export

    hf_progress_bars(progress)
    result = export.main(args.run, args.out, dtype=args.dtype, base=args.base, overwrite=args.overwrite,
                         progress=progress, as_adapter=args.as_adapter)
    print_lines(export.summary(result, args.out))
    return 0


def add_explain(sub) -> None:
    p = sub.add_parser("explain", help="which sentences drove a fine-tuned run's predictions (HTML page)",
                       description="Sentence occlusion on a CSV of notes (id,text[,label]): OUT/index.html with each "
                       "note highlighted (red pushes the predicted label up, blue down) and the top sentences per "
                       "label; OUT/attributions.json.")
    p.add_argument("run", help="a `clinpeft finetune` run directory")
    p.add_argument("--notes", required=True, help="CSV with id,text (label optional), e.g. a task's test.csv")
    p.add_argument("--max-notes", type=count(1), default=20, metavar="N", help="explain the first N notes (default 20)")
    p.add_argument("--base", help="base model path, if it moved since training")
    p.add_argument("--batch-size", type=count(1), default=16)
    add_out_args(p)
    p.set_defaults(handler=run_explain)


def run_explain(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.recipes import explain

    hf_progress_bars(progress)
    result = explain.main(args.run, args.notes, args.out, max_notes=args.max_notes, base=args.base,
                          batch_size=args.batch_size, overwrite=args.overwrite, progress=progress)
    print_lines(explain.summary(result, args.out))
    return 0


def add_report(sub) -> None:
    p = sub.add_parser("report", help="paper-style Table 2 / Table 3 from run directories",
                       description="Collect every run under the given directories and write table2.md/.csv "
                       "(pretraining) and table3.md/.csv (fine-tuning).")
    p.add_argument("runs", nargs="+", help="run directories, or folders above them")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--compare", metavar="ROW",
                   help="add the paired bootstrap p-value of every Table 3 cell against this row "
                        "(its name as printed, or a unique part of it)")
    p.add_argument("--bootstrap-resamples", type=count(0), default=1000, metavar="N",
                   help="resamples of the test notes for the 95%% intervals and p-values (default 1000; 0: none)")
    p.add_argument("--bootstrap-seed", type=seed, default=0, metavar="SEED", help="seed of the resampling (default 0)")
    p.add_argument("--subgroups", default="", metavar="COLS",
                   help="comma-separated task CSV columns (e.g. gender,age_group): AUROC, AUPRC and calibration per "
                        "group with intervals and the largest gap, in subgroups.md")
    p.add_argument("--specificity", type=fraction, default=0.9,
                   help="operating point of binary tasks: threshold reaching this specificity on validation, "
                        "applied to test (default 0.9)")
    p.add_argument("--min-positives", type=count(1), default=5, metavar="N",
                   help="flag classes with fewer test examples than this (default 5)")
    p.add_argument("--html", action="store_true", help="also write index.html: every table, plot and a model card "
                   "per run in one self-contained page")
    add_quiet_arg(p)
    p.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.recipes import report

    written = report.main(args.runs, args.out, compare=args.compare, n_resamples=args.bootstrap_resamples,
                          seed=args.bootstrap_seed, progress=progress, subgroups=args.subgroups,
                          min_positives=args.min_positives, specificity=args.specificity, html=args.html)
    print_lines(report.summary(written, args.out))
    return 0


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="Bayesian hyperparameter search (Optuna) over a pretrain or finetune recipe",
                       description="Tune a recipe over the paper's search spaces (A.2/B.2; narrowed or replaced by "
                       "the recipe's search: section) with Optuna: pretrain minimises validation perplexity, "
                       "finetune maximises validation AUROC (macro over sweep.tasks). Each trial is a run directory "
                       "under --out; writes best.yaml, trials.csv, history.png, importances.png, sweep.md. "
                       "Rerunning the same command resumes the study up to --trials.")
    add_recipe_args(p, "YAML recipe with optional search: and sweep: sections, e.g. configs/demo/sweep_lora.yaml",
                    "config overrides, and search.KEY=[a,b] / sweep.KEY=VALUE for the sweep itself")
    p.add_argument("--out", required=True, help="sweep directory (created, or resumed when it holds this sweep)")
    p.add_argument("--trials", type=count(1), default=20,
                   help="trials in the study in total, resumed ones included (complete, pruned or failed; trials "
                   "of killed workers are retried, not counted); default 20, the paper's")
    p.add_argument("--sampler", choices=["gp", "tpe", "random"], default="gp",
                   help="gp: Gaussian-process Bayesian optimisation (the paper's; default), tpe, random")
    p.add_argument("--seed", type=seed, default=0, help="sampler seed")
    p.add_argument("--storage", help="Optuna storage URL shared by several machines, e.g. "
                   "postgresql://user:pw@host/db (default: the journal file DIR/study.journal)")
    p.add_argument("--study", help="study name (default: the --out directory's name); the same on every machine")
    p.add_argument("--workers", type=count(1), default=1,
                   help="local worker processes on the same study (one GPU each when there are GPUs)")
    p.add_argument("--pruner", choices=["none", "median"], default="none",
                   help="finetune only: stop a trial whose per-epoch val AUROC is below the median of earlier trials")
    p.add_argument("--overwrite", action="store_true", help="delete --out (and the study) and start over")
    add_quiet_arg(p)
    p.add_argument("--worker", type=count(0), help=argparse.SUPPRESS)  # set in the processes --workers starts
    p.set_defaults(handler=run_sweep)


def run_sweep(args: argparse.Namespace, progress: bool) -> int:
    """The worker processes that --workers starts (args.worker set) print nothing: their parent sums up."""
    from clinpeft.recipes import sweep

    result = sweep.main(args.recipe, args.overrides, out=args.out, trials=args.trials, sampler=args.sampler,
                        seed=args.seed, storage=args.storage, study_name=args.study, workers=args.workers,
                        pruner=args.pruner, overwrite=args.overwrite, progress=progress, worker=args.worker)
    if args.worker is None:
        print_lines(sweep.summary(result, args.out))
    return 0


def add_recipes(sub) -> None:
    p = sub.add_parser("recipes", help="list the recipes shipped with clinpeft (usable from any directory)",
                       description="List the bundled recipes, one per line: the path to give pretrain, finetune, "
                       "params, sweep or experiment (looked up in the installed package when no such local file "
                       "exists), and what the recipe is for.")
    p.set_defaults(handler=run_recipes)


def run_recipes(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.recipes import bundled

    print_lines(bundled.summary(bundled.main()))
    return 0


def add_bases(sub) -> None:
    p = sub.add_parser("bases", help="list the named base models (model.base=NAME) and where each comes from",
                       description="List the base models model.base accepts by name: the tiny demo models (built "
                       "on first use) and real models that a Python package ships as a GGUF file (dequantized "
                       "once into $CLINPEFT_HOME/gguf/). model.base also takes any local Hugging Face folder, a "
                       ".gguf file, or a folder holding one.")
    p.set_defaults(handler=run_bases)


def run_bases(args: argparse.Namespace, progress: bool) -> int:
    from clinpeft.modeling.gguf import bases_table  # no torch: reads package metadata only

    for row in bases_table():
        state = "" if row["installed"] else f"  [not installed: {row['install']}]"
        print(f"{row['name']:<14} {row['source']}{state}")
    return 0


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="build the pretraining corpus or the task datasets from raw MIMIC files",
                       description="Turn raw clinical tables into what `pretrain` and `finetune` read.")
    builders = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in PREPARE_MODULES:
        importlib.import_module(name).add_parser(builders)
    p.set_defaults(handler=run_prepare)


def run_prepare(args: argparse.Namespace, progress: bool) -> int:
    args.run(args, progress)  # set by the DATASET builder's add_parser
    return 0


COMMANDS = (add_demo, add_pretrain, add_params, add_finetune, add_experiment, add_evaluate, add_predict,
            add_export, add_explain, add_report, add_sweep, add_recipes, add_bases, add_prepare)  # --help order


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="clinpeft",
        description="Parameter-efficient adaptation of LLaMA-family models to clinical notes "
        "(domain-adaptive pretraining, then downstream clinical outcome prediction).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clinpeft {__version__}")
    parser.add_argument("--shared", action="store_true",
                        help="outputs readable by your group and others (umask 022); default: by you only "
                        "(umask 077: folders 0700, files 0600), or CLINPEFT_UMASK=027 (any place on the line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse, with `key=value` overrides accepted after the options too
    (`clinpeft finetune R.yaml --out X train.lr=1e-4`): argparse alone ends the positional
    overrides at the first option and would reject the rest."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    late = [item for item in extra if "=" in item and not item.startswith("-")]
    if late and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *late]
        extra = [item for item in extra if item not in late]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


# the options of each command that name files or folders it reads: --out may be none of them, inside one or
# around one (rundir.check_out_not_input); pretrain and finetune add their config's paths in run_pretrain/finetune
INPUT_OPTIONS = ("run", "data", "notes", "base", "input", "discharge", "radiology", "mimic_dir",
                 "split_lists", "admission_notes", "labels")


# the commands whose --out is one output folder (experiment, sweep and demo: a folder of runs they resume)
OUT_COMMANDS = ("pretrain", "finetune", "evaluate", "predict", "export", "explain", "report", "prepare")
# ... and those held by one process at a time: an experiment's and a demo's folder of runs too (a second one on it
# would race the first for its runs and both write its report); a sweep's --out is shared by its workers by design
LOCKED_COMMANDS = (*OUT_COMMANDS, "experiment", "demo")


def command_inputs(args: argparse.Namespace) -> list:
    found = []
    for name in INPUT_OPTIONS:
        value = getattr(args, name, None)
        found.extend(value if isinstance(value, list) else [value])
    return [value for value in found if value is not None]


def run_command(args: argparse.Namespace) -> int:
    """The command's exit code: 0, or 1 when part of it failed (experiment cells)."""
    command = args.command + (f" {args.dataset}" if getattr(args, "dataset", None) else "")
    set_command(command)  # recorded in every output it writes; --overwrite replaces only such outputs
    if args.command in OUT_COMMANDS:
        check_out_not_input(args.out, command_inputs(args), containers=getattr(args, "runs", None) or ())
    if args.command in LOCKED_COMMANDS:
        with out_lock(args.out):  # from the start: a second writer is refused before any work
            return args.handler(args, not getattr(args, "quiet", False))
    return args.handler(args, not getattr(args, "quiet", False))


def _stop(signum, frame):
    raise Stopped(signum)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, `error: clinpeft CMD: argument --x: ...` (exit 2), like every other
    error: no usage block above it. The sub-commands' parsers are of this class too (add_subparsers)."""

    def error(self, message: str):
        # "argument --batch-size: 0 is out of range; ..." -> "--batch-size 0 is out of range; ..." (the option as typed)
        option, sep, rest = message.removeprefix("argument ").partition(": ")
        if message.startswith("argument ") and sep:
            message = f"{option.split('/')[0]} {rest}"
        print(f"error: {self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def output_umask(shared: bool) -> int:
    """Clinical outputs are private by default (adapters can memorise text, predictions carry admission ids):
    umask 077 (folders 0700, files 0600); `--shared`: 022; CLINPEFT_UMASK (octal, e.g. 027) overrides both."""
    value = os.environ.get("CLINPEFT_UMASK", "").strip()
    if value:
        try:
            mask = int(value, 8)
        except ValueError:
            mask = -1
        if not 0 <= mask <= 0o777:
            raise ClinpeftError(f"CLINPEFT_UMASK={value!r}: expected an octal umask such as 077 or 027")
        return mask
    return 0o022 if shared else 0o077


def main(argv: list[str] | None = None) -> int:
    set_offline()
    quiet_library_deprecations()
    argv = list(sys.argv[1:] if argv is None else argv)
    shared = "--shared" in argv  # accepted anywhere on the line, not only before the command
    try:
        args = parse_args([a for a in argv if a != "--shared"])
    except SystemExit as exc:  # --help, --version (0), or the one-line usage error (2)
        return exc.code if isinstance(exc.code, int) else 0
    from clinpeft.errors import Interrupted

    try:
        previous = os.umask(output_umask(shared))  # inherited by sweep workers and everything written
    except ClinpeftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import signal
    import threading

    # SIGTERM anywhere (tokenising, scoring, writing): an exception, so the cleanup of OUT.partial/ runs; SIGINT:
    # Python's KeyboardInterrupt, whatever an in-process caller had set. Training replaces both with its
    # checkpointing handler while it trains (training/checkpointing.Checkpointing); the caller's come back at the end
    handlers = ({signal.SIGTERM: signal.signal(signal.SIGTERM, _stop),
                 signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
                if threading.current_thread() is threading.main_thread() else {})
    try:
        return run_command(args)
    except Interrupted as exc:  # SIGTERM / SIGINT during training, after its checkpoint
        print(f"error: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except Stopped as exc:
        print(f"error: {signal.Signals(exc.signum).name}: stopped; no output was written (an unfinished training "
              "run stays in OUT.partial/ when it has a checkpoint: rerun the same command to resume)", file=sys.stderr)
        return 128 + exc.signum
    except ClinpeftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or forbidden folder: one line, not a traceback
        if exc.errno not in DISK_ERRORS:
            raise
        where = exc.filename or "writing the output"
        print(f"error: {where}: {os.strerror(exc.errno)}; free space on that disk or choose another --out "
              "(an unfinished training run stays resumable in OUT.partial/)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: SIGINT: interrupted; no finished run directory was written (an unfinished training run stays in "
              "OUT.partial/ when it has a checkpoint: rerun to resume)", file=sys.stderr)
        return 130
    finally:
        os.umask(previous)
        set_command(None)
        for signum, handler in handlers.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, handler)


if __name__ == "__main__":
    raise SystemExit(main())
