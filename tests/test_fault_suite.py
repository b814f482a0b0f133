"""The generated fault suite (issue 26): instead of adding cases by hand, walk every config key (the pydantic
models, so a new key is covered the day it is added) and every command-line option (the argparse parser), try
the out-of-range values of its type, and feed every reader an empty, truncated, wrongly encoded and wrongly
shaped file. Each must give exit 2 and one `error:` line naming the key, option or file, no traceback and
nothing written.

In-process (clinpeft.cli.main with capsys): the config and option cases fail before torch is imported; the
reader cases that need a model reuse one tiny finetune run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import typing
from pathlib import Path

import pytest
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from clinpeft.cli import build_parser, main
from clinpeft.config import FinetuneConfig, PretrainConfig, Section
from clinpeft.rundir import partial_dir

CANARY = "OKAPI-CANARY-4417"


def run(capsys, args: list[str]) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert CANARY not in captured.err + captured.out, "note text reached the terminal"
    return code, captured.err.strip()


def assert_one_line(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was written"
    assert not partial_dir(out).exists(), "a partial output was left"
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


# --------------------------------------------------------------------------- config keys


def _constraints(annotation, metadata) -> tuple[list, type | None, bool]:
    """(range constraints, base type, optional) of a field: Annotated metadata at any depth of Optional."""
    constraints, optional = list(metadata), False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        optional = type(None) in args
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        for item in extra:
            constraints += list(getattr(item, "metadata", [item]))
        annotation = base
    return constraints, annotation, optional


def _section(annotation) -> tuple[type | None, bool]:
    """(the Section a field holds, whether it is a list of them): `X`, `X | None` and `list[X]` are walked into."""
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0]
        return (item, True) if isinstance(item, type) and issubclass(item, Section) else (None, False)
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate, False
    return None, False


def config_leaves(cls: type[BaseModel], prefix: str = ""):
    """(dotted key, field) of every leaf of a config model, sections walked recursively (a list of sections,
    such as an experiment's `models:`, through its first item: `models.0.name`)."""
    for name, field in cls.model_fields.items():
        section, is_list = _section(field.annotation)
        if section is not None:
            yield from config_leaves(section, f"{prefix}{name}.{'0.' if is_list else ''}")
        else:
            yield f"{prefix}{name}", field


def bad_values(field) -> list[str]:
    """YAML override values outside the field's type: below/above its range, inf/NaN, the wrong type."""
    constraints, base, _ = _constraints(field.annotation, field.metadata)
    values = []
    if base in (int, float):
        for c in constraints:
            if isinstance(c, Ge):
                values.append(c.ge - 1)
            elif isinstance(c, Gt):
                values.append(c.gt if base is int or c.gt != 0 else -1e-9)
            elif isinstance(c, Le):
                values.append(c.le + 1)
            elif isinstance(c, Lt):
                values.append(c.lt)
        values.append("not-a-number")
        if base is float:
            values += [".inf", "-.inf", ".nan"]
        else:
            values.append(1.5)
    elif base is bool:
        values.append("maybe")
    elif typing.get_origin(base) is typing.Literal:
        values.append("not-a-choice")
    elif base is str:
        values.append("{a: 1}")
    elif typing.get_origin(base) is list:
        values.append("{a: 1}")
    return [str(v) for v in values]


def experiment_config():
    from clinpeft.recipes.experiment import ExperimentConfig

    return ExperimentConfig


def sweep_recipe():
    from clinpeft.sweep.study import SweepRecipe

    return SweepRecipe


# the recipe keys of every command that reads one: a sweep's `sweep:` section here, its `search:` entries below
CONFIGS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "experiment": experiment_config(),
           "sweep": sweep_recipe()}
# the smallest valid recipe of each command: a key's bad value is then the only fault
BASE_RECIPES = {"pretrain": "{}\n", "finetune": "{}\n",
                "experiment": "data: {demo: quick}\nmodels: [{name: m, base: demo, variants: [lora]}]\n",
                "sweep": "sweep: {step: finetune}\n"}
CASES = [(command, key, value) for command, cls in CONFIGS.items() for key, field in config_leaves(cls)
         for value in bad_values(field)]


