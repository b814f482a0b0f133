"""Reading note files row by row, tolerant of the damage real exports carry, never echoing their text.

Used by `clinpeft prepare notes` and by `pretrain` on raw files. The policy, per problem:

- a row that cannot be parsed is a *bad row*: a CSV record whose quoting is broken (a quote not
  closed before the end of the file, a character after a closing quote) or whose field count differs
  from the header's, a JSONL line that is not a JSON object, a row with a NUL byte, a row with bytes
  that are not UTF-8 (decoded as strict UTF-8: no guessing of latin-1 or cp1252, which would silently
  turn "é" into mojibake). `on_bad="error"` (default) stops at the first one, naming its line number;
  `"skip"` drops it and counts it (`BadRows`: count and the first line numbers, never the text).
  After a broken quote, parsing restarts on the line after the record's first line.
- handled, not bad: a UTF-8 byte-order mark (removed), CRLF line ends (CSV: as the csv module reads
  them; JSONL: stripped).
- the whole file is refused (in both modes), one line naming the file: 0 bytes, a header and no rows,
  a `.gz` that is not gzip, a corrupt or truncated gzip stream (the rows after the damage are
  unknown; re-copy the file), an Excel workbook or other zip file renamed `.csv`.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from clinpeft.errors import ClinpeftError

ON_BAD_ROWS = ("error", "skip")
KEPT_LINE_NUMBERS = 100  # bad rows whose line numbers are listed (all are counted)
ZIP_MAGIC = b"PK\x03\x04"  # .xlsx, .docx, .zip
GZIP_MAGIC = b"\x1f\x8b"
csv.field_size_limit(2**31 - 1)  # a discharge summary can exceed the csv module's 128 KB default


@dataclass
class BadRows:
    """Rows dropped with on_bad="skip": how many, and the first KEPT_LINE_NUMBERS line numbers per file."""

    count: int = 0
    by_file: dict = field(default_factory=dict)  # path -> {"count": n, "lines": [...], "reasons": {reason: n}}

    def add(self, path: Path, line: int, reason: str) -> None:
        self.count += 1
        entry = self.by_file.setdefault(str(path), {"count": 0, "lines": [], "reasons": {}})
        entry["count"] += 1
        entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
        if len(entry["lines"]) < KEPT_LINE_NUMBERS:
            entry["lines"].append(line)

    def summary(self) -> dict:
        return {"count": self.count, "files": self.by_file}


def check_on_bad(value: str, option: str) -> str:
    if value not in ON_BAD_ROWS:
        raise ClinpeftError(f"{option} {value!r}: expected one of {', '.join(ON_BAD_ROWS)}")
    return value


def open_binary(path: Path):
    """The file's bytes (gunzipped for .gz), after refusing the files that are not text at all."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ClinpeftError(f"{path}: empty file (0 bytes); remove it from the inputs or re-export it")
    raw = open(path, "rb")
    head = raw.read(4)
    raw.seek(0)
    if path.suffix == ".gz":
        if head[:2] != GZIP_MAGIC:
            raw.close()
            raise ClinpeftError(f"{path}: not a gzip file although named .gz; rename it without .gz or re-compress it")
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
        try:
            head = stream.peek(4)[:4]
        except (OSError, EOFError, zlib.error):
            raw.close()
            raise ClinpeftError(f"{path}: corrupt gzip data at the start; re-copy or re-compress the file") from None
    else:
        stream = raw
    if head == ZIP_MAGIC:
        stream.close()
        raise ClinpeftError(f"{path}: a zip file (an Excel .xlsx renamed?), not text; export it as CSV (UTF-8)")
    return stream


def numbered_lines(path: Path, position: dict | None = None) -> Iterator[tuple[int, str]]:
    """(line number from 1, text with its line end) of every physical line; bytes that are not UTF-8
    come through as surrogates (errors="surrogateescape") and make their row bad, not the file.
    position["bytes"]: the bytes read from disk so far (compressed bytes for .gz), for progress bars."""
    stream = open_binary(path)
    disk = getattr(stream, "fileobj", None) or stream
    number = 0
    try:
        for number, data in enumerate(stream, start=1):
            if position is not None:
                position["bytes"] = disk.tell()
            text = data.decode("utf-8", errors="surrogateescape")
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield number, text
    except (OSError, EOFError, zlib.error) as exc:
        what = "truncated" if isinstance(exc, EOFError) else "corrupt"
        raise ClinpeftError(f"{path}: {what} gzip data after line {number}; the rows after it cannot be read: "
                            "re-copy the file (or decompress what is readable and prepare that)") from None
    finally:
        stream.close()


def row_problem(values) -> str | None:
    """Why a parsed row is bad (None: it is fine): a NUL byte, or bytes that were not UTF-8."""
    for value in values:
        if isinstance(value, str):
            if "\x00" in value:
                return "NUL byte"
            if any("\udc80" <= ch <= "\udcff" for ch in value):
                return "not UTF-8"
    return None


def _bad(path: Path, line: int, reason: str, on_bad: str, bad: BadRows, hint: str = "") -> None:
    if on_bad == "error":
        raise ClinpeftError(f"{path} line {line}: {reason}; fix that row{hint}, or pass --on-bad-rows skip "
                            "(pretrain: data.on_bad_rows=skip) to drop such rows and count them")
    bad.add(path, line, reason)


