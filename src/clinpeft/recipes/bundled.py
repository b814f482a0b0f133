"""`clinpeft recipes`: the recipes shipped with the package, usable from any directory.

    clinpeft recipes
    clinpeft pretrain configs/demo/pretrain_lora.yaml --out runs/demo-clinical-lora

A recipe path that is not a local file is looked up in the package's configs/ folder
(config.find_recipe), so the paths listed here work wherever the command runs.
"""

from __future__ import annotations

from pathlib import Path

from clinpeft.config import BUNDLED_CONFIGS


def description(path: Path) -> str:
    """What a recipe is for: the first sentence of its opening comment (which may wrap over lines;
    the indented `#   clinpeft ...` example lines that follow are left out)."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or line.startswith("#  "):
            break
        words.append(line.lstrip("#").strip())
    text = " ".join(words)
    first, dot, _ = text.partition(". ")
    return (first + dot).strip().rstrip(":")


def main() -> dict:
    """{"recipes": [{"path": "configs/<model>/<name>.yaml", "description": ...}, ...]}, sorted by path.

    Recipes sit one folder deep, one folder per base model; configs/search_spaces.yaml (the sweep's
    default search spaces) is not a recipe and is left out."""
    recipes = sorted(BUNDLED_CONFIGS.glob("*/*.yaml"))
    return {"recipes": [{"path": f"configs/{path.relative_to(BUNDLED_CONFIGS).as_posix()}",
                         "description": description(path)} for path in recipes]}


def summary(result: dict, out: str | Path | None = None) -> list[str]:
    """One line per recipe: its path, then what it is for."""
    width = max((len(recipe["path"]) for recipe in result["recipes"]), default=0)
    return [f"{recipe['path']:<{width}}  {recipe['description']}".rstrip() for recipe in result["recipes"]]
