"""A sweep's search space: the paper's (Appendices A.2 and B.2) as data, and a recipe's `search:` section.

    from clinpeft.sweep.space import search_space
    search_space("pretrain", "p_tuning")   # {"peft.num_virtual_tokens": [1, 5, 10, 15, 20], ...}

The paper's values live in configs/search_spaces.yaml; keys are config keys, so a sampled point is a
list of `key=value` overrides for `clinpeft pretrain` / `finetune` (the form a sweep passes on).
build_search_space merges them with the recipe's `search:` entries into Params, each choice checked
as a config value before any trial runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from clinpeft.config import FinetuneConfig, PretrainConfig, config_from_tree, format_override, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.methods import LORA_VARIANTS

SEARCH_SPACES_FILE = Path(__file__).resolve().parent.parent / "configs" / "search_spaces.yaml"
STEPS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}
RANGE_KEYS = {"low", "high", "log", "step"}  # a `search:` mapping made of these is a range


def load_search_spaces(path: str | Path = SEARCH_SPACES_FILE) -> dict[str, dict[str, dict[str, list]]]:
    """{step: {method: {config key: [choices]}}}."""
    return yaml.safe_load(Path(path).read_text())


def search_space(step: str, method: str, path: str | Path = SEARCH_SPACES_FILE) -> dict[str, list]:
    """The choices for one PEFT method of one step ("pretrain": A.2, "finetune": B.2)."""
    spaces = load_search_spaces(path)
    if step not in spaces or method not in spaces[step]:
        known = ", ".join(f"{s}/{m}" for s in spaces for m in spaces[s])
        raise ClinpeftError(f"{path}: no search space for {step}/{method}; known: {known}")
    return dict(spaces[step][method] or {})


def point_overrides(step: str, method: str, point: dict) -> list[str]:
    """One sampled point -> the overrides that select it (with peft.method for pretraining)."""
    fixed = [f"peft.method={method}"] if step == "pretrain" else []
    return fixed + [format_override(key, value) for key, value in point.items()]


def check_search_space(step: str, method: str, path: str | Path = SEARCH_SPACES_FILE) -> None:
    """Every choice is a valid value of its config key (ClinpeftError naming the key otherwise)."""
    for key, choices in search_space(step, method, path).items():
        for value in choices:
            load_config(STEPS[step], None, point_overrides(step, method, {key: value}))


# --------------------------------------------------------------------------------------------
# the search space of one sweep: the paper's defaults, narrowed / extended / replaced by the recipe


@dataclass
class Param:
    """One searched config key: categorical `choices`, or a `low`..`high` range (int or float)."""

    key: str
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} in {self.choices}"
        return (f"{self.key} in [{self.low}, {self.high}]" + (" (log)" if self.log else "")
                + (f" step {self.step}" if self.step else ""))

    def suggest(self, trial):
        """The Optuna suggest_* call for this key (the config key is the parameter name)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, self.choices)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))
        if ints and not isinstance(self.step, float):
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log, step=self.step)


def flatten_search(tree: dict, prefix: str = "") -> dict:
    """`search:` may nest (`lora: {r: [4, 8]}`) or use dotted keys (`lora.r: [4, 8]`); a mapping made
    only of low/high/log/step is a range, not a nesting level."""
    flat = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not set(value) <= RANGE_KEYS:
            flat.update(flatten_search(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def parse_param(key: str, entry, where: str) -> Param:
    """A `search:` entry -> Param, or a ClinpeftError naming it."""
    hint = ("use a list of choices ([4, 8]), a range ({low: 1.0e-5, high: 1.0e-3, log: true}) "
            "or null (keep the recipe's value)")
    if isinstance(entry, list):
        if not entry:
            raise ClinpeftError(f"{where}: search.{key} is an empty list; {hint}")
        bad = [v for v in entry if v is not None and not isinstance(v, (bool, int, float, str))]
        if bad:
            raise ClinpeftError(f"{where}: search.{key}: choice {bad[0]!r} is not a scalar (Optuna's categorical "
                                "choices are numbers, strings, booleans or null); search a scalar key instead")
        return Param(key, choices=list(dict.fromkeys(entry)))
    if isinstance(entry, dict) and {"low", "high"} <= set(entry) and set(entry) <= RANGE_KEYS:
        low, high = entry["low"], entry["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
            raise ClinpeftError(f"{where}: search.{key}: a range needs numbers low < high "
                                f"(got low={low!r}, high={high!r})")
        log = entry.get("log", False)
        if not isinstance(log, bool) or (log and low <= 0):
            raise ClinpeftError(f"{where}: search.{key}: log must be true or false, and a log range needs low > 0")
        if log and entry.get("step") is not None:
            raise ClinpeftError(f"{where}: search.{key}: Optuna cannot combine log: true with step; drop one")
        return Param(key, low=low, high=high, log=log, step=entry.get("step"))
    raise ClinpeftError(f"{where}: search.{key}: got {entry!r}; {hint}")


def resolve_key(key: str, step: str) -> str:
    """`r` -> `lora.r` (finetune) / `peft.r` (pretrain): a bare name is the adapter's peft parameter."""
    return key if "." in key else f"{'peft' if step == 'pretrain' else 'lora'}.{key}"


def build_search_space(step: str, base: dict, overrides: list[str], search: dict, paper_space: bool,
                       where: str) -> list[Param]:
    """The paper's space for this step and method (A.2 / B.2), updated by the recipe's `search:`
    (a key replaces the paper's entry, null drops it), each choice validated as a config value."""
    cls = STEPS[step]
    config = config_from_tree(cls, base, overrides, where)
    space: dict = {}
    if paper_space:
        if step == "pretrain":
            space = search_space("pretrain", config.peft.method)
        elif config.variant in LORA_VARIANTS:
            space = search_space("finetune", "lora")
    for key, entry in flatten_search(search).items():
        key = resolve_key(key, step)
        if entry is None:
            space.pop(key, None)
        else:
            space[key] = entry
    if not space:
        raise ClinpeftError(f"{where}: nothing to search (the paper's space for this recipe is empty); add a "
                            "`search:` section, e.g. search: {train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}}")
    params = [parse_param(key, entry, where) for key, entry in space.items()]
    for param in params:
        if step == "finetune" and param.key.startswith("lora.") and config.variant not in LORA_VARIANTS:
            raise ClinpeftError(f"{where}: search.{param.key} does nothing with variant={config.variant} (no "
                                f"downstream LoRA); remove it, or use a variant with one: {', '.join(LORA_VARIANTS)}")
        values = param.choices if param.choices is not None else [param.low, param.high]
        for value in values:  # every choice is a valid value of its key, before any trial runs
            try:
                config_from_tree(cls, base, [*overrides, format_override(param.key, value)], where)
            except ClinpeftError as exc:
                raise ClinpeftError(f"search.{param.key}: choice {value!r} is invalid: {exc}") from None
    return params
