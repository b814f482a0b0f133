"""The run directory's contract: the files a run writes, named once here, and their readers.

    config.yaml          every training run: the resolved config (config.save_config)
    run.json             pretrain: parameters, perplexities, time, throughput
    metrics.json         finetune and evaluate: AUROC with intervals, history, time
    bundle.json          finetune: what rebuilds the classifier (modeling/classifier.py)
    labels.txt           finetune: the label vocabulary in output-unit order
    predictions.csv      finetune (test notes), evaluate and predict (their notes)
    predictions_val.csv  finetune: the val notes (the operating point's threshold)

Readers go through the reading layer (files.py): a missing, truncated, wrongly encoded or wrongly shaped file
is one line naming it. Writers stay with what writes them (rundir.write_json, the recipes).
"""

from __future__ import annotations

from pathlib import Path

from clinpeft.files import read_json, read_yaml

CONFIG = "config.yaml"
RUN_RECORD = "run.json"
METRICS = "metrics.json"
BUNDLE = "bundle.json"
LABELS = "labels.txt"
PREDICTIONS = "predictions.csv"
VAL_PREDICTIONS = "predictions_val.csv"
PROBE_DIR = "probe"  # a finetune run's linear probe: its own labels.txt and test predictions.csv (Table 3's row)

RECORD_HINT = "is this a finished clinpeft run directory? restore it or rerun the command"


def read_record(path: str | Path, keys=(), hint: str = RECORD_HINT) -> dict:
    """A JSON record of a run directory (run.json, metrics.json, bundle.json, clinpeft_*.json): a JSON object
    holding `keys`, or one line naming the file (`hint`: how to fix it)."""
    return read_json(path, dict, keys=keys, what="run record", hint=hint)


def read_config(run_dir: str | Path) -> dict:
    """A run's config.yaml as a tree ({} when the run has none: older runs, evaluate outputs)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    tree = read_yaml(path, what="run config", hint=RECORD_HINT)
    return tree if isinstance(tree, dict) else {}

