"""index.html of `clinpeft report --html`: the whole report in one self-contained page.

Sections, in order: Table 2, Table 3 (intervals, footnote marks, the paired comparison when asked),
clinical metrics (AUPRC, calibration, operating point), figures (ROC, precision-recall, reliability, macro
AUROC), subgroups, best/worst labels, and a model card per run. Built from the files the report just
wrote (the .md tables, the .png plots) and the runs' JSON; images are inlined as data URIs and styles
are inline, so the page opens offline from anywhere and loads nothing from the network. A short inline
script records load errors and image sizes in `<body data-errors=... data-images=...>` for the browser
test (tests/test_report_html.py); it changes nothing a reader sees.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from clinpeft.errors import ClinpeftError
from clinpeft.files import read_text
from clinpeft.reporting.runs import base_name, recorded_test
from clinpeft.run_files import read_config, read_record

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#1d1d1d;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs figure{margin:0}.figs img{max-width:560px;width:100%}
details{margin:.6em 0;border:1px solid #ddd;padding:.4em .8em;border-radius:4px}
summary{cursor:pointer;font-weight:600}.note{color:#555;font-size:.86em}
nav a{margin-right:1em}
"""

CHECK_SCRIPT = """
(function(){var errors=[];
window.addEventListener('error',function(e){errors.push((e.target&&e.target.tagName)||String(e.message));
document.body&&document.body.setAttribute('data-errors',errors.join('|'));},true);
window.addEventListener('load',function(){var imgs=document.images,bad=0;
for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0||imgs[i].naturalHeight===0){bad++;}}
document.body.setAttribute('data-images',imgs.length+':'+bad);
document.body.setAttribute('data-errors',errors.join('|'));});})();
"""

INTENDED_USE = (
    "Research use in a trusted research environment: comparing adaptation methods for predicting the task's "
    "outcome from admission notes, as in Gema et al. 2023. Not a medical device and not validated for "
    "decisions about individual patients."
)


# --------------------------------------------------------------------------- markdown subset


def _inline(text: str) -> str:
    """Escape, then render **bold**, `code` and [text](link) (links to local .md/.png become plain text)."""
    out = html.escape(text.replace("\\*", "*"), quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"\1", out)


def markdown_to_html(text: str) -> str:
    """The subset of markdown the report writes: headings, pipe tables, bullet lists, paragraphs."""
    parts, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            parts.append(_table(block))
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 6)
            parts.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            parts.append(f"<ul class='note'>{''.join(items)}</ul>")
            continue
        elif line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(parts)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(block: list[str]) -> str:
    header, body = _cells(block[0]), [_cells(b) for b in block[2:]]
    head = "".join(f"<th>{_inline(h)}</th>" for h in header)
    rows = []
    for cells in body:
        tds = "".join(f"<td class='num'>{_inline(c)}</td>" if re.match(r"^[-+]?\d", c) else f"<td>{_inline(c)}</td>"
                      for c in cells)
        rows.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _table_from_pairs(pairs: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs
                   if v not in (None, "", {}, []))
    return f"<table>{rows}</table>"


# --------------------------------------------------------------------------- model cards


def _fmt_int(n) -> str:
    return f"{n:,}" if isinstance(n, int) else ("" if n is None else str(n))


def _adapter_fingerprint(run: dict) -> str | None:
    adapter = run.get("clinical_adapter")
    if not adapter:
        return None
    for candidate in (Path(adapter) / "clinpeft_adapter.json", Path(adapter) / "adapter" / "clinpeft_adapter.json"):
        if candidate.is_file():
            try:
                return read_record(candidate).get("base_fingerprint")
            except ClinpeftError:  # a model card without the adapter's fingerprint, not a failed report
                return None
    return None


def _provenance(run: dict) -> dict:
    """metrics.json's "data" (recorded by finetune), else computed from config.yaml's task.path when it exists."""
    if isinstance(run.get("data"), dict):
        return run["data"]
    try:
        task_path = (read_config(run["_dir"]).get("task") or {}).get("path")
    except ClinpeftError:  # an unreadable config.yaml: a model card without provenance, not a failed report
        return {}
    if isinstance(task_path, str) and Path(task_path).is_dir():
        from clinpeft.data.tasks import data_provenance

        return data_provenance(task_path)
    return {}


def limitations(run: dict, data: dict) -> list[str]:
    """The limitations this run's data implies: test size, classes absent or rare, cohort, demo data."""
    out = []
    test = recorded_test(run)
    n_test = (data.get("rows") or {}).get("test") or test.get("n_examples")
    if n_test:
        ci = test.get("auroc_ci")
        width = f"; its AUROC interval spans {100 * (ci[1] - ci[0]):.1f} points" if ci and None not in ci else ""
        out.append(f"Tested on {_fmt_int(n_test)} notes{width}: differences smaller than the interval are noise.")
    support = test.get("class_support") or {}
    if support.get("absent") or support.get("few"):
        rare = [*support.get("absent", []), *support.get("few", [])]
        out.append(f"Classes/labels absent or with fewer than {support.get('min_positives', 5)} test examples "
                   f"({', '.join(map(str, rare[:10]))}): no reliable estimate for them.")
    cohort = data.get("cohort") or {}
    if cohort:
        out.append("Cohort as prepared (rules below): one hospital's ICU admissions if MIMIC-III; performance on "
                   "other hospitals, populations, note styles or later years is unknown.")
    if "demo" in str(data.get("path", "")).lower() or "synthetic" in json.dumps(cohort).lower():
        out.append("Synthetic demo data: the numbers prove the pipeline, not clinical performance.")
    out.append("Admission notes only, cut to the model's maximum length; outcomes recorded later in the stay are "
               "not seen. Calibration (Brier, ECE) was measured on this test split only.")
    return out


