"""The many-canary count at scale: m candidates' reference detectors built and N samples scored in one pass.

    python benchmarks/canaries.py                                  # m = 1000, N = 10 000, PneumoniaMNIST 28 px
    python benchmarks/canaries.py --m 200 --n 2000 --base 500

Candidates, base images and samples are real images of one MedMNIST file: the first m distinct training images are
the candidates, the next ``--base`` the base training images, and the samples are training images drawn at random
(a tenth of them candidates), each shifted by up to one pixel with noise of +-2 grey levels, so the detectors have
copies to find. Prints the time to build the m detectors, to score the N samples, the copies found, and the peak
resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from diffaudit.audit.canaries.score import CandidateDetectors
from diffaudit.data.medmnist import resolve_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="pneumoniamnist")
    ap.add_argument("--m", type=int, default=1000)
    ap.add_argument("--base", type=int, default=1000)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with np.load(resolve_root(args.data_root) / f"{args.dataset}.npz") as f:
        images = f["train_images"][:, None] if f["train_images"].ndim == 3 else f["train_images"].transpose(0, 3, 1, 2)
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    images = images[np.sort(first)]  # the file holds exact duplicates; prepare would never make them two candidates
    if len(images) < args.m + args.base:
        raise SystemExit(f"{args.dataset} has {len(images)} training images, fewer than --m + --base")
    targets, base = images[:args.m], images[args.m:args.m + args.base]
    rng = np.random.default_rng(0)
    pool = np.concatenate([targets, base])
    pick = np.where(rng.random(args.n) < 0.1, rng.integers(0, args.m, args.n), rng.integers(args.m, len(pool), args.n))
    samples = np.stack([np.roll(pool[i], tuple(rng.integers(-1, 2, 2)), axis=(1, 2)) for i in pick]).astype(np.int16)
    samples = np.clip(samples + rng.integers(-2, 3, samples.shape), 0, 255).astype(np.uint8)
    start = time.perf_counter()
    det = CandidateDetectors(targets, base, shift=1)
    built = time.perf_counter() - start
    start = time.perf_counter()
    counts, n = det.count(samples[i:i + 1000] for i in range(0, len(samples), 1000))
    scored = time.perf_counter() - start
    truth = np.bincount(pick[pick < args.m], minlength=args.m)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.dataset} {list(images.shape[1:])}: m = {args.m} candidates, {args.base} base images, N = {n} samples "
          f"on {args.threads} threads")
    print(f"  detectors built in {built:.1f} s; samples scored in {scored:.1f} s ({n / scored:.0f} samples/s)")
    print(f"  copies found {int(counts.sum())} of {int(truth.sum())} drawn; candidates with a copy "
          f"{int((counts > 0).sum())} of {int((truth > 0).sum())}; exact per-candidate agreement "
          f"{int((counts == truth).sum())} of {args.m}")
    print(f"  peak resident memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
