"""Token-weighted perplexity passes over packed (or one-note-per-row) blocks, on one device or several."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from clinpeft.data.packing import IGNORE_INDEX
from clinpeft.evaluation.metrics import perplexity


@torch.inference_mode()
def token_nll(model, blocks, batch_size: int, desc: str = "perplexity", progress: bool = True,
              precision: str = "fp32") -> tuple[float, int]:
    """Summed next-token NLL (nats) and the number of predicted tokens over `blocks` (packed or not).

    Labels of -100 are skipped. With several processes (accelerate launch) each takes a shard
    and the sums are added, so the result is the same as on one device. Runs under inference_mode
    (no autograd bookkeeping), in batches of `batch_size` (eval.batch_size, its own), and under
    bf16 autocast when `precision` is bf16 (the training precision; the NLL is summed in fp64).
    """
    from accelerate import PartialState

    state = PartialState()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [nll, tokens]
    with state.split_between_processes(list(range(len(blocks)))) as indices:
        starts = range(0, len(indices), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress or not state.is_main_process, leave=False):
            rows = blocks[indices[start : start + batch_size]]
            input_ids = torch.tensor(rows["input_ids"], device=device)
            labels = torch.tensor(rows["labels"], device=device)
            # attention_mask=None + position ids: each packed note attends only to itself. Unpacked
            # rows (one note each, right-padded) have no position ids: see pretrain.tokenize_corpus.
            extra = {}
            if "position_ids" in rows:
                extra["position_ids"] = torch.tensor(rows["position_ids"], device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(input_ids=input_ids, use_cache=False, **extra).logits
            # prompt / p-tuning return logits for their virtual tokens first: keep the row's own
            logits = logits[:, -input_ids.size(1):]
            shift_logits = logits[:, :-1].float()
            shift_labels = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX, reduction="sum",
            )
            total[0] += nll.double()
            total[1] += (shift_labels != IGNORE_INDEX).sum()
    if state.num_processes > 1:
        from accelerate.utils import reduce

        total = reduce(total, reduction="sum")
    model.train(was_training)
    return float(total[0]), int(total[1])


def split_perplexity(model, blocks, batch_size: int, desc: str, progress: bool = True,
                     precision: str = "fp32") -> float:
    nll, n = token_nll(model, blocks, batch_size, desc=desc, progress=progress, precision=precision)
    return perplexity(nll, n) if n else math.nan
