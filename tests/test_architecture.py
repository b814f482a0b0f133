"""The layout's rules, checked on the source: data flows one way and no module reaches into another's privates.

prepare -> data -> modeling -> training -> evaluation -> reporting, recipes on top, cli on top of recipes
(README, "Layout"). Imports inside functions count as much as those at the top of a module.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "clinpeft"

# package -> the clinpeft packages it must never import
FORBIDDEN = {
    "data": {"prepare", "modeling", "training", "evaluation", "reporting", "sweep", "recipes", "demo", "cli"},
    "prepare": {"modeling", "training", "evaluation", "reporting", "sweep", "recipes", "demo", "cli"},
    "modeling": {"training", "evaluation", "reporting", "sweep", "recipes", "cli"},
    "training": {"reporting", "sweep", "recipes", "cli"},
    "evaluation": {"data", "prepare", "modeling", "training", "reporting", "sweep", "recipes", "demo", "cli"},
    # the registry (clinpeft/methods.py) is below them: reports and sweeps read it, not the model code
    "reporting": {"modeling", "training", "sweep", "recipes", "demo", "cli"},
    "sweep": {"modeling", "recipes", "cli"},
    "demo": {"recipes", "reporting", "sweep", "cli"},
    "recipes": {"cli"},
}
# top-level modules that everything may use: they import nothing above them
FOUNDATION = {"errors": set(), "config": {"errors", "files", "methods", "run_files"},
              "rundir": {"errors", "files", "run_files", "_version"}, "files": {"errors"}, "run_files": {"files"},
              "argtypes": set(), "methods": {"errors"}, "_version": set()}
# evaluation is pure functions of arrays: no model libraries
EVALUATION_MAY_NOT_IMPORT = {"torch", "transformers", "peft", "datasets", "accelerate"}


def modules() -> dict[str, ast.Module]:
    """{"modeling.adapters": tree, ...} for every module of the package."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every import; clinpeft modules without the "clinpeft." prefix."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"line {node.lineno}: relative import; the package imports itself absolutely"
            found.append((node.module, [a.name for a in node.names], node.lineno))
    # `from clinpeft import methods`: an import of the module clinpeft.methods
    found = [item for m, names, line in found
             for item in ([(f"clinpeft.{n}", [], line) for n in names] if m == "clinpeft" else [(m, names, line)])]
    return [(m.removeprefix("clinpeft."), names, line) for m, names, line in found]


def clinpeft_imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """Imports of clinpeft's own modules."""
    return [(m, names, line) for m, names, line in imports(tree) if m.split(".")[0] in PACKAGES]


PACKAGES = {p.stem for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()} - {"__init__"}
ALL = modules()


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_follow_the_data_flow(name):
    package = name.split(".")[0]
    forbidden = FORBIDDEN.get(package, set())
    bad = [f"line {line}: imports clinpeft.{m}" for m, _, line in clinpeft_imports(ALL[name])
           if m.split(".")[0] in forbidden and m.split(".")[0] != package]
    assert not bad, f"clinpeft.{name} must not import {sorted(forbidden)}: {bad}"


@pytest.mark.parametrize("name", sorted(FOUNDATION))
def test_foundation_modules_import_only_below_them(name):
    used = {m for m, _, _ in clinpeft_imports(ALL[name])}
    assert used <= FOUNDATION[name], f"clinpeft.{name} imports {sorted(used - FOUNDATION[name])}"


def test_no_module_imports_the_package_face():
    """`clinpeft/__init__.py` is the notebook face (`clinpeft.load`); the version lives in the leaf `_version`."""
    bad = [f"clinpeft.{name} line {line}" for name, tree in ALL.items() for m, _, line in imports(tree)
           if m in {"clinpeft", "__version__", "load"}]
    assert not bad


def test_the_model_loader_builds_no_demo_model():
    """The demo bases are resolved by the named-base table (clinpeft/bases.py), not by the model loader."""
    bad = [f"clinpeft.{name} line {line}: clinpeft.{m}" for name, tree in ALL.items()
           if name.startswith("modeling") for m, _, line in clinpeft_imports(tree) if m.split(".")[0] == "demo"]
    assert not bad


