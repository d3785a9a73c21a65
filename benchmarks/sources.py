"""Preparing a hospital-sized folder: the whole ``prepare`` stage on N grey PNGs, timed, with its peak memory.

Writes N (default 10 000) 8-bit grey PNGs of 256x256 — smooth fields with noise, so they compress like scans
rather than like pure noise — into a temporary folder. Then, in a fresh process (so its peak resident memory is the
stage's alone), runs ``prepare_run`` on it as ``diffaudit prepare --data FOLDER --size 64`` does: the scan (every
file decoded and hashed once), the split, the cache (decoded again, re-hashed, resized by area, streamed into a .npy
memory map), the draw of D_p with the SAF placement and the manifest. Prints the phases' times, images/s and the
child's peak RSS (resource.getrusage(RUSAGE_CHILDREN)).

Usage: python benchmarks/sources.py [--n 10000] [--side 256] [--size 64] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image



def write_pngs(folder: Path, n: int, side: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.integers(20, 230, (side // 32, side // 32)).astype(np.float32)
        field = np.kron(coarse, np.ones((32, 32), np.float32)) + rng.normal(0, 6, (side, side))
        Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")


CHILD = """
import sys, time
from diffaudit.config import PrepareConfig
from diffaudit.data.prepare import prepare_run
t = time.perf_counter()
phases = []
def log(msg):
    phases.append((time.perf_counter() - t, msg))
m = prepare_run(sys.argv[2], PrepareConfig(data=sys.argv[1], size=int(sys.argv[3]), n_train=None), log=log,
                progress=False)
total = time.perf_counter() - t
for at, msg in phases:
    print(f"  {at:7.1f} s  {msg[:110]}")
print(f"prepare: {total:.1f} s for {len(m['source']['records'])} images ({len(m['source']['records']) / total:.0f} images/s), "
      f"N_D = {m['n_train']}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the PNGs (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "pngs"
        folder.mkdir()
        t = time.perf_counter()
        write_pngs(folder, args.n, args.side)
        print(f"wrote {args.n} PNGs of {args.side}x{args.side} in {time.perf_counter() - t:.1f} s "
              f"({sum(p.stat().st_size for p in folder.iterdir()) / 2**20:.0f} MiB)")
        subprocess.run([sys.executable, "-c", CHILD, str(folder), str(Path(tmp) / "run"), str(args.size)], check=True)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kilobytes on Linux
        cache = Path(tmp) / "run" / "data" / "images.npy"
        print(f"peak RSS of the prepare process: {rss:.0f} MiB; cache {cache.stat().st_size / 2**20:.0f} MiB; "
              f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
