"""Export a trained run as a standalone Hugging Face model directory (no clinpeft, no peft needed).

    clinpeft export runs/mor-ct-ds --out exported/mor --dtype bf16
    clinpeft export runs/clinical-lora --out exported/clinical-llama      # a pretraining run

A finetune run: the clinical and downstream LoRAs (DoRA and rsLoRA included) are merged into the base
weights with peft's merge_and_unload, and the classifier is written with its head, config (id2label,
label2id, pad_token_id, problem_type) and tokenizer (pad token set): a plain
`AutoModelForSequenceClassification.from_pretrained(DIR)` reproduces the bundle's logits. A
pretraining run: the clinical LoRA merged into an `AutoModelForCausalLM`.

Refused, with one line saying why:
- prompt methods (prompt tuning, p-tuning, prefix tuning) and adaption prompt: they are not weight
  updates but extra tokens or gated attention prompts computed at run time; there is nothing to merge,
  serve such runs through clinpeft (`clinpeft predict`, `clinpeft.load`);
- model.pooling=mean: transformers' sequence classifier reads the last non-pad token and a config
  cannot ask for a mean; a server reproduces it by taking the final hidden states (e.g. vLLM's
  embedding task with mean pooling / TEI with --pooling mean on the exported causal LM), averaging
  over the note's tokens and applying the head `score` (in clinpeft_export.json).

The exported model reads one window of max_seq_len tokens: a run trained with task.long_notes=chunks
needs the caller to cut notes into windows and pool their logits (clinpeft_export.json records how).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from clinpeft import __version__
from clinpeft.errors import ClinpeftError
from clinpeft.rundir import atomic_run_dir, check_out_dir, read_json, write_json

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
MERGEABLE = {"LORA"}  # peft types whose weights fold into the base (DoRA/rsLoRA are LoRA flags)


def peft_types(adapter_dirs: list[Path]) -> list[str]:
    return [str(read_json(d / "adapter_config.json").get("peft_type")) for d in adapter_dirs]


def refuse_unmergeable(run: Path, types: list[str]) -> None:
    bad = [t for t in types if t not in MERGEABLE]
    if bad:
        raise ClinpeftError(f"{run}: its {bad[0].lower()} adapter cannot be merged into the base weights (prompt "
                            "methods and adaption prompt add tokens or gated attention prompts at run time, not "
                            "weight updates); serve it through clinpeft: `clinpeft predict` or clinpeft.load(RUN)")


def main(run: str | Path, out: str | Path, *, dtype: str = "fp32", base: str | None = None, overwrite: bool = False,
         progress: bool = True) -> dict:
    """Merge and write `run` into `out` (written whole, or not at all). Returns clinpeft_export.json."""
    run = Path(run)
    if dtype not in DTYPES:
        raise ClinpeftError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if not run.is_dir():
        raise ClinpeftError(f"{run}: no such directory; give a `clinpeft finetune` or `clinpeft pretrain` run")
    check_out_dir(out, overwrite)
    if (run / "bundle.json").is_file():
        return export_classifier(run, out, dtype, base, overwrite)
    if (run / "run.json").is_file():
        return export_causal_lm(run, out, dtype, base, overwrite)
    raise ClinpeftError(f"{run}: not a clinpeft run (no bundle.json or run.json); give a finetune or pretrain run")


def export_classifier(run: Path, out: str | Path, dtype: str, base: str | None, overwrite: bool) -> dict:
    import torch

    from clinpeft.modeling.classifier import load_bundle

    meta = read_json(run / "bundle.json")
    if meta.get("pooling", "last") == "mean":
        raise ClinpeftError(f"{run}: trained with model.pooling=mean, which transformers' sequence classifier cannot "
                            "express (it reads the last token); serve it through clinpeft, or export the base and "
                            "average the final hidden states over the note's tokens before the head (README, "
                            "'Use a trained model')")
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
            "clinpeft_version": __version__}
    with atomic_run_dir(out, overwrite) as out_dir:
        model.save_pretrained(out_dir, safe_serialization=True)
        clf.tokenizer.save_pretrained(out_dir)
        if (run / "labels.txt").is_file():
            shutil.copy(run / "labels.txt", out_dir / "labels.txt")
        write_json(out_dir / "clinpeft_export.json", info)
    return info


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
    lines = [f"{out}: standalone {result['dtype']} model; load with transformers.{result['auto_class']}"
             f".from_pretrained({str(out)!r})"]
    if (result.get("long_notes") or {}).get("mode") == "chunks":
        lines.append("note: trained with task.long_notes=chunks; the exported model reads one window of "
                     f"{result['max_seq_len']} tokens: cut notes into windows and pool their logits as "
                     "clinpeft_export.json records")
    return lines
