"""The pretraining corpus: clinical notes from CSV(.gz) / JSONL / TXT, held out by patient.

Files are read through `datasets` (Arrow, memory-mapped), so a corpus larger than memory
streams through tokenisation. The held-out test split is decided per patient by a seeded hash
of the patient id: stateless (no patient table in memory), identical across runs and machines,
and no patient's notes fall on both sides. Without a patient column the split is per note, and
the run says so.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pandas as pd

from clinpeft.config import CorpusSection
from clinpeft.errors import ClinpeftError

SUFFIXES = {".csv": "csv", ".jsonl": "json", ".json": "json", ".txt": "txt"}


def file_format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    fmt = SUFFIXES.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise ClinpeftError(f"{path}: unsupported corpus file; use .csv, .csv.gz, .jsonl(.gz) or .txt")
    return fmt


def corpus_files(paths: list[str]) -> list[Path]:
    """Expand directories (sorted, for a stable order) and check every file exists."""
    if not paths:
        raise ClinpeftError("data.paths is empty; give the corpus files, e.g. data.paths=[notes/discharge.csv.gz]")
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_corpus_file(p))
            if not found:
                raise ClinpeftError(f"data.paths: {path} holds no .csv/.csv.gz/.jsonl/.txt files")
            files += found
        elif path.is_file():
            file_format(path)
            files.append(path)
        else:
            raise ClinpeftError(f"data.paths: {path} not found")
    return files


def _is_corpus_file(path: Path) -> bool:
    try:
        file_format(path)
        return True
    except ClinpeftError:
        return False


def _header(path: Path, fmt: str) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    if fmt == "csv":
        return list(pd.read_csv(path, nrows=0).columns)
    if fmt == "json":
        with opener(path, "rt") as handle:
            first = handle.readline()
        try:
            return list(json.loads(first)) if first.strip() else []
        except json.JSONDecodeError:
            raise ClinpeftError(f"{path} line 1: not a JSON object; JSONL needs one note object per line") from None
    return ["text"]


def check_columns(files: list[Path], text_column: str) -> dict[Path, list[str]]:
    """Fail before loading anything when a file lacks the text column."""
    headers = {}
    for path in files:
        fmt = file_format(path)
        columns = _header(path, fmt)
        if fmt != "txt" and text_column not in columns:
            raise ClinpeftError(
                f"{path}: no column {text_column!r} (found {', '.join(columns) or 'none'}); "
                "set data.text_column to the column that holds the note text"
            )
        headers[path] = columns
    return headers


def in_test_split(key: str, test_fraction: float, seed: int) -> bool:
    """Seeded, stateless assignment: sha1(seed:key) read as a number in [0, 1)."""
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def load_corpus(section: CorpusSection, cache_dir: Path):
    """-> (DatasetDict with "train" and "test", each a `text` column; info dict for run.json)."""
    from datasets import DatasetDict, concatenate_datasets, load_dataset

    files = corpus_files(section.paths)
    headers = check_columns(files, section.text_column)
    tables = {p: cols for p, cols in headers.items() if file_format(p) != "txt"}  # .txt has no patient id
    by_patient = bool(tables) and section.patient_column is not None and all(
        section.patient_column in cols for cols in tables.values()
    )

    parts = []
    for path in files:
        fmt = file_format(path)
        if fmt == "txt":
            ds = load_dataset("text", data_files=str(path), sample_by="document", cache_dir=str(cache_dir))["train"]
            ds = ds.map(lambda _, i: {"_key": f"{path.name}:{i}"}, with_indices=True)
        else:
            ds = load_dataset(fmt, data_files=str(path), cache_dir=str(cache_dir))["train"]
            if section.text_column != "text":
                if "text" in ds.column_names:
                    ds = ds.remove_columns("text")
                ds = ds.rename_column(section.text_column, "text")
            if by_patient:
                ds = ds.map(lambda b: {"_key": [str(v) for v in b[section.patient_column]]}, batched=True)
            else:
                ds = ds.map(lambda _, i: {"_key": f"{path.name}:{i}"}, with_indices=True)
        parts.append(ds.select_columns(["text", "_key"]))
    corpus = concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    n_read = len(corpus)
    corpus = corpus.filter(lambda b: [isinstance(t, str) and bool(t.strip()) for t in b["text"]], batched=True)
    n_empty = n_read - len(corpus)
    if section.max_documents:
        corpus = corpus.select(range(min(section.max_documents, len(corpus))))
    if len(corpus) == 0:
        raise ClinpeftError(f"data.paths: no non-empty notes in {', '.join(map(str, files))}")

    fraction, seed = section.test_fraction, section.split_seed
    corpus = corpus.map(
        lambda b: {"_test": [in_test_split(k, fraction, seed) for k in b["_key"]]}, batched=True, remove_columns="_key"
    )
    train = corpus.filter(lambda b: [not t for t in b["_test"]], batched=True).remove_columns("_test")
    test = corpus.filter(lambda b: b["_test"], batched=True).remove_columns("_test")
    if len(train) == 0 or len(test) == 0:
        raise ClinpeftError(
            f"data: {len(corpus)} notes give an empty {'test' if len(test) == 0 else 'train'} split "
            f"at data.test_fraction={section.test_fraction}; add notes or change the fraction"
        )
    splits = DatasetDict(train=train, test=test)
    info = {
        "files": [str(f) for f in files],
        "notes_read": n_read,
        "notes_dropped_empty": n_empty,
        "train_notes": len(train),
        "test_notes": len(test),
        "split_by": section.patient_column if by_patient else "note",
    }
    return splits, info