def csv_records(path: Path, on_bad: str, bad: BadRows, position: dict | None = None) -> Iterator[tuple[int, dict]]:
    """(line where the record starts, {column: value}) of every good CSV record; the header first checked."""
    source = numbered_lines(path, position)
    pending: deque = deque()  # lines to parse again after a broken record
    taken: list = []  # the lines the current record was read from

    def feed():
        while True:
            if pending:
                item = pending.popleft()
            else:
                item = next(source, None)
                if item is None:
                    return
            taken.append(item)
            yield item[1]

    header = None
    while True:
        reader = csv.reader(feed(), strict=True)
        try:
            for values in reader:
                start = taken[0][0]
                lines = len(taken)
                taken.clear()
                if header is None:
                    header = values
                    if row_problem(header):
                        raise ClinpeftError(f"{path} line {start}: the header row has {row_problem(header)} "
                                            "characters; save the file as UTF-8 text")
                    continue
                if not values or (len(values) == 1 and values[0] == "" and lines == 1):
                    continue  # blank line
                problem = row_problem(values)
                if problem:
                    _bad(path, start, problem, on_bad, bad)
                elif len(values) != len(header):
                    _bad(path, start, f"{len(values)} fields where the header has {len(header)}", on_bad, bad,
                         " (an unquoted comma or quote in a text field?)")
                else:
                    yield start, dict(zip(header, values))
            break
        except csv.Error:
            if not taken:  # nothing left to parse again
                break
            start = taken[0][0]
            _bad(path, start, "broken quoting (a quote not closed, or text after a closing quote)", on_bad, bad,
                 " (quote fields that hold commas, quotes or line breaks, and double the quotes inside them)")
            pending.extendleft(reversed(taken[1:]))  # parse again from the line after the record's first
            taken.clear()
    if header is None:
        raise ClinpeftError(f"{path}: no header row; expected a CSV with a header line (e.g. note_id,subject_id,text)")


def jsonl_records(path: Path, on_bad: str, bad: BadRows, position: dict | None = None) -> Iterator[tuple[int, dict]]:
    for number, text in numbered_lines(path, position):
        text = text.strip()
        if not text:
            continue
        problem = row_problem([text])
        if problem:
            _bad(path, number, problem, on_bad, bad)
            continue
        record = json_object(text)
        if record is None:
            _bad(path, number, "not a JSON object", on_bad, bad, " (JSONL: one {...} object per line)")
            continue
        yield number, record


def json_object(text: str) -> dict | None:
    """One JSONL line as a dict, None when it is not JSON or not an object."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


# a notes file's format from its suffix: csv | jsonl | txt (one note per file: the pretraining corpus only)
NOTE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}


def file_format(path: Path, txt: bool = True) -> str:
    """csv | jsonl | txt of a notes file from its suffix (case ignored; a trailing .gz: gzip-compressed), for the
    pretraining corpus (data/notes.py, `txt`: .txt files allowed) and the notes to score (data/note_files.py)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = NOTE_FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None or (fmt == "txt" and not txt):
        raise ClinpeftError(f"{path}: unsupported corpus file; use .csv, .csv.gz, .jsonl(.gz) or .txt" if txt
                            else f"{path}: unknown format; give a .csv, .csv.gz, .jsonl or .jsonl.gz file")
    return fmt


def records(path: Path, fmt: str, on_bad: str = "error", bad: BadRows | None = None,
            position: dict | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, row as a dict) of every good row of a .csv(.gz) / .jsonl(.gz) file; a file with a
    header and no rows (or no rows at all) is refused. position: see numbered_lines."""
    bad = bad if bad is not None else BadRows()
    reader = csv_records if fmt == "csv" else jsonl_records
    any_row = False
    for item in reader(Path(path), on_bad, bad, position):
        any_row = True
        yield item
    if not any_row and not bad.by_file.get(str(path)):
        raise ClinpeftError(f"{path}: no rows{' after the header' if fmt == 'csv' else ''}; "
                            "remove the file from the inputs or export it again")


def header(path: Path, fmt: str) -> list[str]:
    """The columns: the CSV header, or the keys of the first JSONL object (one line read)."""
    if fmt == "csv":
        for _, text in numbered_lines(path):
            values = next(csv.reader([text]), [])
            if row_problem(values):
                raise ClinpeftError(f"{path} line 1: the header row has {row_problem(values)} characters; "
                                    "save the file as UTF-8 text")
            return values
        return []
    for number, text in numbered_lines(path):
        if not text.strip():
            continue
        record = json_object(text)
        if record is None:
            raise ClinpeftError(f"{path} line {number}: not a JSON object; JSONL needs one note object per line")
        return list(record)
    return []


def read_text_file(path: Path) -> str:
    """A .txt note, whole: strict UTF-8 (BOM removed), no NUL bytes."""
    data = open_binary(path).read()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ClinpeftError(f"{path}: byte {exc.start} is not UTF-8; save the note as UTF-8 text") from None
    if "\x00" in text:
        raise ClinpeftError(f"{path}: holds NUL bytes; not a text file")
    return text
