"""The paper's hyperparameter search spaces (Appendices A.2 and B.2) as data, in one place.

    from clinpeft.sweep.space import search_space
    search_space("pretrain", "p_tuning")   # {"peft.num_virtual_tokens": [1, 5, 10, 15, 20], ...}

The values live in configs/search_spaces.yaml; keys are config keys, so a sampled point is a list
of `key=value` overrides for `clinpeft pretrain` / `finetune` (the form a sweep passes on).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from clinpeft.config import FinetuneConfig, PretrainConfig, format_override, load_config
from clinpeft.errors import ClinpeftError

SEARCH_SPACES_FILE = Path(__file__).resolve().parent.parent / "configs" / "search_spaces.yaml"
STEPS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


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
