"""`model.base` (and `--base`) resolved to a local model folder: the named-base table.

The demo models are named here and built on first use into CLINPEFT_HOME (clinpeft/demo/); anything else goes to
modeling.base.resolve_base (a Hugging Face folder, a .gguf file, a named real base such as smollm2-135m). The model
loader itself knows no demo: the recipes and the Predictor resolve a base here first.
"""

from __future__ import annotations

from pathlib import Path


def _demo_llama(progress: bool) -> Path:
    from clinpeft.demo.llama import ensure_demo_base

    return ensure_demo_base(progress=progress)


def _demo_bert(progress: bool) -> Path:
    from clinpeft.demo.bert import ensure_demo_bert

    return ensure_demo_bert(progress=progress)


DEMO_BASES = {"demo": _demo_llama, "demo-bert": _demo_bert}  # modeling.base.DEMO_NAMES holds the same names


def resolve_base(base: str, *, progress: bool = True) -> Path:
    """`model.base` -> a local Hugging Face model directory ("demo" / "demo-bert": the tiny demo models, built on
    first use; see modeling.base.resolve_base for the rest)."""
    from clinpeft.modeling.base import resolve_base as resolve_local

    build = DEMO_BASES.get(base)
    return build(progress) if build is not None else resolve_local(base, progress=progress)


def demo_built(base: str | None, progress: bool = False) -> str | None:
    """`--base` for the loader: a demo name becomes its built folder, anything else stays as given (the loader,
    modeling.base.reopen_base, resolves folders, .gguf files and named real bases itself)."""
    return str(DEMO_BASES[base](progress)) if base in DEMO_BASES else base
