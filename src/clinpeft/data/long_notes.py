"""`task.long_notes`: how a note longer than `task.max_seq_len` tokens reaches the model.

- truncate (default, the paper's): one window of max_seq_len tokens; `truncate_side=right` cuts the
  end of the note (keeps its start), `left` cuts the start (keeps its end).
- chunks: the note is cut into windows of max_seq_len tokens, consecutive windows sharing
  `chunk_stride` tokens; each window is scored and the note's logits are pooled over its windows
  (`chunk_pooling`: max or mean; modeling/pooling.pool_windows). At most `max_chunks` windows per
  note (the cost cap); a longer note loses its end (truncate_side=right) or its start (left).

The same settings apply in training, evaluation and prediction: finetune writes them to bundle.json
(`long_notes`), and `evaluate` / `predict` read them back (bundles without the key: truncate, right).

Every window carries the tokenizer's special tokens (LLaMA: BOS; BERT: [CLS] ... [SEP]) around its
share of the note's tokens, exactly as `tokenizer(text, truncation=True, max_length=...)` would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from clinpeft.errors import ClinpeftError

MODES = ("truncate", "chunks")


@dataclass(frozen=True)
class LongNotes:
    max_seq_len: int = 512  # tokens per window, special tokens included
    mode: str = "truncate"  # truncate | chunks
    truncate_side: str = "right"  # which end of the note is cut: right = the end, left = the start
    chunk_stride: int = 64  # tokens shared by consecutive windows (chunks)
    chunk_pooling: str = "max"  # max | mean of the windows' logits (chunks)
    max_chunks: int = 16  # windows per note at most (chunks)

    @classmethod
    def from_task(cls, task) -> LongNotes:
        """From a config's `task:` section (config.TaskSection)."""
        return cls(task.max_seq_len, task.long_notes, task.truncate_side, task.chunk_stride, task.chunk_pooling,
                   task.max_chunks)

    @classmethod
    def from_bundle(cls, meta: dict) -> LongNotes:
        """From bundle.json; bundles written before long_notes existed truncated on the right."""
        saved = meta.get("long_notes") or {}
        return cls(max_seq_len=int(meta["max_seq_len"]), **{k: v for k, v in saved.items() if k != "max_seq_len"})

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class EncodedNotes:
    """Every note's windows, flattened: windows[i] belongs to note note_index[i] (notes in input order)."""

    windows: list[list[int]]
    note_index: list[int]
    n_notes: int
    note_tokens: list[int]  # the note's own tokens (special tokens not counted)
    seen_tokens: list[int]  # of those, how many at least one window holds

    def truncation(self) -> dict:
        """metrics.json's `truncation`: notes_cut = notes of which some token reached no window;
        tokens_seen_share = tokens in a window / tokens of the notes, summed over all notes (token-weighted)."""
        total = sum(self.note_tokens)
        return {"notes_cut": sum(s < n for s, n in zip(self.seen_tokens, self.note_tokens)),
                "n_notes": self.n_notes,
                "tokens_seen_share": (sum(self.seen_tokens) / total) if total else 1.0}

    def windows_of(self) -> list[list[list[int]]]:
        """The windows grouped per note (training rows)."""
        grouped: list[list[list[int]]] = [[] for _ in range(self.n_notes)]
        for window, note in zip(self.windows, self.note_index):
            grouped[note].append(window)
        return grouped


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special tokens the tokenizer puts around a text (LLaMA: [BOS], []; BERT: [CLS], [SEP])."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare):])
    return [], []


def window_starts(n_tokens: int, width: int, stride: int, max_chunks: int, side: str) -> list[int]:
    """Start offsets of the windows of `width` tokens covering n_tokens, consecutive ones sharing `stride`."""
    step = width - stride
    starts = [0]
    while starts[-1] + width < n_tokens:
        starts.append(starts[-1] + step)
    if len(starts) > max_chunks:  # the cap: the end named by `side` is cut
        if side == "right":
            starts = starts[:max_chunks]
        else:  # windows laid from the note's end backwards
            starts = [max(0, n_tokens - width - k * step) for k in reversed(range(max_chunks))]
    return starts


def encode_notes(tokenizer, texts: list[str], long_notes: LongNotes) -> EncodedNotes:
    """Tokenise notes into windows under `long_notes` (see the module docstring)."""
    prefix, suffix = special_tokens(tokenizer)
    width = long_notes.max_seq_len - len(prefix) - len(suffix)  # note tokens per window
    if width < 1:
        raise ClinpeftError(f"task.max_seq_len={long_notes.max_seq_len} leaves no room for the note after "
                            f"{len(prefix) + len(suffix)} special tokens; raise task.max_seq_len")
    if long_notes.mode == "chunks" and long_notes.chunk_stride >= width:
        raise ClinpeftError(f"task.chunk_stride={long_notes.chunk_stride} must be below the {width} note tokens of "
                            f"a window (task.max_seq_len={long_notes.max_seq_len}); lower task.chunk_stride")
    if long_notes.mode not in MODES:
        raise ClinpeftError(f"task.long_notes={long_notes.mode}: choose one of {', '.join(MODES)}")
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]  # no "longer than" warning
    windows, note_index, seen = [], [], []
    for note, tokens in enumerate(ids):
        n = len(tokens)
        if long_notes.mode == "truncate":
            starts = [0 if long_notes.truncate_side == "right" else max(0, n - width)]
        else:
            starts = window_starts(n, width, long_notes.chunk_stride, long_notes.max_chunks, long_notes.truncate_side)
        covered = set()
        for start in starts:
            part = tokens[start:start + width]
            windows.append(prefix + part + suffix)
            note_index.append(note)
            covered.update(range(start, start + len(part)))
        seen.append(len(covered))
    return EncodedNotes(windows, note_index, len(ids), [len(t) for t in ids], seen)
