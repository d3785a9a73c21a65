"""Samples a sequential count would have saved against the fixed-N design, from runs that were counted with fixed N.

Image i depends only on (seed, i), so the first n images of a fixed-N folder are exactly the images a sequential count
with the same sampling config would have drawn, and the positives among them are the ones the fixed-N count found.
For each run this replays the looks (one per ``--shard-size`` images) from ``results.json``'s q-positives and prints
where ``diffaudit sample --sequential`` would have stopped: the reason, n, |q| and the confidence sequence there, next
to the fixed-N figures.

    python benchmarks/sequential.py runs/table1-mini/breastmnist-n*          # stop once 1/N_D is rejected
    python benchmarks/sequential.py runs/demo --target-rate 0.01 --shard-size 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffaudit.audit.count.sequential import confidence_sequence, decide, looks_of
from diffaudit.io import read_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--target-rate", type=float, default=None)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    print("| run | N_D | fixed N: \\|q\\| / N, 95% interval | sequential: stop | n | \\|q\\| | confidence sequence | "
          "samples saved |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        r = read_json(Path(run) / "results.json")
        rep, n_d = r["reproduction"], r["n_train"]
        n_max = rep["n_samples"]
        ks, ns = looks_of(rep["positives"]["q"], n_max, args.shard_size)
        reason, k, n, lo, hi = "max_n", ks[-1], n_max, *confidence_sequence(ks[-1], n_max, args.alpha)
        for k_, n_ in zip(ks, ns):
            lo_, hi_ = confidence_sequence(k_, n_, args.alpha)
            why = decide(lo_, hi_, p0=1 / n_d, target=args.target_rate)
            if why is not None:
                reason, k, n, lo, hi = why, k_, n_, lo_, hi_
                break
        flo, fhi = rep["rate_ci95"]
        print(f"| {Path(run).name} | {n_d} | {rep['q']} / {n_max}, [{flo:.4f}, {fhi:.4f}] | {reason} | {n} | {k} | "
              f"[{lo:.4f}, {hi:.4f}] | {n_max - n} ({100 * (n_max - n) / n_max:.0f}%) |")


if __name__ == "__main__":
    main()
