"""The census at scale: N samples against N_D training images (``diffaudit.audit.census``), on the CPU.

Synthetic smooth images (a random 8 x 8 field upsampled, as the tests' MedMNIST files): the training set, held-out
evaluation and test images, and samples of which ``--copies`` are training images translated by one pixel with noise
of +-2 grey levels and the rest new images. Prints, for the pixel space (and with ``--embedding`` the contrastive
embedding, its training included): the seconds of each part, the peak resident memory of the process, the threshold,
the copies found and the false positives among the new samples and the test images.

    python benchmarks/census.py --n 10000 --n-train 10000 --side 64
    python benchmarks/census.py --n 2000 --n-train 2000 --side 32 --volumes   # 32^3 volumes
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from diffaudit.audit.census.calibrate import check_threshold, fit_threshold
from diffaudit.audit.census.embedding import encoder_space, train_embedding
from diffaudit.audit.census.space import PixelSpace, nearest_two


def smooth(n: int, side: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct smooth uint8 images [n, 1, side, ...] (``dims`` spatial axes)."""
    out = []
    for lo in range(0, n, 1000):
        field = torch.from_numpy(rng.random((min(1000, n - lo), 1) + (8,) * dims, dtype=np.float32))
        up = F.interpolate(field, size=(side,) * dims, mode="bilinear" if dims == 2 else "trilinear",
                           align_corners=False)
        out.append(np.rint(255 * up.numpy()).astype(np.uint8))
    return np.concatenate(out)


def near_copies(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    axes = tuple(range(2, images.ndim))
    out = np.stack([np.roll(x, tuple(rng.integers(-1, 2, len(axes))), axis=tuple(a - 1 for a in axes))
                    for x in images]).astype(np.int16)
    return np.clip(out + rng.integers(-2, 3, out.shape), 0, 255).astype(np.uint8)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples")
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--held-out", type=int, default=1000, help="evaluation and test images, each")
    ap.add_argument("--copies", type=float, default=0.1, help="share of the samples that copy a training image")
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--volumes", action="store_true", help="volumes of side^3 instead of images")
    ap.add_argument("--embedding", action="store_true", help="also the contrastive embedding (trained here)")
    ap.add_argument("--embedding-steps", type=int, default=300)
    ap.add_argument("--fpr", type=float, default=0.001)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    dims = 3 if args.volumes else 2
    t0 = time.perf_counter()
    train = smooth(args.n_train, args.side, dims, rng)
    held = smooth(2 * args.held_out, args.side, dims, rng)
    k = int(args.copies * args.n)
    source = rng.integers(0, len(train), k)
    samples = np.concatenate([near_copies(train[source], rng), smooth(args.n - k, args.side, dims, rng)])
    shape = "x".join([str(args.side)] * dims)
    print(f"{args.n} samples ({k} near-copies) against {args.n_train} training images of {shape}, "
          f"{args.held_out} + {args.held_out} held-out; data made in {time.perf_counter() - t0:.1f} s, "
          f"{torch.get_num_threads()} threads")
    print("| space | prepare s | held-out s | samples s | total s | peak RSS MiB | threshold | copies found | "
          "of the copies | false, new samples | false, test |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    spaces = [("pixel", lambda: PixelSpace(shift=1))]
    if args.embedding:
        def learned():
            net = train_embedding(_tmp(), np.concatenate([train, held[:args.held_out]]), steps=args.embedding_steps,
                                  batch_size=64 if dims == 2 else 16, progress=False)
            return encoder_space(net, side=None, name="embedding", described={})
        spaces.append(("embedding", learned))
    for name, make in spaces:
        t0 = time.perf_counter()
        space = make()
        t1 = time.perf_counter()
        cal = fit_threshold(nearest_two(space, held[:args.held_out], train).distance, args.fpr)
        check = check_threshold(nearest_two(space, held[args.held_out:], train).distance, cal["threshold"])
        t2 = time.perf_counter()
        found = nearest_two(space, samples, train)
        t3 = time.perf_counter()
        flagged = found.distance < cal["threshold"]
        right = int((found.index[:k] == source)[flagged[:k]].sum())
        print(f"| {name} | {t1 - t0:.1f} | {t2 - t1:.1f} | {t3 - t2:.1f} | {t3 - t0:.1f} | {peak_mib():.0f} | "
              f"{cal['threshold']:.4f} | {int(flagged.sum())} | {right}/{k} | {int(flagged[k:].sum())}/{args.n - k} | "
              f"{check['test_false_positives']}/{check['n_test']} |", flush=True)


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp()) / "embedding"


if __name__ == "__main__":
    main()