def model_card(run: dict) -> str:
    """One run's model card: data provenance, base model and fingerprint, adapters and trainable parameters,
    intended use and limitations."""
    data = _provenance(run)
    name = f"{run.get('table3_row') or run.get('variant', '')} / {str(run.get('task', '')).upper()}"
    files = data.get("files") or {}
    rows = data.get("rows") or {}
    patients = data.get("patients") or {}
    counts = "; ".join(f"{s}: {_fmt_int(n)} rows" + (f", {_fmt_int(patients[s])} patients" if s in patients else "")
                       for s, n in rows.items())
    trainable, total = run.get("trainable_params"), run.get("total_params")
    params = (f"{_fmt_int(trainable)} of {_fmt_int(total)} ({run.get('trainable_percent', 0):.3f}%)"
              if isinstance(trainable, int) and isinstance(total, int) else "")
    pairs = [
        ("Run directory", run["_dir"]), ("Task", f"{run.get('task')} ({run.get('task_type')})"),
        ("Base model", f"{base_name(run)} ({run.get('base_model')})"),
        ("Base model fingerprint", run.get("base_fingerprint") or _adapter_fingerprint(run) or "not recorded"),
        ("Variant", run.get("variant")), ("Clinical adapter", run.get("clinical_adapter")),
        ("Clinical adapter method", run.get("clinical_method")),
        ("LoRA flavours", ", ".join(run.get("lora_flavours") or [])), ("Pooling", run.get("pooling")),
        ("Trainable parameters", params), ("Best epoch", run.get("best_epoch")),
        ("Task data", data.get("path") or "not recorded (run from before this version, config.yaml's path gone)"),
        ("Rows per split", counts), ("Subgroup columns", ", ".join(data.get("subgroup_columns") or [])),
        ("clinpeft version", run.get("clinpeft_version")),
    ]
    hashes = _table_from_pairs([(f"sha256 {k}", v) for k, v in files.items()]) if files else ""
    cohort = data.get("cohort")
    cohort_html = ""
    if cohort:
        cohort_html = ("<details><summary>Cohort rules and counts (prepare manifest)</summary><pre>"
                       f"{html.escape(json.dumps(cohort, indent=1, ensure_ascii=False)[:20000])}</pre></details>")
    limits = "".join(f"<li>{html.escape(x)}</li>" for x in limitations(run, data))
    return (f"<details><summary>{html.escape(name)}</summary>{_table_from_pairs(pairs)}{hashes}{cohort_html}"
            f"<p><b>Intended use.</b> {html.escape(INTENDED_USE)}</p><p><b>Limitations.</b></p><ul>{limits}</ul>"
            "</details>")


# --------------------------------------------------------------------------- the page


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(path.stem.replace("_", " "))
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{caption}'>"
            f"<figcaption class='note'>{caption}</figcaption></figure>")


SECTIONS = [("table2", "Table 2"), ("table3", "Table 3"), ("clinical", "Clinical metrics"), ("figures", "Figures"),
            ("subgroups", "Subgroups"), ("labels", "Best and worst labels"), ("cards", "Model cards")]


def write_html(path: Path, written: dict[str, Path], pretrain_runs: list[dict], finetune_runs: list[dict]) -> Path:
    """Writes index.html from the report files in `written` and the runs; returns its path."""
    body: dict[str, str] = {}
    for key, name in (("table2", "table2.md"), ("table3", "table3.md"), ("clinical", "clinical.md"),
                      ("subgroups", "subgroups.md")):
        if name in written:
            body[key] = markdown_to_html(read_text(written[name], what="report table"))
    images = [p for n, p in sorted(written.items()) if n.endswith(".png")]
    order = ("roc_", "pr_", "reliability_", "macro_")
    images.sort(key=lambda p: next((i for i, o in enumerate(order) if p.name.startswith(o)), 9))
    if images:
        body["figures"] = f"<div class='figs'>{''.join(_image(p) for p in images)}</div>"
    labels = [p for n, p in sorted(written.items()) if n.startswith("labels_") and n.endswith(".md")]
    if labels:
        body["labels"] = "".join(markdown_to_html(read_text(p, what="report table")) for p in labels)
    if finetune_runs:
        body["cards"] = ("<p class='note'>One card per fine-tuning run: where its data came from, what was "
                         "trained, what it is for and what it cannot tell.</p>"
                         + "".join(model_card(run) for run in finetune_runs))
    nav = " ".join(f"<a href='#{k}'>{html.escape(t)}</a>" for k, t in SECTIONS if k in body)
    sections = "".join(f"<section id='{k}'><h2>{html.escape(t)}</h2>{body[k]}</section>" for k, t in SECTIONS
                       if k in body)
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>clinpeft report</title>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<style>{STYLE}</style><script>{CHECK_SCRIPT}</script></head><body>"
            f"<h1>clinpeft report</h1><p class='note'>{len(pretrain_runs)} pretraining and {len(finetune_runs)} "
            "fine-tuning runs. Every number is defined in the notes under its table; the same files are in this "
            f"folder as .md/.csv/.png.</p><nav>{nav}</nav>{sections}</body></html>")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