def recipe_with(base: str, key: str, value: str) -> str:
    """The base recipe with `key` (dotted, list items by index: models.0.name) set to the YAML `value`: how a key
    inside a list, which no command-line override reaches, is given a bad value."""
    import yaml

    tree = yaml.safe_load(base) or {}
    node, *path, last = [tree, *key.split(".")]
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[int(last) if isinstance(node, list) else last] = yaml.safe_load(value)
    return yaml.safe_dump(tree)
# numbers that may take any value of their type, with the reason (the README's "deliberately accepted")
UNBOUNDED_NUMBERS: dict[str, str] = {}


def test_every_config_number_has_a_range():
    """A new int/float key without ge/gt (and a seed without its upper bound) fails here, not in a user's run."""
    missing = []
    for command, cls in CONFIGS.items():
        for key, field in config_leaves(cls):
            constraints, base, _ = _constraints(field.annotation, field.metadata)
            if base in (int, float) and not any(isinstance(c, (Ge, Gt)) for c in constraints):
                if key not in UNBOUNDED_NUMBERS:
                    missing.append(f"{command}: {key}")
            if "seed" in key and not any(isinstance(c, Le) and c.le == 2**32 - 1 for c in constraints):
                missing.append(f"{command}: {key} (seeds: 0 .. 2**32-1)")
    assert not missing, missing


def test_the_walk_covers_every_key():
    keys = {key for command, key, _ in CASES}
    assert {"train.seed", "eval.bootstrap_seed", "task.max_examples", "train.epochs", "train.max_steps",
            "data.split_seed", "peft.method", "model.dtype", "sweep.n_startup_trials", "sweep.step",
            "models.0.name", "models.0.variants", "models.0.clinical.run", "report.bootstrap_seed"} <= keys
    assert len(keys) >= 60, len(keys)
    # every leaf of every recipe model is walked: a key with no bad value of its type would be untested
    for command, cls in CONFIGS.items():
        untested = [key for key, field in config_leaves(cls) if not bad_values(field)]
        assert not untested, (command, untested)


@pytest.mark.parametrize("command, key, value", CASES, ids=[f"{c}:{k}={v}" for c, k, v in CASES])
def test_out_of_range_config_value(capsys, tmp_path, command, key, value):
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "out"
    if ".0." in key:  # inside a list: in the recipe itself
        recipe.write_text(recipe_with(BASE_RECIPES[command], key, value))
        code, err = run(capsys, [command, recipe, "--out", out, "--quiet"])
    else:
        recipe.write_text(BASE_RECIPES[command])
        code, err = run(capsys, [command, recipe, f"{key}={value}", "--out", out, "--quiet"])
    assert_one_line(code, err, key)
    assert_nothing_written(out)


# a sweep's `search:` entries: every key of the step's config, each with a choice outside its type, must be refused
# before any trial, naming search.KEY (space.build_search_space checks every choice as a config value)
SEARCH_CASES = [(step, key, value) for step, cls in (("pretrain", PretrainConfig), ("finetune", FinetuneConfig))
                for key, field in config_leaves(cls) for value in bad_values(field)]
# entries that are no choice list and no range, on a key whose values are fine
SEARCH_FORMS = ["[]", "{low: 1.0e-3, high: 1.0e-5}", "{low: 0, high: 1.0e-3, log: true}",
                "{low: 1.0e-5, high: 1.0e-3, log: true, step: 1.0e-5}", "{low: a, high: b}", "5", "[[1, 2]]",
                "{low: 1.0e-5}"]


@pytest.mark.parametrize("step, key, value", SEARCH_CASES, ids=[f"{s}:search.{k}=[{v}]" for s, k, v in SEARCH_CASES])
def test_out_of_range_search_choice(capsys, tmp_path, monkeypatch, step, key, value):
    monkeypatch.chdir(tmp_path)  # task.path=. : a folder that exists, so the choice is the only fault
    (tmp_path / "r.yaml").write_text(f"sweep: {{step: {step}}}\n" + ("task: {path: .}\n" if step == "finetune" else ""))
    from clinpeft.sweep.space import resolve_key

    code, err = run(capsys, ["sweep", "r.yaml", f"search.{key}=[{value}]", "--out", "out", "--quiet"])
    assert_one_line(code, err, f"search.{resolve_key(key, step)}")  # a bare name is the adapter's (r: lora.r)
    assert list(tmp_path.iterdir()) == [tmp_path / "r.yaml"]


