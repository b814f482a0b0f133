"""Damaged note files: one line each, naming the file and line, never the text (clinpeft.data.rows' policy).

Every file plants CANARY in its note text; no message may contain it.
"""

import gzip
import json

import pytest

from clinpeft.cli import main

CANARY = "ZEBRA-CANARY-7731"
HEADER = "note_id,subject_id,text\n"


def rows(n=6, start=0):
    return "".join(f"n{i},{100 + i},\"Note {i} {CANARY}, chest pain\"\n" for i in range(start, start + n))


def prepare(tmp_path, capsys, path, *extra):
    out = tmp_path / "corpus"
    code = main(["prepare", "notes", "--input", str(path), "--out", str(out), "--test-fraction", "0.3", "--quiet",
                 *extra])
    captured = capsys.readouterr()
    assert CANARY not in captured.err + captured.out and "Traceback" not in captured.err
    manifest = json.loads((out / "manifest.json").read_text()) if code == 0 else None
    if code != 0:
        assert not out.exists() and not list(tmp_path.glob(".corpus.tmp-*"))
    return code, captured.err.strip(), manifest


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


# (case, file name, content, expected message part): refused as a whole, in both modes
WHOLE_FILE = [
    ("0 bytes", "notes.csv", b"", "empty file (0 bytes)"),
    ("header only", "notes.csv", HEADER.encode(), "no rows after the header"),
    ("header only, CRLF", "notes.csv", HEADER.replace("\n", "\r\n").encode(), "no rows after the header"),
    ("xlsx renamed .csv", "notes.csv", b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 200, "a zip file (an Excel .xlsx"),
    ("not gzip although .gz", "notes.csv.gz", (HEADER + rows()).encode(), "not a gzip file"),
    ("truncated gzip", "notes.csv.gz", gz((HEADER + rows(400)).encode())[:-600], "truncated gzip data after line"),
    ("corrupt gzip", "notes.csv.gz", gz((HEADER + rows(400)).encode())[:200] + b"\xff" * 400, "gzip data"),
    ("jsonl first line not an object", "notes.jsonl", b"[1, 2]\n", "line 1: not a JSON object"),
]


@pytest.mark.parametrize("case, name, content, message", WHOLE_FILE, ids=[c[0] for c in WHOLE_FILE])
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_damaged_file_is_one_line(tmp_path, capsys, case, name, content, message, mode):
    path = tmp_path / name
    path.write_bytes(content)
    code, err, _ = prepare(tmp_path, capsys, path, "--on-bad-rows", mode)
    assert code == 2 and err.count("\n") == 0 and err.startswith(f"error: {path}") and message in err, err


LATIN1 = f"n2,102,\"Patient {CANARY} caf\xe9\"\n".encode("latin-1")
# (case, file name, content, bad line, message part, good rows)
BAD_ROWS = [
    ("NUL byte", "notes.csv", (HEADER + rows(2)).encode() + f"n9,109,\"x\x00 {CANARY}\"\n".encode()
     + rows(3, 2).encode(), 4, "NUL byte", 5),
    ("non-UTF-8 byte", "notes.csv", (HEADER + rows(2)).encode() + LATIN1 + rows(3, 3).encode(), 4, "not UTF-8", 5),
    ("ragged row", "notes.csv", (HEADER + rows(2) + f"n9,109,{CANARY}, an unquoted comma\n" + rows(3, 2)).encode(), 4,
     "4 fields where the header has 3", 5),
    ("unclosed quote", "notes.csv", (HEADER + rows(3) + f"n9,109,\"{CANARY} never closed\n").encode(), 5,
     "broken quoting", 3),
    ("text after a closing quote", "notes.csv", (HEADER + rows(2) + f"n9,109,\"{CANARY}\"x\n" + rows(3, 2)).encode(), 4,
     "broken quoting", 5),
    ("jsonl line not JSON", "notes.jsonl",
     (json.dumps({"text": f"a {CANARY}", "subject_id": 1}) + "\n" + f"{{'text': '{CANARY}'\n"
      + "".join(json.dumps({"text": f"note {i} {CANARY}", "subject_id": i}) + "\n" for i in range(2, 7))).encode(),
     2, "not a JSON object", 6),
]


