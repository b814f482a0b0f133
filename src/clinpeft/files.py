"""The one layer every file clinpeft reads goes through: a fault in the file is one line naming it.

Decoding (a UTF-8 or UTF-16 byte-order mark is honoured, anything else is strict UTF-8: no guessing),
parsing (JSON, YAML, CSV), the shape (a JSON object where one is expected, the keys it must hold, the
columns of a CSV) and completeness (a truncated safetensors or torch file) are checked here, and each
fault becomes a ClinpeftError `PATH[ row N | key K]: what; how to fix it`, never a traceback and never
the file's text (cells may be notes): only positions, counts and names are shown.

Readers of rows that stream (note corpora: data/rows.py, note files to score: data/note_files.py) keep
their own line-by-line policy (bad rows skipped or counted) and use the whole-file checks here.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterable

from clinpeft.errors import ClinpeftError

csv.field_size_limit(2**31 - 1)  # a discharge summary can exceed the csv module's 128 KB default

# byte-order marks, longest first (a UTF-32 LE mark starts with the UTF-16 LE one)
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_NAMES = {"dict": "a JSON object ({...})", "list": "a JSON list ([...])", "str": "a string", "int": "a number",
          "float": "a number", "bool": "true/false", "NoneType": "null"}


def _kind(value: Any) -> str:
    return _NAMES.get(type(value).__name__, type(value).__name__)


def read_bytes(path: str | Path, what: str = "file", hint: str = "") -> bytes:
    """The file's bytes; a missing file, a folder or an unreadable file is one line (`hint`: how to fix)."""
    path = Path(path)
    if path.is_dir():
        raise ClinpeftError(f"{path} is a folder, not a {what}{'; ' + hint if hint else ''}")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ClinpeftError(f"{path} not found{'; ' + hint if hint else ''}") from None
    except OSError as exc:
        raise ClinpeftError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None


def decode(data: bytes, path: str | Path) -> str:
    """Text from bytes: a byte-order mark picks UTF-8/16/32, else strict UTF-8. A byte that is not UTF-8 is
    named by line and byte (never shown); NUL bytes (a binary file, or UTF-16 without its mark) refused."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding).removeprefix("\ufeff")
            except UnicodeDecodeError:
                raise ClinpeftError(f"{path}: starts with a {encoding.upper()} byte-order mark but is not "
                                    f"{encoding.upper()} text; re-save it as UTF-8") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ClinpeftError(f"{path} line {line}: not UTF-8 (byte 0x{data[exc.start]:02x}); re-save the file as "
                            "UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ClinpeftError(f"{path} line {line}: NUL bytes; not a text file (UTF-16 without a byte-order mark?): "
                            "re-save it as UTF-8")
    return text


def read_text(path: str | Path, what: str = "text file", hint: str = "", allow_empty: bool = True) -> str:
    """A whole text file, decoded by `decode`; `allow_empty=False` refuses a 0-byte (or blank) file."""
    text = decode(read_bytes(path, what, hint), path)
    if not allow_empty and not text.strip():
        raise ClinpeftError(f"{path}: empty {what}{'; ' + hint if hint else ''}")
    return text


def read_json(path: str | Path, expect: type = dict, keys: Iterable[str] = (), what: str = "JSON file",
              hint: str = "") -> Any:
    """A JSON file of the type `expect` holding `keys` (an object's), or one line: missing, empty, truncated
    or not JSON (with the line), another type, a missing key."""
    path = Path(path)
    text = read_text(path, what, hint)
    if not text.strip():
        raise ClinpeftError(f"{path}: empty file; {hint or 'it should hold ' + _NAMES.get(expect.__name__, 'JSON')}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " (truncated?)" if not text.rstrip().endswith(("}", "]")) else ""
        raise ClinpeftError(f"{path}: not valid JSON{cut} ({exc.msg} at line {exc.lineno}); "
                            f"{hint or 'restore or rewrite the file'}") from None
    if not isinstance(value, expect):
        raise ClinpeftError(f"{path}: holds {_kind(value)} where {_NAMES.get(expect.__name__, expect.__name__)} "
                            f"is expected; {hint or 'restore or rewrite the file'}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise ClinpeftError(f"{path}: missing key {', '.join(repr(k) for k in missing)}; "
                            f"{hint or 'restore or rewrite the file'}")
    return value


def yaml_error(exc: Exception) -> str:
    """PyYAML's multi-line message folded into one line: 'line L column C: problem (context)'."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return f"{where}{problem}{f' ({context})' if context else ''}".replace("\n", " ")


def read_yaml(path: str | Path, what: str = "YAML file", hint: str = "") -> Any:
    """A YAML file (any encoding `decode` accepts), parse errors folded into one line."""
    import yaml

    text = read_text(path, what, hint)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClinpeftError(f"{path}: not valid YAML, {yaml_error(exc)}; fix that line "
                            "(YAML indents with spaces, never tabs)") from None


def read_csv(path: str | Path, columns: Iterable[str] = (), what: str = "CSV file", hint: str = ""):
    """A CSV file as a DataFrame of strings (no NA guessing: ICD-9 codes keep their zeros, an empty cell is ''),
    read by the csv module in strict mode so every row must have the header's field count: an unquoted comma
    is named at its own row (pandas would shift the columns or blame another row). Rows are numbered as a
    spreadsheet shows them (header = row 1). `columns`: required, named when missing."""
    import pandas as pd

    path = Path(path)
    text = read_text(path, what, hint)
    if not text.strip():
        raise ClinpeftError(f"{path}: empty file (0 bytes); {hint or 'expected a CSV with a header row'}")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[list[str]] = []
    try:
        header = next(reader)
        for values in reader:
            if not values or values == [""]:
                continue  # a blank line
            if len(values) != len(header):
                raise ClinpeftError(
                    f"{path} row {len(rows) + 2}: {len(values)} fields where the header has {len(header)}; "
                    "an unquoted comma or quote in a text field? quote fields holding commas, quotes or line breaks")
            rows.append(values)
    except csv.Error:
        raise ClinpeftError(f"{path} row {len(rows) + 2}: broken quoting (a quote not closed, or text after a "
                            "closing quote); quote text fields and double the quotes inside them") from None
    header = [name.strip() for name in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ClinpeftError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header[:20])}"
                            f"{'; ' + hint if hint else ''}")
    return pd.DataFrame(rows, columns=header, dtype=str)