@pytest.mark.parametrize("form", SEARCH_FORMS)
def test_malformed_search_entry(capsys, tmp_path, monkeypatch, form):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("sweep: {step: finetune}\ntask: {path: .}\n")
    code, err = run(capsys, ["sweep", "r.yaml", f"search.train.lr={form}", "--out", "out", "--quiet"])
    assert_one_line(code, err, "search.train.lr")
    assert list(tmp_path.iterdir()) == [tmp_path / "r.yaml"]


def test_sweep_and_search_sections_must_be_mappings(capsys, tmp_path):
    for text, expected in (("sweep: [finetune]\n", "sweep: expected a mapping"),
                           ("sweep: {step: finetune}\nsearch: [train.lr]\n", "search: expected a mapping")):
        (tmp_path / "r.yaml").write_text(text)
        code, err = run(capsys, ["sweep", tmp_path / "r.yaml", "--out", tmp_path / "out", "--quiet"])
        assert_one_line(code, err, "r.yaml", expected)
        assert_nothing_written(tmp_path / "out")


def test_config_ranges_name_the_range(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    for override, expected in [("train.seed=-1", "range: 0 <= value <= 4294967295"),
                               ("train.seed=4294967296", "less than or equal to 4294967295"),
                               ("train.epochs=.inf", "finite number"),
                               ("task.max_examples=-1", "greater than or equal to 1 (got -1); range: 1 <= value"),
                               ("lora.lora_dropout=1", "range: 0.0 <= value < 1.0"),
                               ("train.max_steps=0", "-1 (train.epochs decides) or 1 or more")]:
        code, err = run(capsys, ["finetune", recipe, override, "--out", tmp_path / "o"])
        assert_one_line(code, err, override.split("=")[0], expected)


# --------------------------------------------------------------------------- command-line options


def subparsers(parser: argparse.ArgumentParser, path: tuple = ()):
    """(command path, parser) of every command and sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subparsers(sub, (*path, name))


def required_fillers(parser: argparse.ArgumentParser) -> list[str]:
    """Arguments that make a command line parse: every positional and required option, given 'x'."""
    argv = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return []  # a command with sub-commands: its leaves are walked instead
        if not action.option_strings and action.nargs not in ("*", "?"):
            argv.append("x")
        elif action.option_strings and action.required:
            argv += [action.option_strings[0], "x"]
    return argv


FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction, argparse._CountAction)
NO_FAULT = (argparse._HelpAction, argparse._VersionAction)  # --help, --version: nothing to get wrong


def leaf_parsers():
    """(command path, parser) of every command that runs (not the groups of sub-commands)."""
    return [(path, parser) for path, parser in subparsers(build_parser())
            if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)]


def option_values(action: argparse.Action) -> list[str | None]:
    """What is wrong for this option, from its argparse definition: out of its type's range, not one of its
    choices, a value given to a flag (`--quiet=x`), or no value where one is due (None: the option last)."""
    if isinstance(action, FLAGS):
        return ["=x"]
    values: list[str | None] = []
    kind = getattr(action.type, "range", None)
    if kind is not None:
        low, high = kind
        values += ["abc"]
        values += [str(low - 1)] if isinstance(low, int) else [str(low), "nan", "inf"]
        values += [str(high + 1)] if isinstance(high, int) and high is not None else []
        values += [str(high)] if isinstance(high, float) else []
    if action.choices:
        values.append("not-a-choice")
    if action.nargs in (None, 1, "+"):
        values.append(None)
    return values


def option_cases():
    cases = []
    for path, parser in leaf_parsers():
        fillers = required_fillers(parser)
        for action in parser._actions:
            if not action.option_strings or isinstance(action, NO_FAULT):
                continue
            for value in option_values(action):
                cases.append((path, fillers, action.option_strings[0], value))
    return cases


OPTION_CASES = option_cases()


def test_every_number_option_has_a_range():
    """A new int/float option without an argtypes type fails here."""
    plain = [f"{' '.join(path)} {action.option_strings or action.dest}"
             for path, parser in subparsers(build_parser()) for action in parser._actions
             if action.type in (int, float)]
    assert not plain, plain
    options = {(path, option) for path, _, option, _ in OPTION_CASES}
    assert len(options) >= 15, options


def test_the_walk_covers_every_option():
    """Every option of every command (read from the argparse parser, not listed here) has a fault case, except
    --help and --version: a new option is walked the day it is added."""
    every = {(path, action.option_strings[0]) for path, parser in leaf_parsers() for action in parser._actions
             if action.option_strings and not isinstance(action, NO_FAULT)}
    walked = {(path, option) for path, _, option, _ in OPTION_CASES}
    assert every == walked, every ^ walked
    assert len(every) >= 80, len(every)


@pytest.mark.parametrize("path, fillers, option, value", OPTION_CASES,
                         ids=[f"{' '.join(p)}:{o}={v}" for p, _, o, v in OPTION_CASES])
def test_bad_option(capsys, tmp_path, monkeypatch, path, fillers, option, value):
    monkeypatch.chdir(tmp_path)
    if value is None:  # the option last, its value missing
        code, err = run(capsys, [*path, *fillers, option])
        assert_one_line(code, err, option, "expected", f"clinpeft {' '.join(path)}")
    elif value == "=x":  # a flag given a value
        code, err = run(capsys, [*path, *fillers, f"{option}=x"])
        assert_one_line(code, err, option, f"clinpeft {' '.join(path)}")
    else:
        code, err = run(capsys, [*path, *fillers, option, value])
        assert_one_line(code, err, f"{option} {value}" if value != "not-a-choice" else option, value,
                        f"clinpeft {' '.join(path)}")
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_are_one_line(capsys, tmp_path):
    for argv in (["finetune"], ["predict", "run", "--out", "x"], ["nonsense"], ["report", "r", "--out", "x", "--x"]):
        code, err = run(capsys, argv)
        assert_one_line(code, err)


# --------------------------------------------------------------------------- readers
# Each damage of each file: (file role, damage) -> the command that reads it, expected to name the file.


def latin1(text: str) -> bytes:
    """The text with a Latin-1 byte (é) at the start of its second line: not UTF-8."""
    data = text.encode("utf-8")
    cut = data.find(b"\n") + 1
    return data[:cut] + b"\xe9" + data[cut:]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


DAMAGES = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": truncate,
    "latin1": lambda p: p.write_bytes(latin1(p.read_text(encoding="utf-8")) if p.stat().st_size else b"\xe9"),
    "utf16-no-bom": lambda p: p.write_bytes(p.read_text(encoding="utf-8").encode("utf-16-le")),
}


@pytest.fixture
def small_run(small_finetune_run) -> Path:
    """conftest's tiny finetune run, whose copies are damaged file by file."""
    return small_finetune_run


def finetune_line(base, task, out) -> list:
    return ["finetune", "--quiet", "--out", out, "r.yaml", f"model.base={base}", f"task.path={task}",
            "variant=lora", "task.max_seq_len=64", "task.max_examples=24", "train.epochs=1", "train.batch_size=8",
            "train.grad_accum=1", "lora.r=4", "eval.bootstrap_resamples=0"]


TASK_FILES = ["train.csv", "val.csv", "test.csv", "labels.txt", "manifest.json"]


@pytest.mark.parametrize("name", TASK_FILES)
@pytest.mark.parametrize("damage", [*DAMAGES, "wrong-shape"])
def test_task_files(capsys, tmp_path, monkeypatch, tiny_llama, synthetic_tasks, name, damage):
    """Task CSVs, labels.txt and the manifest: read by finetune before any model is loaded."""
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text("{}\n")
    task = tmp_path / "mor"
    shutil.copytree(synthetic_tasks["mor"], task)
    path = task / name
    if name == "manifest.json":
        path.write_text(json.dumps({"kind": "single_label"}))
    if damage == "wrong-shape":
        shapes = {".csv": "id,words\n1,two\n", ".txt": "only-one-label\n", ".json": "[1, 2]"}
        path.write_text(shapes[path.suffix])
    else:
        DAMAGES[damage](path)
    out = tmp_path / "out"
    code, err = run(capsys, finetune_line(tiny_llama, task, out))
    if damage == "truncated" and name in ("labels.txt",):
        assert code in (0, 2)  # half a label list may still be a valid one; when refused, one line
        if code == 0:
            return
    assert_one_line(code, err, name)
    assert_nothing_written(out)


@pytest.mark.parametrize("damage", ["empty", "truncated", "latin1", "utf16-no-bom", "list", "missing-key"])
@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer"])
def test_base_model_folder(capsys, tmp_path, monkeypatch, tiny_llama, synthetic_tasks, name, damage):
    """The base's config.json, weights and tokenizer, checked before any work."""
    if name != "config.json" and damage in ("latin1", "utf16-no-bom", "list", "missing-key"):
        pytest.skip("binary file / folder: empty and truncated apply")
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text("{}\n")
    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    if name == "tokenizer":
        for file in base.glob("tokenizer*"):
            file.unlink() if damage == "empty" else truncate(file, 0.0 if file.suffix == ".json" else 0.5)
        (base / "tokenizer.json").unlink(missing_ok=True)
        expected = "tokenizer"
    elif damage == "list":
        (base / name).write_text("[]")
        expected = name
    elif damage == "missing-key":
        config = json.loads((base / name).read_text())
        del config["model_type"]
        (base / name).write_text(json.dumps(config))
        expected = "model_type"
    else:
        DAMAGES[damage](base / name)
        expected = name
    out = tmp_path / "out"
    code, err = run(capsys, finetune_line(base, synthetic_tasks["mor"], out))
    assert_one_line(code, err, expected)
    assert_nothing_written(out)


RUN_DAMAGES = [
    ("bundle.json", "empty"), ("bundle.json", "truncated"), ("bundle.json", "latin1"), ("bundle.json", "list"),
    ("bundle.json", "missing-labels"), ("head.safetensors", "empty"), ("head.safetensors", "truncated"),
    ("head.safetensors", "missing"), ("adapters", "missing"), ("adapter_model.safetensors", "truncated"),
]


def damage_run(run: Path, copy: Path, name: str, damage: str) -> str:
    shutil.copytree(run, copy)
    path = next(copy.rglob(name))
    if damage == "missing":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif damage == "list":
        path.write_text("[]")
    elif damage == "missing-labels":
        meta = json.loads(path.read_text())
        del meta["labels"]
        path.write_text(json.dumps(meta))
    else:
        DAMAGES[damage](path)
    return "adapter" if name == "adapters" else name


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "explain"])
@pytest.mark.parametrize("name, damage", RUN_DAMAGES)
def test_run_directory(capsys, tmp_path, small_run, synthetic_tasks, command, name, damage):
    """A finetune run's files, read by every command that rebuilds its classifier."""
    run_copy = tmp_path / "run"
    expected = damage_run(small_run, run_copy, name, damage)
    test_csv = synthetic_tasks["mor"] / "test.csv"
    out = tmp_path / "out"
    extra = {"predict": ["--notes", test_csv], "evaluate": ["--data", test_csv], "export": [],
             "explain": ["--notes", test_csv, "--max-notes", "1"]}[command]
    code, err = run(capsys, [command, run_copy, *extra, "--out", out, "--quiet"])
    assert_one_line(code, err, expected)
    assert_nothing_written(out)


