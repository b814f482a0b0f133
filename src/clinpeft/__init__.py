"""clinpeft: parameter-efficient adaptation of LLaMA-family models to clinical notes.

Two steps, each a small adapter on a frozen general LLM (Gema et al. 2023):
1. domain-adaptive pretraining on clinical notes (`clinpeft pretrain`);
2. downstream fine-tuning for clinical outcome prediction (`clinpeft finetune`).
"""

from clinpeft._version import __version__  # noqa: F401 -- clinpeft.__version__


def load(run_dir, base=None, device=None, batch_size=16):
    """A trained `clinpeft finetune` run, for notebooks: `clinpeft.load("runs/mor").predict(["note", ...])`
    returns probabilities (numpy, one row per note, one column per label: `.labels`). torch is imported
    here, on first use, not by `import clinpeft`."""
    from clinpeft.inference import load as load_run

    return load_run(run_dir, base=base, device=device, batch_size=batch_size)