def test_nothing_but_the_cli_and_recipes_imports_a_recipe():
    bad = [f"clinpeft.{name} line {line}: clinpeft.{m}" for name, tree in ALL.items()
           if name.split(".")[0] not in {"cli", "recipes", "__main__"}
           for m, _, line in clinpeft_imports(tree) if m.split(".")[0] == "recipes"]
    assert not bad


# modules that import no deep-learning library at import time, and the modules that may use them from `training`:
# the CLI and the sweep's worker set-up count cores and switch progress bars without loading torch
TORCH_FREE = {"training.runtime"}
TRAINING_FOR_LIGHT_MODULES = {"cli": TORCH_FREE, "sweep.workers": TORCH_FREE}


def test_torch_free_modules_import_no_model_library_at_the_top():
    bad = [f"clinpeft.{name} line {node.lineno}" for name in TORCH_FREE for node in ALL[name].body
           if isinstance(node, (ast.Import, ast.ImportFrom))
           for m, _, _ in imports(ast.Module(body=[node], type_ignores=[]))
           if m.split(".")[0] in EVALUATION_MAY_NOT_IMPORT or (m.split(".")[0] in PACKAGES and m not in {"errors"})]
    assert not bad


@pytest.mark.parametrize("name", sorted(TRAINING_FOR_LIGHT_MODULES))
def test_the_cli_and_the_sweep_workers_use_only_the_torch_free_training_module(name):
    used = {m for m, _, _ in clinpeft_imports(ALL[name]) if m.split(".")[0] == "training"}
    assert used <= TRAINING_FOR_LIGHT_MODULES[name], f"clinpeft.{name} imports {sorted(used)}"


# the run directory's files, named once (clinpeft/run_files.py): no other module spells them
RUN_FILE_NAMES = ("metrics.json", "run.json", "bundle.json", "predictions.csv", "predictions_val.csv", "config.yaml")
RUN_FILE_EXCEPTIONS = {"run_files"}


def test_the_run_directory_files_are_named_in_one_module():
    bad = [f"clinpeft.{name} line {node.lineno}: {node.value!r}" for name, tree in ALL.items()
           if name not in RUN_FILE_EXCEPTIONS for node in ast.walk(tree)
           if isinstance(node, ast.Constant) and node.value in RUN_FILE_NAMES]
    assert not bad


def test_evaluation_is_pure_functions_of_arrays():
    bad = [f"clinpeft.{name} line {line}: {m}" for name, tree in ALL.items() if name.startswith("evaluation")
           for m, _, line in imports(tree) if m.split(".")[0] in EVALUATION_MAY_NOT_IMPORT]
    assert not bad


def test_no_private_name_crosses_a_module():
    """`from clinpeft.x import _y` and `x._y` on an imported clinpeft module are both refused."""
    bad = []
    for name, tree in ALL.items():
        modules_bound = set()  # local names of imported clinpeft modules
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules_bound |= {a.asname for a in node.names if a.asname and a.name.startswith("clinpeft.")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clinpeft"):
                package = node.module.removeprefix("clinpeft").strip(".")
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        bad.append(f"clinpeft.{name} line {node.lineno}: from {node.module} import {alias.name}")
                    if f"{package}.{alias.name}".strip(".") in ALL:
                        modules_bound.add(alias.asname or alias.name)
        bad += [f"clinpeft.{name} line {node.lineno}: {node.value.id}.{node.attr}" for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules_bound and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not bad


def test_no_import_cycles_between_modules():
    graph = {}
    for name, tree in ALL.items():
        deps = set()
        for m, names, _ in clinpeft_imports(tree):
            deps.add(m)
            deps |= {f"{m}.{n}" for n in names}  # `from clinpeft.reporting import stats`: the module
        graph[name] = {m for m in deps if m in ALL and m != name and not _is_package_init(m)}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [" -> ".join(c) for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, cycles[0]


def _is_package_init(name: str) -> bool:
    return (SRC / name.replace(".", "/") / "__init__.py").is_file()
