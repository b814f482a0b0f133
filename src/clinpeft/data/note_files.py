"""Unlabelled notes to score (`clinpeft predict`): CSV, CSV.GZ or JSONL(.GZ), read in chunks.

`check_note_file` reads the whole file once before any scoring (bytes, columns, empty texts), so a
bad file stops the command with one line naming the line or row, before anything is written;
`read_note_chunks` then streams it, `chunk_rows` notes at a time (memory holds one chunk).

Rows are numbered as a spreadsheet shows them for CSV (header = row 1, first note = row 2) and by
line for JSONL (first note = line 1). Without an id column, a note's id is its position (1, 2, ...).
A `label` column, if any, is ignored.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clinpeft.data.rows import file_format
from clinpeft.errors import ClinpeftError


@dataclass
class NoteFile:
    path: Path
    fmt: str  # csv | jsonl
    text_column: str
    id_column: str | None  # None: the file has no such column, ids are positions
    n_notes: int


def check_utf8(path: Path) -> None:
    """One pass over the bytes: the first line that is not UTF-8, named by number (no text shown)."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if b"\x00" in line:  # ASCII saved as UTF-16 without its mark is "valid UTF-8" with NULs
                    raise ClinpeftError(f"{path} line {number}: NUL bytes; not a text file (UTF-16?): re-save the "
                                        "file as UTF-8")
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ClinpeftError(
                        f"{path} line {number}: not UTF-8 (byte 0x{line[exc.start]:02x} at byte {exc.start + 1} of "
                        "the line); re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT") from None
    except (OSError, EOFError) as exc:
        raise ClinpeftError(f"{path}: cannot be read ({exc}); is it a complete, uncompressed or gzip file?") from None


def _chunks(path: Path, fmt: str, chunk_rows: int, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    try:
        if fmt == "csv":
            yield from pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=chunk_rows, usecols=columns,
                                   encoding="utf-8")
        else:
            for frame in pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows, encoding="utf-8"):
                yield frame
    except (ValueError, pd.errors.ParserError) as exc:
        raise ClinpeftError(f"{path}: not a readable {fmt.upper()} file ({str(exc).splitlines()[0]})") from None


def _row_name(fmt: str, index: int) -> str:
    return f"row {index + 2}" if fmt == "csv" else f"line {index + 1}"


def check_note_file(path: str | Path, text_column: str = "text", id_column: str | None = None,
                    chunk_rows: int = 10_000) -> NoteFile:
    """Validate a notes file before scoring: exists, UTF-8, has the text column, no empty text. One line each.

    id_column None: the column `id` when the file has one, else positions 1, 2, ...; a column named by the user
    must exist (a typo would silently number the rows). Every chunk is checked, not only the first: a JSONL
    line without the id or text key is named."""
    path = Path(path)
    if not path.is_file():
        raise ClinpeftError(f"{path}: no such file; give the CSV/JSONL of notes to score with --notes")
    fmt = file_format(path, txt=False)
    if path.stat().st_size == 0:
        raise ClinpeftError(f"{path}: empty file (0 bytes); give the CSV/JSONL of notes to score with --notes")
    check_utf8(path)
    required_id = id_column is not None
    id_column = id_column or "id"
    n_notes, has_id, seen_ids = 0, None, set()
    for frame in _chunks(path, fmt, chunk_rows):
        if has_id is None:
            has_id = id_column in frame.columns
            if required_id and not has_id:
                found = ", ".join(map(str, frame.columns[:20]))
                raise ClinpeftError(f"{path}: no column {id_column!r} given by --id-column (columns: {found}); "
                                    "name an existing column, or leave --id-column out to number the notes")
        for column, option in ((text_column, "--text-column"), *([(id_column, "--id-column")] if has_id else [])):
            if column not in frame.columns:
                where = "" if n_notes == 0 else f" {_row_name(fmt, n_notes)} onwards"
                found = ", ".join(map(str, frame.columns[:20]))
                raise ClinpeftError(f"{path}{where}: no column {column!r} (columns: {found}); "
                                    f"give every row a {column!r}, or name the column with {option}")
        texts = frame[text_column]
        empty = texts.isna() | (texts.astype(str).str.strip() == "")
        if empty.any():
            first = int(empty.to_numpy().argmax())
            raise ClinpeftError(f"{path} {_row_name(fmt, n_notes + first)}: empty text in column {text_column!r}; "
                                "remove the row or fill it in")
        if has_id:
            # a JSONL line without the key: NaN or None in its chunk (None would read as the id "None")
            ids = frame[id_column].astype(str).str.strip().where(frame[id_column].notna(), "")
            for i, value in enumerate(ids):
                if value in ("", "nan") or value in seen_ids:
                    what = "empty or missing id" if value in ("", "nan") else f"id {value!r} appears more than once"
                    raise ClinpeftError(f"{path} {_row_name(fmt, n_notes + i)}: {what} in column {id_column!r}; "
                                        "ids must be unique (or pass --id-column of another column)")
                seen_ids.add(value)
        n_notes += len(frame)
    if not n_notes:
        raise ClinpeftError(f"{path}: no notes")
    return NoteFile(path, fmt, text_column, id_column if has_id else None, n_notes)


def read_note_chunks(notes: NoteFile, chunk_rows: int = 1024) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) of `chunk_rows` notes at a time, in file order."""
    start = 0
    for frame in _chunks(notes.path, notes.fmt, chunk_rows):
        texts = frame[notes.text_column].astype(str).tolist()
        if notes.id_column:
            ids = frame[notes.id_column].astype(str).str.strip().tolist()
        else:
            ids = [str(start + i + 1) for i in range(len(frame))]
        start += len(frame)
        yield ids, texts
