"""`clinpeft prepare notes`: MIMIC-IV-Note (or any CSV / JSONL / TXT notes) -> the pretraining corpus.

    clinpeft prepare notes --discharge discharge.csv.gz --radiology radiology.csv.gz --out corpus
    clinpeft prepare notes --input notes.jsonl --text-column body --subject-column patient --out corpus
    clinpeft pretrain configs/llama-7b/pretrain_lora.yaml data.paths=[corpus] --out runs/lora

check every file's columns -> read chunks of --chunk-rows rows (a progress bar over the bytes
read from disk, i.e. compressed bytes for .gz) -> keep --note-types -> normalise whitespace ->
drop empty notes -> test split by patient (clinpeft.data.notes.in_test_split: the rule pretrain
applies to raw files, so both paths give the same split) -> append to Arrow shards.

It streams: memory holds one chunk (plus the set of patient ids, for the counts), never a whole
file, so 2.65M notes prepare in the memory of a laptop.

Output directory (written whole, or not at all):
    train/data-00000.arrow ...   Arrow IPC stream shards, columns text, subject_id, note_id, note_type
    test/data-00000.arrow ...    (all strings; `datasets.Dataset.from_file` memory-maps a shard, and
                                 `datasets.load_dataset("arrow", data_dir=CORPUS)` loads both splits)
    manifest.json                counts (read, kept per split, dropped by reason, per file), the
                                 split rule and its seed; `pretrain` reads the shards from it
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from clinpeft import argtypes
from clinpeft.errors import ClinpeftError
from clinpeft.prepare.common import add_out_args

# MIMIC-IV-Note v2.2 discharge.csv.gz / radiology.csv.gz: note_id, subject_id, hadm_id, note_type,
# note_seq, charttime, storetime, text. These four are the ones the corpus needs.
MIMIC_COLUMNS = ("note_id", "subject_id", "note_type", "text")
# note_type: DS discharge summary, AD its addendum; RR radiology report, AR its addendum.
MIMIC_NOTE_TYPES = ("DS", "AD", "RR", "AR")
OUTPUT_COLUMNS = ("text", "subject_id", "note_id", "note_type")
CHUNK_ROWS = 5_000  # notes in memory at once: ~10 KB per real discharge summary -> ~50 MB of text; peak RSS ~ 15x that
SHARD_BYTES = 512 * 2**20  # text bytes per Arrow shard before a new one is started

# Whitespace normalisation, in order (RE2 patterns, run by Arrow over a whole chunk at once).
# Patterns match only what changes (not every single space or newline): 10x faster in RE2.
_ODD_SPACE = r"\t\v\f\x{a0}\x{1680}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}"  # \p{Zs} and tabs, less " "
WHITESPACE_RULES = (
    (r"\r\n?", "\n"),  # Windows / old Mac line ends -> \n
    (rf"[ {_ODD_SPACE}]{{2,}}|[{_ODD_SPACE}]", " "),  # runs of spaces, tabs, Unicode spaces (NBSP...) -> one space
    (r" \n ?|\n ", "\n"),  # no space at the start or end of a line
    (r"\n{3,}", "\n\n"),  # at most one blank line: paragraph and section breaks survive
)


@dataclass(frozen=True)
class Source:
    """One input file and how to read it."""

    path: Path
    kind: str  # "discharge" | "radiology" (MIMIC-IV-Note columns) | "input" (--input, your columns)
    text_column: str = "text"
    subject_column: str | None = "subject_id"  # None: the split is per note
    note_id_column: str | None = "note_id"
    note_type_column: str | None = "note_type"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "notes", help="MIMIC-IV-Note discharge/radiology (or any CSV/JSONL/TXT) -> the pretraining corpus",
        description="Stream clinical notes into an Arrow corpus that `clinpeft pretrain data.paths=[CORPUS]` "
        "reads: whitespace normalised (the ___ de-identification marks kept), empty notes dropped, "
        "note types filtered, a test split held out by patient. Counts go to CORPUS/manifest.json.")
    p.add_argument("--discharge", type=Path, help="MIMIC-IV-Note discharge.csv.gz (or .csv)")
    p.add_argument("--radiology", type=Path, help="MIMIC-IV-Note radiology.csv.gz (or .csv)")
    p.add_argument("--input", type=Path, nargs="+", default=[], metavar="FILE",
                   help="other notes: .csv(.gz), .jsonl(.gz) (one object per line) or .txt (one note per file)")
    p.add_argument("--text-column", default="text", help="--input files: the column holding the note text")
    p.add_argument("--subject-column", default="subject_id",
                   help="--input files: the patient id column; if a file lacks it the test split is per note")
    p.add_argument("--note-types", default=None, metavar="T[,T...]",
                   help="keep only these note_type values, e.g. DS,RR to drop the AD/AR addenda "
                   "(default: every type, as the paper's 2,653,149 notes)")
    p.add_argument("--test-fraction", type=argtypes.fraction, default=0.1,
                   help="share of patients held out for test (default 0.1)")
    p.add_argument("--seed", type=argtypes.seed, default=0,
                   help="seed of the split (default 0, pretrain's data.split_seed default)")
    p.add_argument("--on-bad-rows", default="error", choices=["error", "skip"],
                   help="a row that cannot be parsed (broken quoting, wrong field count, not JSON, NUL or non-UTF-8 "
                   "bytes): stop naming its line (error, default) or drop it and count it in manifest.json (skip)")
    p.add_argument("--chunk-rows", type=argtypes.count(1), default=CHUNK_ROWS,
                   help=f"notes read at once (default {CHUNK_ROWS:,}); bounds memory")
    add_out_args(p, "corpus directory to create", quiet_help="no progress bar", out_type=Path)
    p.set_defaults(run=run)


def run(args, progress: bool = True) -> dict:
    """The CLI entry point: arguments -> prepare_notes -> one summary line (counts only, no text)."""
    from clinpeft.data.rows import check_on_bad

    check_on_bad(args.on_bad_rows, "--on-bad-rows")
    sources = [Source(args.discharge, "discharge")] if args.discharge else []
    sources += [Source(args.radiology, "radiology")] if args.radiology else []
    sources += [Source(path, "input", text_column=args.text_column, subject_column=args.subject_column)
                for path in args.input]
    note_types = parse_note_types(args.note_types) if args.note_types is not None else None
    manifest = prepare_notes(sources, args.out, note_types=note_types, test_fraction=args.test_fraction,
                             seed=args.seed, chunk_rows=args.chunk_rows, overwrite=args.overwrite, progress=progress,
                             on_bad_rows=args.on_bad_rows)
    splits, dropped = manifest["splits"], manifest["dropped"]
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in flat_counts(dropped).items() if n) or "none"
    print(f"{args.out}: {manifest['notes_kept']:,} of {manifest['notes_read']:,} notes kept "
          f"(train {splits['train']['notes']:,} / test {splits['test']['notes']:,}, split by {manifest['split_by']}); "
          f"dropped: {reasons}")
    return manifest


def parse_note_types(value: str) -> list[str]:
    types = [t.strip().upper() for t in value.split(",") if t.strip()]
    if not types:
        raise ClinpeftError(f"--note-types {value!r} names no type; "
                            f"give e.g. DS,RR (MIMIC-IV-Note: {','.join(MIMIC_NOTE_TYPES)})")
    return types


def flat_counts(dropped: dict) -> dict[str, int]:
    """{"empty": 3, "note_type": {"AD": 2}} -> {"empty": 3, "note_type AD": 2}."""
    flat = {}
    for reason, n in dropped.items():
        if isinstance(n, dict):
            flat.update({f"{reason} {k}": v for k, v in n.items()})
        else:
            flat[reason] = n
    return flat


# --------------------------------------------------------------------------------------------
# Pure helpers: text, split
# --------------------------------------------------------------------------------------------


def normalise_whitespace(texts):
    """Normalise the whitespace of many notes at once (Arrow, no Python loop); -> pyarrow array.

    WHITESPACE_RULES in order, then strip both ends. Line structure is kept (one blank line at
    most), every other character is untouched, so the `___` de-identification marks stay as they
    are. Null -> "" (an empty note, dropped by the caller).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = pc.fill_null(pa.array(texts, type=pa.large_string()), "")
    for pattern, replacement in WHITESPACE_RULES:
        texts = pc.replace_substring_regex(texts, pattern, replacement)
    return pc.utf8_trim_whitespace(texts)


