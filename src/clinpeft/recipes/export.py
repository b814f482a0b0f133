"""Export a trained run as a standalone Hugging Face model directory (no clinpeft, no peft needed).

    clinpeft export runs/mor-ct-ds --out exported/mor --dtype bf16
    clinpeft export runs/clinical-lora --out exported/clinical-llama      # a pretraining run
    clinpeft export runs/mor-ct-ds --as-adapter --out adapters/mor        # one peft LoRA adapter for the task

A finetune run: the clinical and downstream LoRAs (DoRA and rsLoRA included) are merged into the base
weights with peft's merge_and_unload, and the classifier is written with its head, config (id2label,
label2id, pad_token_id, problem_type) and tokenizer (pad token set): a plain
`AutoModelForSequenceClassification.from_pretrained(DIR)` reproduces the bundle's logits. A
pretraining run: the clinical LoRA merged into an `AutoModelForCausalLM`.

--as-adapter (a finetune run): no merge; the clinical and downstream LoRAs concatenated into one peft LoRA
adapter with the head in modules_to_save (modeling/task_adapter.py), for serving many tasks over one base.

Every classifier export also writes `serving.json`: how a server must pool the note for this run's
head (vLLM's pooler setting `seq_pooling_type`: LAST, or MEAN for a run trained with model.pooling=mean),
the activation (softmax, or a sigmoid per label for multilabel tasks) and a `vllm serve` command. A
mean-pooled run exports the same standard folder: transformers' own forward reads the last token, so
score it with `clinpeft.inference.load_exported(DIR)` (transformers alone: the final hidden states
averaged over the note's tokens, then the head) or a server set to MEAN pooling.

Refused, with one line saying why:
- prompt methods (prompt tuning, p-tuning, prefix tuning) and adaption prompt: they are not weight
  updates but extra tokens or gated attention prompts computed at run time; there is nothing to merge,
  serve such runs through clinpeft (`clinpeft predict`, `clinpeft.load`).

The exported model reads one window of max_seq_len tokens: a run trained with task.long_notes=chunks
needs the caller to cut notes into windows and pool their logits (clinpeft_export.json records how;
`load_exported` does it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from clinpeft._version import __version__
from clinpeft.bases import demo_built
from clinpeft.errors import ClinpeftError
from clinpeft.run_files import BUNDLE, LABELS, RUN_RECORD, read_record
from clinpeft.rundir import atomic_run_dir, check_out_dir, write_json

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
MERGEABLE = {"LORA"}  # peft types whose weights fold into the base (DoRA/rsLoRA are LoRA flags)


def peft_types(adapter_dirs: list[Path]) -> list[str]:
    return [str(read_record(d / "adapter_config.json").get("peft_type")) for d in adapter_dirs]


def refuse_unmergeable(run: Path, types: list[str]) -> None:
    bad = [t for t in types if t not in MERGEABLE]
    if bad:
        raise ClinpeftError(f"{run}: its {bad[0].lower()} adapter cannot be merged into the base weights (prompt "
                            "methods and adaption prompt add tokens or gated attention prompts at run time, not "
                            "weight updates); serve it through clinpeft: `clinpeft predict` or clinpeft.load(RUN)")


def main(run: str | Path, out: str | Path, *, dtype: str = "fp32", base: str | None = None, overwrite: bool = False,
         progress: bool = True, as_adapter: bool = False) -> dict:
    """Merge and write `run` into `out` (written whole, or not at all). Returns clinpeft_export.json.

    as_adapter: write one peft LoRA adapter (with the head) instead of a merged model (finetune runs)."""
    run = Path(run)
    if dtype not in DTYPES:
        raise ClinpeftError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if not run.is_dir():
        raise ClinpeftError(f"{run}: no such directory; give a `clinpeft finetune` or `clinpeft pretrain` run")
    check_out_dir(out, overwrite)
    base = demo_built(base, progress)  # --base demo: the built demo folder (the loader knows no demo)
    if as_adapter:
        if not (run / BUNDLE).is_file():
            raise ClinpeftError(f"{run}: --as-adapter ships a finetune run's LoRAs and head as one adapter; this is "
                                "not a finetune run (no bundle.json): a pretrain run's adapter/ folder already is one")
        return export_task_adapter(run, out, dtype, base, overwrite)
    if (run / BUNDLE).is_file():
        return export_classifier(run, out, dtype, base, overwrite)
    if (run / RUN_RECORD).is_file():
        return export_causal_lm(run, out, dtype, base, overwrite)
    raise ClinpeftError(f"{run}: not a clinpeft run (no bundle.json or run.json); give a finetune or pretrain run")


def export_classifier(run: Path, out: str | Path, dtype: str, base: str | None, overwrite: bool) -> dict:
    import torch

    from clinpeft.modeling.classifier import load_bundle

    meta = read_record(run / BUNDLE)
    refuse_unmergeable(run, peft_types([run / "adapters" / name for name in meta.get("adapters", [])]))
    clf, meta = load_bundle(run, base=base, dtype="float32")
    model = clf.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # every active LoRA (clinical + downstream) folded in; the head kept
    labels = list(meta["labels"])
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    model.config.pad_token_id = clf.tokenizer.pad_token_id
    model.to(getattr(torch, DTYPES[dtype]))
    info = {"kind": "export", "run": str(run), "task": meta["task"], "task_type": meta["task_type"],
            "variant": meta["variant"], "auto_class": "AutoModelForSequenceClassification", "dtype": dtype,
            "pooling": meta.get("pooling", "last"), "long_notes": meta.get("long_notes") or {"mode": "truncate"},
            "max_seq_len": meta["max_seq_len"], "padding_side": clf.tokenizer.padding_side,
            "head": clf.head_name, "labels": labels, "clinpeft_version": __version__}
    write_export(out, overwrite, model, clf.tokenizer, run, info, serving_config(info, str(out)))
    return info


def write_export(out: str | Path, overwrite: bool, model, tokenizer, run: Path, info: dict, serving: dict) -> None:
    """An export folder, written whole: the model (or adapter) and tokenizer, the run's labels.txt,
    clinpeft_export.json (how the run scored) and serving.json (what a server needs)."""
    with atomic_run_dir(out, overwrite) as out_dir:
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        if (run / LABELS).is_file():
            shutil.copy(run / LABELS, out_dir / LABELS)
        write_json(out_dir / "clinpeft_export.json", info)
        write_json(out_dir / "serving.json", serving)


def serving_config(info: dict, model_dir: str) -> dict:
    """serving.json: what a server needs to score notes as the run did (vLLM's names; hedged: vLLM itself is
    not run by the tests). The pooling is the run's (LAST: the last token, what transformers' classifier
    reads; MEAN: the mean of the final hidden states over the note's tokens, BOS included, as
    model.pooling=mean trained it), then the head. Activation: softmax over the classes for single-label
    tasks (vLLM's classify default), a sigmoid per label for multilabel ones (raw scores out, sigmoid by
    the caller)."""
    multilabel = info["task_type"] == "multilabel"
    encoder = info.get("head") == "classifier"  # BERT family: its head reads [CLS] through BERT's pooler
    seq_pooling = "MEAN" if info["pooling"] == "mean" else ("CLS" if encoder else "LAST")
    pooler = {"seq_pooling_type": seq_pooling, "use_activation": not multilabel}
    command = (f"vllm serve {model_dir} --runner pooling --convert classify --max-model-len {info['max_seq_len']} "
               f"--pooler-config '{json.dumps(pooler)}'")
    return {"pooling": info["pooling"], "activation": "sigmoid" if multilabel else "softmax",
            "max_seq_len": info["max_seq_len"], "long_notes": info["long_notes"],
            "vllm": {"runner": "pooling", "convert": "classify", "pooler_config": pooler,
                     "max_model_len": info["max_seq_len"], "command": command},
            "transformers": "clinpeft.inference.load_exported(DIR).predict(notes) (README, 'Use a trained model')",
            "note": "vLLM's flags change between versions (older: --task classify, --override-pooler-config "
                    "'{\"pooling_type\": \"MEAN\"}'); check the docs of the one you run"}


def export_task_adapter(run: Path, out: str | Path, dtype: str, base: str | None, overwrite: bool) -> dict:
    """One peft LoRA adapter (+ head) for the run's task, loadable onto the plain base classifier
    (modeling/task_adapter.py: the clinical and downstream LoRAs concatenated, scales folded in)."""
    import torch

    from clinpeft.modeling.adapters import head_module
    from clinpeft.modeling.base import load_sequence_classifier
    from clinpeft.modeling.classifier import PROBLEM_TYPES, load_bundle
    from clinpeft.modeling.task_adapter import build_task_adapter, concatenated_updates, zero_updates

    meta = read_record(run / BUNDLE)
    if meta.get("model_dir"):
        raise ClinpeftError(f"{run}: variant full changed every base weight, so no adapter on the base can hold it; "
                            "export it merged: `clinpeft export RUN --out DIR`")
    refuse_unmergeable(run, peft_types([run / "adapters" / name for name in meta.get("adapters", [])]))
    base_path = Path(base or meta["base_model"])
    if meta.get("head") == "classifier" and not checkpoint_has(base_path, ".pooler."):
        raise ClinpeftError(f"{run}: its encoder base {base_path} has no pooler weights (a masked-LM checkpoint), so "
                            "the pooler its head reads is drawn at random at every load and the run saved none: no "
                            "adapter on the base can reproduce it; fine-tune with variant=full (saves the pooler)")
    clf, meta = load_bundle(run, base=base, dtype="float32")
    # a head-only run: peft wants one LoRA module at least, so its update is an exact zero of rank 1
    updates = concatenated_updates(clf.model, list(meta["adapters"])) or zero_updates(clf.model)
    head_state = {k: v.detach().clone() for k, v in head_module(clf.model, meta["head"]).state_dict().items()}
    tokenizer, head_name, pooling = clf.tokenizer, clf.head_name, clf.pooling
    del clf  # one base model in memory at a time
    labels = list(meta["labels"])
    problem_type = PROBLEM_TYPES[meta["task_type"]]
    plain = load_sequence_classifier(base_path, len(labels), tokenizer.pad_token_id, problem_type, "float32")
    model = build_task_adapter(plain, updates, head_state, head_name, str(base_path))
    model.to(getattr(torch, DTYPES[dtype]))
    ranks = sorted({u.rank for u in updates.values()})
    info = {"kind": "export", "run": str(run), "task": meta["task"], "task_type": meta["task_type"],
            "variant": meta["variant"], "auto_class": "AutoModelForSequenceClassification", "as_adapter": True,
            "base_model": str(base_path), "base_fingerprint": meta["base_fingerprint"], "dtype": dtype,
            "num_labels": len(labels), "problem_type": problem_type, "pad_token_id": tokenizer.pad_token_id,
            "labels": labels, "head": head_name, "pooling": pooling, "ranks": ranks,
            "long_notes": meta.get("long_notes") or {"mode": "truncate"}, "max_seq_len": meta["max_seq_len"],
            "padding_side": tokenizer.padding_side, "clinpeft_version": __version__}
    write_export(out, overwrite, model, tokenizer, run, info, adapter_serving_config(info, str(out)))
    return info


def checkpoint_has(model_dir: Path, part: str) -> bool:
    """Whether a safetensors checkpoint (one file or sharded) holds a weight whose name contains `part`."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return any(part in f".{key}" for key in json.loads(index.read_text())["weight_map"])
    files = sorted(model_dir.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            if any(part in f".{key}" for key in weights.keys()):
                return True
    return False


def adapter_serving_config(info: dict, adapter_dir: str) -> dict:
    """serving.json of a task adapter: the pooler as the run was trained (the server's job, not the adapter's)
    and a vLLM multi-LoRA command over the plain base (hedged: not run here)."""
    config = serving_config(info, info["base_model"])
    name = info["task"] or "task"
    lora = (f"--enable-lora --lora-modules {name}={adapter_dir} --max-lora-rank {max(info['ranks'])} "
            f"--max-loras 4")
    config["vllm"]["command"] = config["vllm"]["command"].replace(" --max-model-len", f" {lora} --max-model-len")
    config["vllm"]["lora_modules"] = {name: adapter_dir}
    config["transformers"] = ("PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE, "
                              "num_labels=..., problem_type=..., pad_token_id=...), DIR) (README, 'One adapter per "
                              "task')")
    return config


def export_causal_lm(run: Path, out: str | Path, dtype: str, base: str | None, overwrite: bool) -> dict:
    import torch
    from peft import PeftModel

    from clinpeft.modeling.adapters import find_clinical_adapter
    from clinpeft.modeling.base import load_causal_lm, load_tokenizer, reopen_base

    adapter = find_clinical_adapter(run)
    if adapter.method == "full":
        model_dir, adapter_dir = adapter.path, None
    else:
        refuse_unmergeable(run, peft_types([adapter.path]))
        try:
            model_dir = reopen_base(adapter.base_model, base, adapter.base_spec)
        except ClinpeftError as exc:
            raise ClinpeftError(f"{run}: {exc}") from None
        adapter_dir = adapter.path
    model = load_causal_lm(model_dir, "float32")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    tokenizer = load_tokenizer(model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(getattr(torch, DTYPES[dtype]))
    info = {"kind": "export", "run": str(run), "auto_class": "AutoModelForCausalLM", "method": adapter.method,
            "dtype": dtype, "clinpeft_version": __version__}
    with atomic_run_dir(out, overwrite) as out_dir:
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        write_json(out_dir / "clinpeft_export.json", info)
    return info


def summary(result: dict, out: str | Path) -> list[str]:
    """What `clinpeft export` prints: what was written and how to load it."""
    if result.get("as_adapter"):
        lines = [f"{out}: one {result['dtype']} LoRA adapter (rank {'/'.join(map(str, result['ranks']))}) with the "
                 f"head; load with peft.PeftModel.from_pretrained(<{result['base_model']} as "
                 f"{result['auto_class']}, num_labels={result['num_labels']}>, {str(out)!r})"]
    else:
        lines = [f"{out}: standalone {result['dtype']} model; load with transformers.{result['auto_class']}"
                 f".from_pretrained({str(out)!r})"]
    if result.get("pooling") == "mean":
        lines.append("note: trained with model.pooling=mean; transformers' own forward reads the last token: score "
                     "with clinpeft.inference.load_exported(DIR), or a server with mean pooling (serving.json)")
    if (result.get("long_notes") or {}).get("mode") == "chunks":
        lines.append("note: trained with task.long_notes=chunks; the exported model reads one window of "
                     f"{result['max_seq_len']} tokens: cut notes into windows and pool their logits as "
                     "clinpeft_export.json records")
    return lines
