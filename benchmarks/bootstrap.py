"""Benchmark: bootstrap intervals of clinpeft/evaluation/bootstrap.py on DIAG-sized and PMV-sized tasks.

    python benchmarks/bootstrap.py --notes 10000 --labels 500 --resamples 1000

Times `bootstrap_auroc` (wall and CPU seconds) on generated data: a multilabel task of --notes x
--labels with skewed label prevalence (log-normal, median ~1.8%, like ICD codes), a 706-note
binary task (PMV's test split) and a 3000-note 4-class task (LOS, one-vs-one). Not a timed test:
numbers depend on the machine and on its load (the 1-minute load average is printed with them).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from clinpeft.evaluation.bootstrap import bootstrap_auroc


def timed(label: str, *args, **kwargs) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    boot = bootstrap_auroc(*args, **kwargs)
    lo, hi = boot.interval()
    print(f"{label:<44} wall {time.perf_counter() - wall:6.2f} s  cpu {time.process_time() - cpu:6.2f} s  "
          f"interval [{100 * lo:.1f}, {100 * hi:.1f}]  undefined {boot.n_undefined}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=10_000)
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    prevalence = np.clip(rng.lognormal(-4, 1, args.labels), 0.0005, 0.5)
    y = (rng.random((args.notes, args.labels)) < prevalence).astype(np.int8)
    probs = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + y - 3)))
    print(f"load average (1 min): {os.getloadavg()[0]:.1f}; median positives per label {np.median(y.sum(0)):.0f}")
    timed(f"multilabel {args.notes} notes x {args.labels} labels", "multilabel", y, probs,
          n_resamples=args.resamples, stream="diag")
    y_bin = (rng.random(706) < 0.3).astype(int)
    timed("binary 706 notes", "binary", y_bin, rng.normal(size=706) + y_bin, n_resamples=args.resamples)
    y_mc = rng.integers(0, 4, 3000)
    timed("multiclass 3000 notes x 4 classes (ovo)", "multiclass", y_mc, rng.dirichlet(np.ones(4), 3000),
          n_resamples=args.resamples)


if __name__ == "__main__":
    main()
