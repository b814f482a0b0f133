"""clinpeft: parameter-efficient adaptation of LLaMA-family models to clinical notes.

Two steps, each a small adapter on a frozen general LLM (Gema et al. 2023):
1. domain-adaptive pretraining on clinical notes (`clinpeft pretrain`);
2. downstream fine-tuning for clinical outcome prediction (`clinpeft finetune`).
"""

__version__ = "0.1.0"
