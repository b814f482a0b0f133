"""The page of `clinpeft explain`: each note with its sentences highlighted, and the top phrases per label.

Red: the sentence pushes the predicted label's probability up; blue: down; the colour's strength is
|attribution| relative to the largest on the page. Inline CSS only, no script, font or image from anywhere:
the page holds note text and stays on the local disk.
"""

from __future__ import annotations

import html
from pathlib import Path

from clinpeft.evaluation.attribution import NoteAttribution

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
line-height:1.5;color:#1d1d1d}
.note{border:1px solid #ccc;border-radius:4px;padding:.6em 1em;margin:1em 0;white-space:pre-wrap}
.meta{color:#555;font-size:.86em}table{border-collapse:collapse;font-size:.86em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}th{background:#f0f0f0}
.key{display:inline-block;padding:0 .4em;margin-right:.5em}
"""


def _colour(value: float, scale: float) -> str:
    strength = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    alpha = round(0.08 + 0.62 * strength, 3) if strength > 0 else 0.0
    return f"rgba(220,40,40,{alpha})" if value > 0 else f"rgba(40,90,220,{alpha})"


def render_note(text: str, note: NoteAttribution, label_index: int, scale: float) -> str:
    """The note's text as HTML, every sentence in a <span> coloured by its attribution to `label_index`
    (title: the exact value)."""
    parts, cursor = [], 0
    for (a, b), value in zip(note.spans, note.attributions[:, label_index]):
        parts.append(html.escape(text[cursor:a]))
        parts.append(f"<span style='background:{_colour(float(value), scale)}' title='{float(value):+.4f}'>"
                     f"{html.escape(text[a:b])}</span>")
        cursor = b
    parts.append(html.escape(text[cursor:]))
    return "".join(parts)


def write_explain_page(path: Path, run: str, labels: list[str], ids: list[str], texts: list[str],
                       notes: list[NoteAttribution], predicted: list[int], gold: list[str | None],
                       phrases: dict[str, list[dict]]) -> Path:
    """Writes the page; returns its path. predicted: the label index highlighted for each note."""
    scale = max((float(abs(n.attributions[:, k]).max()) for n, k in zip(notes, predicted) if n.attributions.size),
                default=0.0)
    blocks = []
    for note_id, text, note, k, truth in zip(ids, texts, notes, predicted, gold):
        top = int(abs(note.attributions[:, k]).argmax()) if note.attributions.size else None
        lead = f"; strongest sentence {note.attributions[top, k]:+.3f}" if top is not None else ""
        gold_text = f", gold {html.escape(str(truth))}" if truth is not None else ""
        blocks.append(f"<h3>Note {html.escape(str(note_id))}</h3><p class='meta'>predicted "
                      f"<b>{html.escape(labels[k])}</b> (P = {note.probs[k]:.3f}){gold_text}; "
                      f"{len(note.spans)} sentences{lead}</p>"
                      f"<div class='note'>{render_note(text, note, k, scale)}</div>")
    tables = []
    for label, rows in phrases.items():
        body = "".join(f"<tr><td>{html.escape(r['phrase'][:300])}</td><td>{r['mean']:+.4f}</td><td>{r['notes']}</td>"
                       "</tr>" for r in rows) or "<tr><td colspan='3'>no sentence raises this label</td></tr>"
        tables.append(f"<h3>{html.escape(label)}</h3><table><tr><th>Sentence</th><th>Mean attribution</th>"
                      f"<th>Notes</th></tr>{body}</table>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>clinpeft explain</title>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<style>{STYLE}</style></head><body><h1>Which sentences drove the predictions</h1>"
            f"<p class='meta'>Run {html.escape(run)}; {len(notes)} notes. Sentence occlusion: attribution = "
            "P(label | note) - P(label | note without the sentence) (clinpeft/evaluation/attribution.py). "
            f"<span class='key' style='background:{_colour(1, 1)}'>red</span>pushes the predicted label up "
            f"<span class='key' style='background:{_colour(-1, 1)}'>blue</span>pushes it down; strength relative "
            f"to the largest on this page ({scale:.3f}). Hover a sentence for its value.</p>"
            "<h2>Top sentences per label, across the set</h2>" + "".join(tables)
            + "<h2>Notes</h2>" + "".join(blocks) + "</body></html>")
    path.write_text(page, encoding="utf-8")
    return path
