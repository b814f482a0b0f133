"""Start-up: importing the CLI, `clinpeft --help` and a config error load no deep-learning library
(torch, transformers, ... take seconds to import; these answers should not wait for them)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "datasets", "optuna", "peft", "accelerate")


def heavy_modules_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter, then list the HEAVY modules it imported."""
    check = f"import sys; print('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", f"{code}\n{check}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.splitlines()[-1].removeprefix("loaded:")
    return [name for name in loaded.split(",") if name]


def test_importing_the_cli_imports_no_torch():
    result = subprocess.run([sys.executable, "-c", "import clinpeft.cli, sys; assert 'torch' not in sys.modules"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert heavy_modules_after("import clinpeft.cli") == []


def test_help_imports_no_deep_learning_library():
    code = ("from clinpeft.cli import main\n"
            "for argv in (['--help'], ['pretrain', '--help'], ['prepare', 'notes', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as exc:\n        assert exc.code == 0\n")
    assert heavy_modules_after(code) == []


def test_a_config_error_imports_no_deep_learning_library(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  learning_rate: 1e-4\n")
    out = tmp_path / "out"
    code = ("from clinpeft.cli import main\n"
            f"assert main(['pretrain', {str(recipe)!r}, '--out', {str(out)!r}]) == 2\n"
            f"assert main(['finetune', 'configs/demo/finetune_lora.yaml', 'lora.rr=2', '--out', {str(out)!r}]) == 2\n"
            f"assert main(['experiment', {str(tmp_path / 'none.yaml')!r}, '--out', {str(out)!r}]) == 2\n"
            f"assert main(['params', 'llama-7b', {str(recipe)!r}]) == 2\n"
            "assert main(['demo', '--out', 'x', '--methods', 'loraa']) == 2\n"
            "assert main(['recipes']) == 0\n")
    assert heavy_modules_after(code) == []
    assert not out.exists()


def test_counting_cores_and_threads_imports_no_deep_learning_library():
    """What the CLI and the sweep workers take from training (cores, threads) loads no torch."""
    code = ("from clinpeft.training.runtime import available_cores, thread_count\n"
            "assert available_cores() >= 1 and thread_count(3) == (3, 'train.threads')")
    assert heavy_modules_after(code) == []
