"""Cost of the clinical metrics' bootstrap intervals (evaluation/clinical.py: AUPRC, Brier, ECE on the AUROC's
resamples), for a PMV-sized binary task and a DIAG-like multilabel task.

    python benchmarks/clinical_metrics.py [--resamples 1000] [--notes 2000] [--labels 50]
"""

import argparse
import time

import numpy as np

from clinpeft.evaluation.clinical import bootstrap_clinical, clinical_metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--labels", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = 706
    y = (rng.random(n) < 0.15).astype(int)
    p = 1 / (1 + np.exp(-(y + rng.normal(size=n))))
    ids = [str(i) for i in range(n)]
    started = time.process_time()
    clinical_metrics("binary", y, p)
    bootstrap_clinical("binary", y, p, ids=ids, n_resamples=args.resamples, seed=0, stream="pmv", threshold=0.5)
    print(f"binary, {n} notes, {args.resamples} resamples: {time.process_time() - started:.2f} s CPU")
    y = (rng.random((args.notes, args.labels)) < 0.05).astype(int)
    p = 1 / (1 + np.exp(-(y + rng.normal(size=y.shape))))
    ids = [str(i) for i in range(args.notes)]
    started = time.process_time()
    clinical_metrics("multilabel", y, p)
    bootstrap_clinical("multilabel", y, p, ids=ids, n_resamples=args.resamples, seed=0, stream="diag")
    print(f"multilabel, {args.notes} notes x {args.labels} labels, {args.resamples} resamples: "
          f"{time.process_time() - started:.2f} s CPU")


if __name__ == "__main__":
    main()