@pytest.mark.parametrize("case, name, content, line, message, good", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_bad_row_error_names_its_line_and_skip_counts_it(tmp_path, capsys, case, name, content, line, message, good):
    path = tmp_path / name
    path.write_bytes(content)
    code, err, _ = prepare(tmp_path, capsys, path)
    assert code == 2 and err.count("\n") == 0 and err.startswith(f"error: {path} line {line}: {message}"), err
    assert "--on-bad-rows skip" in err
    code, err, manifest = prepare(tmp_path, capsys, path, "--on-bad-rows", "skip")
    assert code == 0, err
    assert manifest["notes_read"] == good and manifest["bad_rows"]["count"] == 1
    assert manifest["bad_rows"]["files"][str(path)]["lines"] == [line]
    assert CANARY not in json.dumps(manifest["bad_rows"])


def test_bom_and_crlf_are_read(tmp_path, capsys):
    path = tmp_path / "notes.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + rows(6)).replace("\n", "\r\n").encode())
    code, err, manifest = prepare(tmp_path, capsys, path)
    assert code == 0, err
    assert manifest["notes_kept"] == 6 and manifest["split_by"] == "subject_id"  # the BOM did not hide the column
    from datasets import Dataset

    texts = [t for s in manifest["splits"].values() for shard in s["shards"]
             for t in Dataset.from_file(str(tmp_path / "corpus" / shard))["text"]]
    assert not any("\r" in t for t in texts)


@pytest.mark.parametrize("override, expected", [
    (None, "line 4: 4 fields where the header has 3"),
    ("data.on_bad_rows=skip", None),
])
def test_pretrain_reads_raw_files_with_the_same_policy(tmp_path, capsys, tiny_llama, override, expected):
    path = tmp_path / "notes.csv"
    path.write_text(HEADER + rows(2) + f"n9,109,{CANARY}, an unquoted comma\n" + rows(40, 2))
    (tmp_path / "r.yaml").write_text("{}\n")
    out = tmp_path / "run"
    args = ["pretrain", str(tmp_path / "r.yaml"), f"model.base={tiny_llama}", f"data.paths=[{path}]",
            "data.max_seq_len=64", "data.test_fraction=0.25", "train.batch_size=4", "train.grad_accum=1",
            "train.max_steps=1", "eval.train_max_blocks=4", "eval.base_model=false", "peft.r=2",
            *([override] if override else []), "--out", str(out), "--quiet"]
    code = main(args)
    captured = capsys.readouterr()
    assert CANARY not in captured.err + captured.out and "Traceback" not in captured.err
    if expected:
        assert code == 2 and captured.err.strip() == f"error: {path} {expected}; fix that row (an unquoted comma or " \
            "quote in a text field?), or pass --on-bad-rows skip (pretrain: data.on_bad_rows=skip) to drop such rows " \
            "and count them"
        assert not out.exists() and not (tmp_path / "run.partial").exists()
    else:
        assert code == 0
        run = json.loads((out / "run.json").read_text())
        assert run["bad_rows"]["count"] == 1 and run["bad_rows"]["files"][str(path)]["lines"] == [4]
        assert run["notes_read"] == 42


@pytest.mark.parametrize("content, message", [(b"", "empty file (0 bytes)"), (b"PK\x03\x04xx", "a zip file")])
def test_pretrain_with_an_unreadable_raw_file_is_one_line(tmp_path, capsys, tiny_llama, content, message):
    path = tmp_path / "notes.csv"
    path.write_bytes(content)
    (tmp_path / "r.yaml").write_text("{}\n")
    code = main(["pretrain", str(tmp_path / "r.yaml"), f"model.base={tiny_llama}", f"data.paths=[{path}]",
                 "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()