def normalise_in_threads(texts, pool):
    """normalise_whitespace over slices of `texts` in a thread pool (Arrow's regex kernels release the GIL)."""
    import pyarrow as pa

    n, k = len(texts), pool._max_workers
    bounds = [i * n // k for i in range(k + 1)]
    parts = pool.map(normalise_whitespace, [texts.slice(a, b - a) for a, b in zip(bounds, bounds[1:])])
    return pa.concat_arrays([part for part in parts])


def as_arrow(values):
    """A column of a chunk (pyarrow array or list of str) as a large_string pyarrow array."""
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(pa.large_string())
    return pa.array(values, type=pa.large_string())


def test_draws(keys, test_fraction: float, seed: int) -> list[bool]:
    """in_test_split for each key, hashing each distinct key once (a patient has many notes)."""
    from clinpeft.data.notes import in_test_split

    draw = {key: in_test_split(key, test_fraction, seed) for key in set(keys)}
    return [draw[key] for key in keys]


def id_string(value) -> str:
    """A patient / note id as the text pretrain hashes: 10000032 (not 10000032.0); missing -> ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


# --------------------------------------------------------------------------------------------
# Reading: column check first, then chunks
# --------------------------------------------------------------------------------------------


def check_source(source: Source) -> Source:
    """Fail before any work when a file is missing or lacks a column; drop optional columns it lacks."""
    from clinpeft.data.notes import column_names
    from clinpeft.data.rows import file_format

    path = source.path
    if not path.is_file():
        raise ClinpeftError(f"--{'input' if source.kind == 'input' else source.kind} {path} not found")
    fmt = file_format(path)
    if fmt == "txt":  # one note per file: no columns, no patient id
        return Source(path, source.kind, "text", None, None, None)
    columns = column_names(path, fmt)
    if source.kind != "input":
        missing = [c for c in MIMIC_COLUMNS if c not in columns]
        if missing:
            raise ClinpeftError(f"{path}: no column {', '.join(map(repr, missing))} "
                                f"(found {', '.join(columns) or 'none'}); "
                                f"--{source.kind} takes MIMIC-IV-Note's {source.kind}.csv.gz "
                                f"({', '.join(MIMIC_COLUMNS)}); "
                                "for other tables use --input with --text-column")
        return source
    if source.text_column not in columns:
        raise ClinpeftError(f"{path}: no column {source.text_column!r} (found {', '.join(columns) or 'none'}); "
                            "set --text-column to the column that holds the note text")
    return Source(path, "input", source.text_column,
                  source.subject_column if source.subject_column in columns else None,
                  "note_id" if "note_id" in columns else None,
                  "note_type" if "note_type" in columns else None)


def read_chunks(source: Source, chunk_rows: int = CHUNK_ROWS, on_bad_rows: str = "error",
                bad=None) -> Iterator[tuple[dict, int]]:
    """Yield (chunk, bytes read from disk so far); a chunk is {column: values} of at most chunk_rows rows.

    Columns: text, subject_id, note_id, note_type, as lists of str; "" where the file has no such
    column, note_id then being "<file name>:<row>" (rows counted from 0, bad rows not counted) as
    pretrain's raw-file loader numbers notes. Rows are read by clinpeft.data.rows (its policy for
    damaged files and bad rows: on_bad_rows "error" or "skip", skipped rows counted in `bad`, a
    data.rows.BadRows); gzip is decompressed on the fly.
    """
    from clinpeft.data.rows import BadRows, file_format, read_text_file, records

    if chunk_rows < 1:
        raise ClinpeftError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    fmt = file_format(source.path)
    if fmt == "txt":
        text = read_text_file(source.path)
        yield {"text": [text], "subject_id": [""], "note_id": [f"{source.path.name}:0"],
               "note_type": [""]}, source.path.stat().st_size
        return
    bad = bad if bad is not None else BadRows()
    columns = {"text": source.text_column, "subject_id": source.subject_column,
               "note_id": source.note_id_column, "note_type": source.note_type_column}
    chunk, row, position = {name: [] for name in columns}, 0, {"bytes": 0}
    for _, record in records(source.path, fmt, on_bad_rows, bad, position):
        for name, column in columns.items():
            value = record.get(column) if column is not None else None
            if name == "text":
                chunk[name].append(value if isinstance(value, str) else None)
            else:
                chunk[name].append(id_string(value))
        if source.note_id_column is None:
            chunk["note_id"][-1] = f"{source.path.name}:{row}"
        row += 1
        if len(chunk["text"]) >= chunk_rows:
            yield chunk, position["bytes"]
            chunk = {name: [] for name in columns}
    if chunk["text"]:
        yield chunk, source.path.stat().st_size


# --------------------------------------------------------------------------------------------
# Writing: Arrow shards per split
# --------------------------------------------------------------------------------------------


class ShardWriter:
    """Append record batches to `<dir>/data-00000.arrow`, starting a new shard every SHARD_BYTES of text."""

    def __init__(self, directory: Path, shard_bytes: int = SHARD_BYTES):
        import pyarrow as pa

        self.directory, self.shard_bytes = directory, shard_bytes
        self.schema = pa.schema([(name, pa.string()) for name in OUTPUT_COLUMNS])
        self.shards: list[Path] = []
        self.writer = None
        self.bytes_in_shard = 0
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, table) -> None:
        import pyarrow as pa

        if table.num_rows == 0:
            return
        if self.writer is None or self.bytes_in_shard >= self.shard_bytes:
            self.close()
            self.shards.append(self.directory / f"data-{len(self.shards):05d}.arrow")
            # the IPC *stream* format: what datasets' Dataset.from_file memory-maps
            self.writer = pa.ipc.new_stream(str(self.shards[-1]), self.schema)
            self.bytes_in_shard = 0
        self.writer.write_table(table.select(list(OUTPUT_COLUMNS)).cast(self.schema))
        self.bytes_in_shard += table["text"].nbytes

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def prepare_notes(sources: list[Source], out: str | Path, note_types: list[str] | None = None,
                  test_fraction: float = 0.1, seed: int = 0, chunk_rows: int = CHUNK_ROWS,
                  overwrite: bool = False, progress: bool = True, shard_bytes: int = SHARD_BYTES,
                  on_bad_rows: str = "error") -> dict:
    """Stream `sources` into the corpus directory `out`; return its manifest (also in out/manifest.json).
    on_bad_rows: "error" stops at the first unparseable row (naming its line), "skip" drops and counts them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from tqdm.auto import tqdm

    from clinpeft._version import __version__
    from clinpeft.data.rows import BadRows
    from clinpeft.rundir import atomic_run_dir, write_json

    # --- check everything before any work
    if not sources:
        raise ClinpeftError("prepare notes: no input; "
                            "give --discharge and/or --radiology (MIMIC-IV-Note), or --input FILE ...")
    if not 0 < test_fraction < 1:
        raise ClinpeftError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    sources = [check_source(s) for s in sources]
    if note_types is not None:
        untyped = [str(s.path) for s in sources if s.note_type_column is None]
        if untyped:
            raise ClinpeftError(f"--note-types: {', '.join(untyped)} has no note_type column; leave out --note-types, "
                                "or add the column")
    # by patient only when every file names the patient (as pretrain's raw-file loader decides)
    by_patient = all(s.subject_column is not None for s in sources)
    split_by = "subject_id" if by_patient else "note"

    counts = {"read": Counter(), "kept": Counter(), "empty": Counter(), "missing_subject_id": Counter(),
              "note_type": {}}
    patients = {"train": set(), "test": set()}  # distinct ids: bounded by patients, not notes
    notes = {"train": 0, "test": 0}
    chars = {"train": 0, "test": 0}
    total_bytes = sum(s.path.stat().st_size for s in sources)
    bad = BadRows()

    with atomic_run_dir(out, overwrite) as corpus_dir:
        writers = {name: ShardWriter(corpus_dir / name, shard_bytes) for name in ("train", "test")}
        pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))  # whitespace rules, slice by slice
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare notes",
                   disable=not progress)
        done_bytes = 0
        try:
            for source in sources:
                file_key = str(source.path)
                dropped_types = counts["note_type"].setdefault(file_key, Counter())
                for chunk, read_bytes in read_chunks(source, chunk_rows, on_bad_rows, bad):
                    n = len(chunk["text"])
                    counts["read"][file_key] += n
                    table = pa.table({name: as_arrow(chunk[name]) for name in OUTPUT_COLUMNS})
                    # 1. note types (before the emptiness check: a dropped addendum counts once, as its type)
                    if note_types is not None:
                        wanted = pc.is_in(table["note_type"], value_set=pa.array(note_types, type=pa.large_string()))
                        wanted = pc.fill_null(wanted, False)
                        dropped_types.update(pc.filter(table["note_type"], pc.invert(wanted)).to_pylist())
                        table = table.filter(wanted)
                    # 2. whitespace, then empty notes
                    table = table.set_column(0, "text", normalise_in_threads(table["text"].combine_chunks(), pool))
                    non_empty = pc.greater(pc.utf8_length(table["text"]), 0)
                    counts["empty"][file_key] += table.num_rows - (pc.sum(non_empty).as_py() or 0)
                    table = table.filter(non_empty)
                    # 3. a note without a patient id cannot be split by patient
                    if by_patient:
                        has_subject = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table["subject_id"])), 0)
                        counts["missing_subject_id"][file_key] += table.num_rows - (pc.sum(has_subject).as_py() or 0)
                        table = table.filter(has_subject)
                    # 4. the held-out split: by patient, or by "<file>:<row>" as pretrain numbers raw notes
                    keys = table["subject_id" if by_patient else "note_id"].to_pylist()
                    is_test = pa.array(test_draws(keys, test_fraction, seed), type=pa.bool_())
                    for name, mask in (("test", is_test), ("train", pc.invert(is_test))):
                        part = table.filter(mask)
                        writers[name].write(part)
                        notes[name] += part.num_rows
                        chars[name] += pc.sum(pc.utf8_length(part["text"])).as_py() or 0
                        if by_patient:
                            patients[name].update(pc.unique(part["subject_id"]).to_pylist())
                    counts["kept"][file_key] += table.num_rows
                    bar.update(done_bytes + read_bytes - bar.n)
                done_bytes += source.path.stat().st_size
                bar.update(done_bytes - bar.n)
        finally:
            bar.close()
            pool.shutdown()
            for writer in writers.values():
                writer.close()

        if notes["train"] == 0 or notes["test"] == 0:
            empty = "test" if notes["test"] == 0 else "train"
            raise ClinpeftError(f"prepare notes: {notes['train'] + notes['test']} kept notes "
                                f"give an empty {empty} split "
                                f"at --test-fraction {test_fraction}; add notes or change the fraction")
        files = []
        for source in sources:
            key = str(source.path)
            dropped = {"note_type": dict(counts["note_type"][key]), "empty": counts["empty"][key],
                       "missing_subject_id": counts["missing_subject_id"][key]}
            files.append({"path": key, "kind": source.kind, "bytes": source.path.stat().st_size,
                          "notes_read": counts["read"][key], "notes_kept": counts["kept"][key], "dropped": dropped})
        dropped_types = Counter()
        for per_file in counts["note_type"].values():
            dropped_types.update(per_file)
        dropped = {"note_type": dict(sorted(dropped_types.items())), "empty": sum(counts["empty"].values()),
                   "missing_subject_id": sum(counts["missing_subject_id"].values())}
        manifest = {
            "format": "clinpeft-corpus",  # how `pretrain` recognises a prepared corpus in data.paths
            "format_version": 1,
            "notes_read": sum(counts["read"].values()),
            "notes_kept": notes["train"] + notes["test"],
            "notes_dropped": sum(flat_counts(dropped).values()),
            "dropped": dropped,  # by reason: note types not kept (per type), empty after normalisation, no patient id
            "splits": {
                name: {"notes": notes[name], "patients": len(patients[name]) if by_patient else None,
                       "characters": chars[name],
                       "shards": [str(p.relative_to(corpus_dir)) for p in writers[name].shards]}
                for name in ("train", "test")
            },
            "split_by": split_by,
            "test_fraction": test_fraction,
            "seed": seed,
            "split_rule": "test if sha1(f'{seed}:{key}') as a fraction of 2**64 < test_fraction; key = subject_id "
                          "(or '<file name>:<row>' per note): clinpeft.data.notes.in_test_split",
            "note_types": note_types,  # None: every type kept
            "on_bad_rows": on_bad_rows,
            "bad_rows": bad.summary(),  # rows that could not be parsed, skipped: count, per file the first line numbers
            "whitespace_rules": [list(rule) for rule in WHITESPACE_RULES] + [["trim", "both ends"]],
            "columns": list(OUTPUT_COLUMNS),
            "files": files,
            "clinpeft_version": __version__,
        }
        write_json(corpus_dir / "manifest.json", manifest)
    return manifest