NOTE_DAMAGES = ["empty", "truncated", "latin1", "utf16-no-bom", "no-text-column", "jsonl-last-line-without-id"]


@pytest.mark.parametrize("command", ["predict", "evaluate", "explain"])
@pytest.mark.parametrize("damage", NOTE_DAMAGES)
def test_note_files(capsys, tmp_path, small_run, synthetic_tasks, command, damage):
    """--notes / --data files."""
    source = synthetic_tasks["mor"] / "test.csv"
    notes = tmp_path / "notes.csv"
    if damage == "jsonl-last-line-without-id":
        if command != "predict":
            pytest.skip("JSONL: predict only")
        import pandas as pd

        frame = pd.read_csv(source, dtype=str, keep_default_na=False)
        notes = tmp_path / "notes.jsonl"
        lines = [json.dumps({"id": i, "text": t}) for i, t in zip(frame["id"], frame["text"])]
        lines[-1] = json.dumps({"text": "a note without its id"})
        notes.write_text("\n".join(lines) + "\n")
        expected = "notes.jsonl"
        code, err = run(capsys, ["predict", small_run, "--notes", notes, "--out", tmp_path / "out", "--quiet",
                                 "--id-column", "id"])
        assert_one_line(code, err, expected)
        assert_nothing_written(tmp_path / "out")
        return
    shutil.copy(source, notes)
    if damage == "no-text-column":
        notes.write_text("id,words,label\n1,two,0\n")
    elif damage == "truncated":
        text = notes.read_text()
        cut = text.index('"', text.index("\n")) + 10 if '"' in text else len(text) // 2
        notes.write_text(text[:cut])  # inside a quoted note
    else:
        DAMAGES[damage](notes)
    out = tmp_path / "out"
    flag = "--data" if command == "evaluate" else "--notes"
    code, err = run(capsys, [command, small_run, flag, notes, "--out", out, "--quiet"])
    assert_one_line(code, err, "notes.csv")
    assert_nothing_written(out)


