"""One peft LoRA adapter per task: a run's stacked LoRAs (clinical + downstream) and its head as a single adapter.

Where both LoRAs touch a module their updates add up, and the sum is itself a LoRA of rank r1 + r2:

    s1 B1 A1 + s2 B2 A2 = [s1 B1 | s2 B2] [A1 ; A2]        (B: out x r, A: r x in, s: peft's `scaling`)

The scales (lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA) are folded into B, exactly as each
layer computed them, and the adapter is written with lora_alpha = r per module, so that peft's scaling
is 1 (no rsLoRA flag: the fold already holds it). A module only one LoRA touches keeps that LoRA (its
rank); where ranks differ between modules, `rank_pattern` / `alpha_pattern` carry them (peft's per-module
keys). The classification head is the adapter's `modules_to_save` (task_type SEQ_CLS), so
`PeftModel.from_pretrained(base classifier, DIR)` gives the run's logits. This is what peft's
`add_weighted_adapter(..., combination_type="cat")` builds, minus its dropping of `modules_to_save`.

DoRA is refused: a DoRA layer renormalises (base + its own update) column-wise by a learned magnitude,
and peft applies each stacked DoRA adapter's norm to the base weight separately, so two DoRA updates (or
a DoRA and a LoRA) are not one DoRA or LoRA of any rank; the merged export (`clinpeft export`) is exact.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from clinpeft.errors import ClinpeftError


@dataclass
class LoraUpdate:
    """One module's combined update: delta W = B @ A (scales folded into B)."""

    A: torch.Tensor  # (rank, in_features)
    B: torch.Tensor  # (out_features, rank)

    @property
    def rank(self) -> int:
        return self.A.shape[0]


def concatenated_updates(model, adapters: list[str]) -> dict[str, LoraUpdate]:
    """{module path inside the base classifier: its LoRA update} for every module any of `adapters` wraps.

    Read from the live peft layers (lora_A / lora_B / scaling per adapter), so whatever peft computes
    (rsLoRA, per-module patterns) is what is folded. Paths are relative to the transformers model
    (`model.layers.0.self_attn.q_proj`), the names peft matches target_modules against."""
    from peft.tuners.lora import LoraLayer

    updates = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        present = [a for a in adapters if a in module.lora_A]
        if not present:
            continue
        if any(module.use_dora.get(a) for a in present):
            raise ClinpeftError(f"{name}: a DoRA adapter cannot be shipped as one LoRA adapter (DoRA renormalises "
                                "each stacked update against the base weight separately; no single LoRA or DoRA "
                                "equals their sum); use `clinpeft export RUN --out DIR` (merged, exact)")
        A = torch.cat([module.lora_A[a].weight.detach().float() for a in present], dim=0)
        B = torch.cat([module.lora_B[a].weight.detach().float() * float(module.scaling[a]) for a in present], dim=1)
        updates[name.removeprefix("base_model.model.")] = LoraUpdate(A, B)
    return updates


def zero_updates(model) -> dict[str, LoraUpdate]:
    """A rank-1 update of exactly zero on the attention query projections (q_proj; BERT: query): how a
    run that trained the head only becomes a LoRA adapter (peft refuses an adapter without LoRA modules)."""
    from clinpeft.modeling.adapters import linear_module_names

    names = linear_module_names(model)
    target = next((n for n in ("q_proj", "query") if n in names), names[0])
    return {path: LoraUpdate(torch.zeros(1, m.in_features), torch.zeros(m.out_features, 1))
            for path, m in model.named_modules() if path.rsplit(".", 1)[-1] == target
            and isinstance(m, torch.nn.Linear)}


def rank_patterns(updates: dict[str, LoraUpdate]) -> tuple[int, dict[str, int]]:
    """(r, rank_pattern): the commonest rank as r, and the modules of other ranks under the shortest key
    that names them exactly (their last name when every module of that name has the same rank, else the path)."""
    ranks = {path: u.rank for path, u in updates.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    by_name: dict[str, set[int]] = {}
    for path, rank in ranks.items():
        by_name.setdefault(path.rsplit(".", 1)[-1], set()).add(rank)
    pattern = {}
    for path, rank in ranks.items():
        if rank == r:
            continue
        last = path.rsplit(".", 1)[-1]
        if by_name[last] == {rank}:
            pattern[last] = rank
        else:  # peft matches keys as regexes anchored at a module-name boundary: escape the dots
            pattern[path.replace(".", r"\.")] = rank
    return r, pattern


def task_lora_config(updates: dict[str, LoraUpdate], head_name: str, base_model: str):
    """The LoraConfig of the single adapter: scaling 1 on every module (lora_alpha = r, per pattern too)."""
    from peft import LoraConfig

    r, pattern = rank_patterns(updates)
    targets = sorted({path.rsplit(".", 1)[-1] for path in updates})
    return LoraConfig(r=r, lora_alpha=r, rank_pattern=dict(pattern), alpha_pattern=dict(pattern),
                      target_modules=targets, lora_dropout=0.0, bias="none", use_rslora=False, use_dora=False,
                      modules_to_save=[head_name], task_type="SEQ_CLS", base_model_name_or_path=base_model,
                      init_lora_weights=True)  # what a loader runs before the saved weights replace it


def build_task_adapter(base_classifier, updates: dict[str, LoraUpdate], head_state: dict, head_name: str,
                       base_model: str):
    """The base classifier wrapped with the single adapter ("default"), its LoRA weights and head set."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    model = get_peft_model(base_classifier, task_lora_config(updates, head_name, base_model))
    seen = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                path = name.removeprefix("base_model.model.")
                update = updates.get(path)
                if update is None:
                    raise ClinpeftError(f"{path}: the task adapter's target names catch a module neither LoRA "
                                        "touched; export merged instead (`clinpeft export RUN --out DIR`)")
                module.lora_A["default"].weight.copy_(update.A)
                module.lora_B["default"].weight.copy_(update.B)
                assert float(module.scaling["default"]) == 1.0, path  # the scales live in B
                seen.add(path)
        head = getattr(model.base_model.model, head_name)
        head.modules_to_save["default"].load_state_dict(head_state)
    missing = sorted(set(updates) - seen)
    if missing:
        raise ClinpeftError(f"{missing[0]}: not wrapped by the task adapter's config; export merged instead")
    return model
