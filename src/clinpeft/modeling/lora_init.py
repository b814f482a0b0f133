"""`init_lora_weights`: peft's LoRA initialisations, run around `get_peft_model` / `add_adapter`.

Three kinds (the registry entry, methods.LORA_INITS, says which):
- weight-only (gaussian, pissa, pissa_niter_N, olora, mica): peft does all of it inside the layer;
- data-driven (eva, corda, lora_ga): calibration batches from the run's own training notes, at most
  INIT_ROWS rows in batches of INIT_BATCH, a seeded sample (`calibration_batches`): EVA after the adapter
  exists (`initialize_lora_eva_weights`), CorDA and LoRA-GA before it (`preprocess_corda`,
  `preprocess_loraga` attach per-layer statistics that the layer's init reads);
- base-mutating (pissa, olora, corda, lora_ga): the init moves s B0 A0 out of the base weight (W_res = W - s B0 A0),
  so a trained adapter is only right on W_res. Before training the initial adapter is saved
  (`save_initial_adapter`); at save time peft converts the trained one to a plain LoRA of rank 2r on the
  original W (delta = B A - B0 A0 = [B | B0] [A ; -A0]: `path_initial_model_for_weight_conversion`), so
  every later step (downstream stacking, export, evaluate) loads it onto the unchanged base.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from pathlib import Path
from typing import Callable

import torch

from clinpeft import methods

INIT_ROWS = 64  # calibration rows (blocks or notes) at most: EVA's SVD, CorDA's covariance, LoRA-GA's gradient
INIT_BATCH = 4  # rows per forward pass
# the untrained adapter of a base-mutating init, inside the run directory (deleted once the converted adapter is
# saved); peft loads it back under its folder's name, so that name must be a valid adapter name (no dots)
INITIAL_ADAPTER = Path(".init") / "initial_adapter"


def init_entry(section) -> methods.LoraInit | None:
    return methods.lora_init(getattr(section, "init_lora_weights", True))


def calibration_batches(rows, seed: int, collate: Callable[[list], dict]) -> list[dict]:
    """A seeded sample of at most INIT_ROWS `rows` (a datasets.Dataset or a list), collated into batches."""
    n = len(rows)
    picked = sorted(random.Random(seed).sample(range(n), min(n, INIT_ROWS)))
    chosen = [rows[i] for i in picked]
    return [collate(chosen[i:i + INIT_BATCH]) for i in range(0, len(chosen), INIT_BATCH)]


def _on_device(batch: dict, model) -> dict:
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def before_adapter(model, config, batches: list[dict] | None) -> None:
    """CorDA / LoRA-GA: statistics of the base model on the calibration batches, attached to its layers."""
    init = config.init_lora_weights
    if init not in ("corda", "lora_ga"):
        return
    if not batches:
        raise ValueError(f"init_lora_weights={init} needs calibration batches from the training notes")
    if init == "corda":
        from peft.tuners.lora.corda import preprocess_corda

        @torch.no_grad()
        def run_model():
            for batch in batches:
                model(**_on_device(batch, model))

        preprocess_corda(model, config, run_model=run_model)
    else:
        from peft import preprocess_loraga

        def train_step():  # the loss's gradient w.r.t. every target weight, summed over the batches
            for batch in batches:
                model(**_on_device(batch, model)).loss.backward()

        was_training = model.training
        model.eval()  # no dropout in the gradient estimate
        with torch.enable_grad():
            preprocess_loraga(model, config, train_step=train_step)
        model.train(was_training)
        model.zero_grad(set_to_none=True)


def after_adapter(model, config, batches: list[dict] | None, adapter_name: str = "default") -> None:
    """EVA: the adapter's A from the top right-singular vectors of each layer's inputs (ranks redistributed)."""
    if config.init_lora_weights != "eva":
        return
    from peft import initialize_lora_eva_weights

    if not batches:
        raise ValueError("init_lora_weights=eva needs calibration batches from the training notes")
    device = next(model.parameters()).device
    initialize_lora_eva_weights(model, [{k: v.to(device) for k, v in b.items()} for b in batches],
                                adapter_name=adapter_name, show_progress_bar=False)


def save_initial_adapter(model, adapter_name: str, folder: Path) -> Path | None:
    """A base-mutating init: save the untrained adapter into `folder` (peft's conversion reads it at the final
    save: `model.save_pretrained(..., path_initial_model_for_weight_conversion=folder)`); None for other inits."""
    entry = methods.lora_init(model.peft_config[adapter_name].init_lora_weights)
    if entry is None or not entry.mutates_base:
        return None
    config = model.peft_config[adapter_name]
    init = config.init_lora_weights
    config.init_lora_weights = True  # peft's recipe: the saved initial adapter must not re-run the init on load
    try:
        model.save_pretrained(folder.parent, selected_adapters=[adapter_name], safe_serialization=True)
        written = folder.parent / adapter_name if adapter_name != "default" else folder.parent
        if written != folder:
            folder.mkdir(parents=True, exist_ok=True)
            for file in ("adapter_config.json", "adapter_model.safetensors"):
                (written / file).replace(folder / file)
    finally:
        config.init_lora_weights = init
    return folder


@contextlib.contextmanager
def base_mutation_handled():
    """peft warns that PiSSA/OLoRA/CorDA "should not be used with other adapters" and advises converting them to
    a plain LoRA whenever a second adapter meets one: here that second adapter is the clinical one, or the
    initial adapter peft's conversion loads, and the conversion is what clinpeft does; other warnings still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".* changes the base weights of the model and should thus not be "
                                                  r"used with other adapters")
        yield