def read_lines(path: str | Path, what: str = "text file", hint: str = "") -> list[str]:
    """The non-blank lines of a text file, stripped."""
    return [line.strip() for line in read_text(path, what, hint).splitlines() if line.strip()]


# --------------------------------------------------------------------------- binary files: complete or not


def check_safetensors(path: str | Path, hint: str = "") -> Path:
    """A safetensors file whose header parses and whose tensors all lie inside the file (a copy cut short or a
    checkpoint killed mid-write fails here, in one line, before torch reads it)."""
    path = Path(path)
    hint = hint or "restore it from a complete copy, or rerun the command that wrote it"
    if not path.is_file():
        read_bytes(path, "safetensors file", hint)  # the one-line "not found" / "is a folder"
    data_size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ClinpeftError(f"{path}: truncated safetensors file ({data_size} bytes); {hint}")
        (length,) = struct.unpack("<Q", head)
        if length > data_size - 8:
            raise ClinpeftError(f"{path}: truncated safetensors file (its header runs past the end); {hint}")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise ClinpeftError(f"{path}: not a safetensors file (unreadable header); {hint}") from None
    if not isinstance(header, dict):
        raise ClinpeftError(f"{path}: not a safetensors file (unreadable header); {hint}")
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + length + end > data_size:
        raise ClinpeftError(f"{path}: truncated safetensors file ({data_size} of {8 + length + end} bytes); {hint}")
    return path


def check_torch_file(path: str | Path, hint: str = "") -> Path:
    """A file torch.save wrote (a zip archive: optimizer.pt, scheduler.pt, rng_state.pth) that is complete: its
    central directory (at the end, so a file cut short has none) and every member inside the file. Cheap (no
    checksum pass over the data: a full fine-tuning's optimizer state is tens of GB) and read as a zip only,
    never unpickled."""
    path = Path(path)
    hint = hint or "restore it, or rerun the command that wrote it"
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except FileNotFoundError:
        raise ClinpeftError(f"{path} not found; {hint}") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise ClinpeftError(f"{path}: truncated or damaged (not a complete torch file); {hint}") from None
    for info in members:
        if info.header_offset + 30 + len(info.filename.encode()) + info.compress_size > size:  # 30: local header
            raise ClinpeftError(f"{path}: truncated (member {info.filename} runs past the end); {hint}")
    return path


def check_complete(path: str | Path, hint: str = "") -> Path:
    """A written file checked by its kind: .safetensors, torch's .pt/.pth/.bin, .json; other files: readable."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return check_safetensors(path, hint)
    if path.suffix in (".pt", ".pth", ".bin"):
        return check_torch_file(path, hint)
    if path.suffix == ".json":
        read_json(path, expect=object, hint=hint)
        return path
    read_bytes(path, hint=hint)
    return path