@pytest.mark.parametrize("damage", ["empty", "truncated", "latin1", "list", "missing-column", "half-the-rows"])
@pytest.mark.parametrize("name", ["predictions.csv", "metrics.json"])
def test_report_inputs(capsys, tmp_path, small_run, name, damage):
    """What `report` reads from a run: its metrics.json and predictions.csv."""
    if name == "metrics.json" and damage in ("missing-column", "half-the-rows"):
        pytest.skip("CSV damages")
    if name == "predictions.csv" and damage == "list":
        pytest.skip("JSON damage")
    runs = tmp_path / "runs"
    shutil.copytree(small_run, runs / "run")
    path = runs / "run" / name
    if damage == "list":
        path.write_text("[]")
    elif damage == "missing-column":
        path.write_text("id,label\n1,0\n")
    elif damage == "half-the-rows":
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[: len(lines) // 2]))
    else:
        DAMAGES[damage](path)
    out = tmp_path / "report"
    code, err = run(capsys, ["report", runs, "--out", out, "--bootstrap-resamples", "0", "--quiet"])
    assert_one_line(code, err, name)
    assert_nothing_written(out)


@pytest.mark.parametrize("damage", ["truncated", "latin1", "list", "tab-indent", "utf16-bom"])
def test_recipe_file(capsys, tmp_path, damage):
    recipe = tmp_path / "r.yaml"
    text = "train:\n  lr: 1.0e-4\n  epochs: 2\n"
    if damage == "truncated":
        recipe.write_text("train: {lr: [1.0e-4\n")
    elif damage == "latin1":
        recipe.write_bytes(latin1("model:\n  name: clinique\n"))
    elif damage == "list":
        recipe.write_text("- train\n- model\n")
    elif damage == "tab-indent":
        recipe.write_text("train:\n\tlr: 1\n")
    else:  # accepted: Windows editors save UTF-16 with a byte-order mark
        recipe.write_bytes(text.encode("utf-16"))
    out = tmp_path / "out"
    code, err = run(capsys, ["finetune", recipe, "train.lr=0", "--out", out])
    expected = "train.lr" if damage == "utf16-bom" else "r.yaml"
    assert_one_line(code, err, expected)  # utf16-bom: read, then refused for the override only
    assert_nothing_written(out)


@pytest.mark.parametrize("damage", ["empty", "truncated-gzip", "latin1", "no-text-column"])
def test_corpus_file(capsys, tmp_path, monkeypatch, tiny_llama, synthetic_corpus, damage):
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text("{}\n")
    corpus = tmp_path / "notes.csv.gz"
    shutil.copy(synthetic_corpus["discharge"], corpus)
    if damage == "truncated-gzip":
        truncate(corpus)
    elif damage == "empty":
        corpus.write_bytes(b"")
    elif damage == "latin1":
        corpus.write_bytes(gzip.compress(latin1(gzip.decompress(corpus.read_bytes()).decode())))
    else:
        corpus.write_bytes(gzip.compress(b"note_id,words\n1,two\n"))
    out = tmp_path / "out"
    code, err = run(capsys, ["pretrain", "r.yaml", f"model.base={tiny_llama}", f"data.paths=[{corpus}]",
                             "data.max_seq_len=64", "train.max_steps=1", "eval.base_model=false", "--quiet",
                             "--out", out])
    assert_one_line(code, err, "notes.csv.gz")
    assert_nothing_written(out)


# --------------------------------------------------------------------------- no silent surprise


def edit_split(task: Path, split: str, edit) -> None:
    import pandas as pd

    frame = pd.read_csv(task / f"{split}.csv", dtype=str, keep_default_na=False)
    edit(frame).to_csv(task / f"{split}.csv", index=False)


@pytest.mark.parametrize("case", ["empty-label", "semicolon-codes", "semicolon-single", "unquoted-comma-first-row"])
def test_label_cells_say_what_they_are(capsys, tmp_path, monkeypatch, tiny_llama, synthetic_tasks, case):
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text("{}\n")
    name = "diag" if case == "semicolon-codes" else "mor"
    task = tmp_path / name
    shutil.copytree(synthetic_tasks[name], task)
    codes = (task / "labels.txt").read_text().split()
    if case == "empty-label":
        edit_split(task, "val", lambda f: f.assign(label=[""] + list(f["label"][1:])))
        expected = ["val.csv row 2: empty label", "fill it in"]
    elif case in ("semicolon-codes", "semicolon-single"):
        joined = f"{codes[0]};{codes[1]}"
        edit_split(task, "train", lambda f: f.assign(label=[joined] + list(f["label"][1:])))
        expected = ["train.csv row 2", f"'{joined}' joins codes with ';'", "join codes with ','"]
    else:
        text = (task / "val.csv").read_text().splitlines(keepends=True)
        n = len(text[0].split(","))
        text[1] = ",".join(["x1", "chest pain", " unquoted", *["0"] * (n - 2)]) + "\n"  # pandas: shifted columns
        (task / "val.csv").write_text("".join(text))
        expected = [f"val.csv row 2: {n + 1} fields where the header has {n}", "unquoted comma"]
    out = tmp_path / "out"
    code, err = run(capsys, finetune_line(tiny_llama, task, out))  # rows are checked before task.max_examples
    assert_one_line(code, err, *expected)
    assert_nothing_written(out)


def test_note_file_checks_every_chunk(tmp_path):
    """A JSONL whose last line lacks the id key, past the first chunk (the issue's 10,001st line): named."""
    from clinpeft.data.note_files import check_note_file
    from clinpeft.errors import ClinpeftError

    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n{"text": "c"}\n')
    with pytest.raises(ClinpeftError, match=r"notes.jsonl line 3 onwards: no column 'id'"):
        check_note_file(notes, chunk_rows=2)


def test_predict_id_column_must_exist(capsys, tmp_path, small_run, synthetic_tasks):
    out = tmp_path / "out"
    code, err = run(capsys, ["predict", small_run, "--notes", synthetic_tasks["mor"] / "test.csv", "--id-column",
                             "hadm", "--out", out, "--quiet"])
    assert_one_line(code, err, "test.csv", "no column 'hadm' given by --id-column")
    assert_nothing_written(out)


def test_label_unseen_in_train_is_named_and_recorded(capsys, tmp_path, monkeypatch, tiny_llama, synthetic_tasks):
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text("{}\n")
    task = tmp_path / "los"
    shutil.copytree(synthetic_tasks["los"], task)
    edit_split(task, "train", lambda f: f[f["label"] != "2"])
    out = tmp_path / "out"
    line = [a for a in finetune_line(tiny_llama, task, out) if not str(a).startswith("task.max_examples")]
    code = main([str(a) for a in line])
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [x for x in err.splitlines() if x.startswith("warning: ") and "no train example" in x]
    assert len(warnings) == 1 and "val.csv: '2'" in warnings[0] and "test.csv: '2'" in warnings[0], err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unseen_in_train"] == {"val": ["2"], "test": ["2"]}
