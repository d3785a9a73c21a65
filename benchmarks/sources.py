"""Preparing a hospital-sized folder: scan and prepare_cache on N grey PNGs, timed.

Writes N (default 10 000) 8-bit grey PNGs of 256x256 — smooth fields with noise, so they compress like scans
rather than like pure noise — into a temporary folder, then times open_source (every file decoded and hashed once)
and prepare_cache to 64x64 (decoded again, re-hashed, resized by area, streamed into a .npy memory map). Prints the
times, images/s and the peak resident memory (resource.getrusage).

Usage: python benchmarks/sources.py [--n 10000] [--side 256] [--size 64] [--workers 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from diffaudit.data.sources import assign_splits, open_source, prepare_cache


def write_pngs(folder: Path, n: int, side: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.integers(20, 230, (side // 32, side // 32)).astype(np.float32)
        field = np.kron(coarse, np.ones((32, 32), np.float32)) + rng.normal(0, 6, (side, side))
        Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the PNGs (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "pngs"
        folder.mkdir()
        t = time.perf_counter()
        write_pngs(folder, args.n, args.side)
        print(f"wrote {args.n} PNGs of {args.side}x{args.side} in {time.perf_counter() - t:.1f} s "
              f"({sum(p.stat().st_size for p in folder.iterdir()) / 2**20:.0f} MiB); peak RSS {peak_rss_mib():.0f} MiB")
        t = time.perf_counter()
        source = assign_splits(open_source(folder, workers=args.workers, log=lambda s: None), seed=0)
        scan = time.perf_counter() - t
        print(f"scan (decode + SHA-256 of every file, {args.workers} workers): {scan:.1f} s, {args.n / scan:.0f} images/s")
        t = time.perf_counter()
        prepared = prepare_cache(source, Path(tmp) / "cache.npy", size=args.size, channels=1, workers=args.workers,
                                 progress=False, log=print)
        cache = time.perf_counter() - t
        print(f"prepare_cache to {args.size}x{args.size}: {cache:.1f} s, {args.n / cache:.0f} images/s; "
              f"cache {prepared.shape}, SHA-256 {prepared.sha256[:16]}...")
        print(f"total {scan + cache:.1f} s ({args.n / (scan + cache):.0f} images/s); peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
