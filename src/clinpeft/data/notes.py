"""The pretraining corpus: clinical notes from CSV(.gz) / JSONL / TXT, held out by patient.

Files are read through `datasets` (Arrow, memory-mapped), so a corpus larger than memory
streams through tokenisation. The held-out test split is decided per patient by a seeded hash
of the patient id: stateless (no patient table in memory), identical across runs and machines,
and no patient's notes fall on both sides. Without a patient column the split is per note, and
the run says so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from clinpeft.config import CorpusSection
from clinpeft.data.rows import file_format
from clinpeft.errors import ClinpeftError

CORPUS_FORMAT = "clinpeft-corpus"  # manifest.json "format" of a `clinpeft prepare notes` directory
VAL_SALT = "val:"  # salts the validation draw apart from the test draw


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


def column_names(path: Path, fmt: str) -> list[str]:
    """The columns of a corpus file, read from its first line only (.txt: just "text"); a file that is
    empty, not gzip although .gz, or a zip/Excel file is refused here (clinpeft.data.rows)."""
    from clinpeft.data.rows import header, open_binary

    if fmt == "txt":
        open_binary(path).close()
        return ["text"]
    return header(path, fmt)


def check_columns(files: list[Path], text_column: str) -> dict[Path, list[str]]:
    """Fail before loading anything when a file lacks the text column."""
    headers = {}
    for path in files:
        fmt = file_format(path)
        columns = column_names(path, fmt)
        if fmt != "txt" and text_column not in columns:
            raise ClinpeftError(
                f"{path}: no column {text_column!r} (found {', '.join(columns) or 'none'}); "
                "set data.text_column to the column that holds the note text"
            )
        headers[path] = columns
    return headers


def split_draw(key: str, seed: int, salt: str = "") -> float:
    """sha1 of the seeded (and salted) key, read as a number in [0, 1): a stateless, portable draw."""
    digest = hashlib.sha1(f"{seed}:{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_test_split(key: str, test_fraction: float, seed: int) -> bool:
    """Seeded, stateless assignment: sha1(seed:key) read as a number in [0, 1)."""
    return split_draw(key, seed) < test_fraction


def in_val_split(key: str, val_fraction: float, seed: int) -> bool:
    """The validation draw: sha1(seed:val:key), salted so it is independent of the test draw.

    Applied to train notes only, so val_fraction is a share of the train patients and adding a
    validation split never moves a note into or out of the test split.
    """
    return split_draw(key, seed, salt=VAL_SALT) < val_fraction


def is_prepared_corpus(path: str | Path) -> bool:
    """A directory written by `clinpeft prepare notes` (its manifest.json says so)."""
    manifest = Path(path).expanduser() / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == CORPUS_FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def cache_file(cache_dir: Path, name: str) -> dict:
    """`map`/`filter` kwargs that write the result under cache_dir (the run's .cache).

    datasets writes a map's output next to its input's Arrow files by default: for a prepared
    corpus that is the corpus directory, which must stay as `prepare` wrote it (and may be shared
    by concurrent runs). The cache dir is fresh per run, so nothing stale is reused.
    """
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return {"cache_file_name": str(Path(cache_dir) / f"{name}.arrow"), "load_from_cache_file": False}


def load_corpus(section: CorpusSection, cache_dir: Path):
    """-> (DatasetDict "train", "test" [, "val"], each with a `text` column; info dict for run.json).

    data.paths holds raw files (split here by patient) or corpora from `clinpeft prepare notes`
    (their train/test splits are used as they are). With data.val_fraction > 0 a "val" split is
    carved out of the train notes by patient (`in_val_split`).
    """
    from datasets import DatasetDict

    prepared = [p for p in section.paths if is_prepared_corpus(p)]
    if prepared and len(prepared) != len(section.paths):
        raw = [p for p in section.paths if p not in prepared]
        raise ClinpeftError(f"data.paths mixes prepared corpora ({', '.join(prepared)}) with raw files "
                            f"({', '.join(raw)}); prepare the raw files with `clinpeft prepare notes` too, "
                            "or list only raw files")
    train, test, info = (_load_prepared if prepared else _load_raw)(section, cache_dir)
    if section.val_fraction > 0:
        fraction, seed = section.val_fraction, section.split_seed
        train = train.map(lambda b: {"_val": [in_val_split(k, fraction, seed) for k in b["_key"]]}, batched=True,
                          **cache_file(cache_dir, "val-draw"))
        val = train.filter(lambda b: b["_val"], batched=True,
                           **cache_file(cache_dir, "val")).remove_columns(["_val", "_key"])
        train = train.filter(lambda b: [not v for v in b["_val"]], batched=True,
                             **cache_file(cache_dir, "train-without-val")).remove_columns("_val")
        if len(val) == 0 or len(train) == 0:
            raise ClinpeftError(f"data: {len(train) + len(val)} train notes "
                                f"give an empty {'val' if len(val) == 0 else 'train'} "
                                f"split at data.val_fraction={fraction}; add notes or change the fraction")
    train = train.remove_columns("_key")
    splits = DatasetDict(train=train, test=test)
    info.update(train_notes=len(train), test_notes=len(test), val_notes=None)
    if section.val_fraction > 0:
        splits["val"] = val
        info["val_notes"] = len(val)
    return splits, info


def _load_raw(section: CorpusSection, cache_dir: Path):
    """Raw files -> (train with `_key`, test, info): drop empty notes, split by patient here."""
    from datasets import concatenate_datasets

    from clinpeft.data.rows import BadRows

    files = corpus_files(section.paths)
    headers = check_columns(files, section.text_column)
    tables = {p: cols for p, cols in headers.items() if file_format(p) != "txt"}  # .txt has no patient id
    by_patient = bool(tables) and section.patient_column is not None and all(
        section.patient_column in cols for cols in tables.values()
    )

    bad = BadRows()
    parts = [read_raw_file(path, i, section, by_patient, cache_dir, bad) for i, path in enumerate(files)]
    corpus = concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    n_read = len(corpus)
    corpus = corpus.filter(lambda b: [isinstance(t, str) and bool(t.strip()) for t in b["text"]], batched=True)
    n_empty = n_read - len(corpus)
    if section.max_documents:
        corpus = corpus.select(range(min(section.max_documents, len(corpus))))
    if len(corpus) == 0:
        raise ClinpeftError(f"data.paths: no non-empty notes in {', '.join(map(str, files))}")

    fraction, seed = section.test_fraction, section.split_seed
    corpus = corpus.map(lambda b: {"_test": [in_test_split(k, fraction, seed) for k in b["_key"]]}, batched=True)
    train = corpus.filter(lambda b: [not t for t in b["_test"]], batched=True).remove_columns("_test")
    test = corpus.filter(lambda b: b["_test"], batched=True).remove_columns(["_test", "_key"])
    if len(train) == 0 or len(test) == 0:
        raise ClinpeftError(
            f"data: {len(corpus)} notes give an empty {'test' if len(test) == 0 else 'train'} split "
            f"at data.test_fraction={section.test_fraction}; add notes or change the fraction"
        )
    info = {
        "files": [str(f) for f in files],
        "notes_read": n_read,
        "notes_dropped_empty": n_empty,
        "split_by": section.patient_column if by_patient else "note",
        "on_bad_rows": section.on_bad_rows,
        "bad_rows": bad.summary(),  # rows skipped (data.on_bad_rows=skip): count, first line numbers per file
    }
    return train, test, info


def read_raw_file(path: Path, index: int, section: CorpusSection, by_patient: bool, cache_dir: Path, bad):
    """One raw file -> a memory-mapped Dataset (text, _key) written into the run's cache as Arrow, row by
    row through clinpeft.data.rows (damaged files refused in one line; bad rows per data.on_bad_rows).
    _key: the patient id, or "<file name>:<row>" (rows from 0) as `prepare notes` numbers notes."""
    import pyarrow as pa
    from datasets import Dataset

    from clinpeft.data.rows import read_text_file, records

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    target = Path(cache_dir) / f"raw-{index:04d}.arrow"
    schema = pa.schema([("text", pa.large_string()), ("_key", pa.large_string())])
    fmt = file_format(path)
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        if fmt == "txt":
            writer.write_batch(pa.record_batch([[read_text_file(path)], [f"{path.name}:0"]], schema=schema))
        else:
            texts, keys = [], []
            for row, (_, record) in enumerate(records(path, fmt, section.on_bad_rows, bad)):
                text = record.get(section.text_column)
                texts.append(text if isinstance(text, str) else None)
                keys.append(str(record.get(section.patient_column)) if by_patient else f"{path.name}:{row}")
                if len(texts) >= 10_000:
                    writer.write_batch(pa.record_batch([texts, keys], schema=schema))
                    texts, keys = [], []
            if texts:
                writer.write_batch(pa.record_batch([texts, keys], schema=schema))
    return Dataset.from_file(str(target))


def _load_prepared(section: CorpusSection, cache_dir: Path):
    """Corpora from `clinpeft prepare notes` -> (train with `_key`, test, info), splits as prepared.

    The Arrow shards are memory-mapped, not copied. Several corpora are concatenated split by split;
    they must have been split the same way (by patient or by note). data.max_documents caps each split.
    """
    from datasets import Dataset, concatenate_datasets

    from clinpeft.files import read_json

    manifests = {Path(p).expanduser(): read_json(Path(p).expanduser() / "manifest.json", dict,
                                                 keys=("split_by",), what="corpus manifest",
                                                 hint="prepare the corpus again with `clinpeft prepare notes`")
                 for p in section.paths}
    split_by = {m["split_by"] for m in manifests.values()}
    if len(split_by) > 1:
        raise ClinpeftError(f"data.paths: prepared corpora split by {' and by '.join(sorted(split_by))}; "
                            "prepare them all with (or all without) a patient column")
    split_by = split_by.pop()
    key_column = "note_id" if split_by == "note" else "subject_id"  # the unit that must not straddle splits

    def split(name: str):
        shards = []
        for root, manifest in manifests.items():
            for shard in manifest["splits"][name]["shards"]:
                path = root / shard
                if not path.is_file():
                    raise ClinpeftError(f"{root}: shard {shard} of manifest.json is missing; "
                                        "run `clinpeft prepare notes` again")
                shards.append(Dataset.from_file(str(path)))
        ds = concatenate_datasets(shards) if len(shards) > 1 else shards[0]
        if section.max_documents:
            ds = ds.select(range(min(section.max_documents, len(ds))))
        return ds

    train, test = split("train"), split("test")
    if len(train) == 0 or len(test) == 0:
        raise ClinpeftError(f"data.paths: prepared corpora {', '.join(map(str, manifests))} have an empty "
                            f"{'test' if len(test) == 0 else 'train'} split; prepare them with another --test-fraction")
    train = train.map(lambda b: {"_key": [str(k) for k in b[key_column]]}, batched=True,
                      remove_columns=[c for c in train.column_names if c != "text"],
                      **cache_file(cache_dir, "train-keys"))
    test = test.select_columns(["text"])
    info = {
        "files": [str(p) for p in manifests],
        "notes_read": sum(m["notes_read"] for m in manifests.values()),
        "notes_dropped_empty": sum(m["dropped"].get("empty", 0) for m in manifests.values()),
        "split_by": split_by,
        "prepared_test_fraction": sorted({m["test_fraction"] for m in manifests.values()}),
    }
    return train, test, info
