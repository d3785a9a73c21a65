"""Preparing 3D volumes: the IXI T1 folder streamed into the uint8 [N, 1, D, H, W] cache (``diffaudit.data.volumes``).

Reads every NIfTI file of ``--data`` once, preprocesses it with MONAI's transforms (RAS, ``--spacing``, crop-or-pad to
``--size``, percentile scaling) into a memory-mapped ``.npy``, and prints the time, volumes per second, the peak
resident memory of the process and the cache's size, with the intensity spread of the result.

    python benchmarks/volumes.py --size 32,32,32 --spacing 7.5,7.5,7.5
    python benchmarks/volumes.py --size 64,64,64 --spacing 3.75,3.75,3.75
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from diffaudit.data.volumes import VolumeSteps, list_volumes, write_volume_cache

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ixi-t1"


def triple(text: str, kind=float) -> tuple:
    return tuple(kind(v) for v in text.split(","))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--size", default="32,32,32")
    ap.add_argument("--spacing", default="7.5,7.5,7.5", help="mm, or 'none' to keep the files' spacing")
    ap.add_argument("--fit", default="crop-pad")
    args = ap.parse_args()
    steps = VolumeSteps(size=triple(args.size, int), fit=args.fit,
                        spacing=None if args.spacing == "none" else triple(args.spacing))
    names = list_volumes(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "volumes.npy"
        t0 = time.perf_counter()
        record = write_volume_cache(args.data, names, steps, out, progress=False)
        seconds = time.perf_counter() - t0
        cache = np.load(out, mmap_mode="r")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        orientations = sorted({f["source"]["orientation"] for f in record["files"]})
        print(f"{len(names)} files in {args.data}; size {steps.size}, spacing {steps.spacing}, fit {steps.fit}")
        print(f"prepared {cache.shape[0]} volumes in {seconds:.1f} s ({cache.shape[0] / seconds:.1f} volumes/s); "
              f"peak RSS {peak:.0f} MiB; cache {out.stat().st_size / 2**20:.1f} MiB {list(cache.shape)}; "
              f"source orientations {orientations}; skipped {len(record['skipped'])}")
        mean = cache.reshape(len(cache), -1).mean(1)
        print(f"per-volume mean intensity (0..255): min {mean.min():.1f}, median {np.median(mean):.1f}, "
              f"max {mean.max():.1f}; voxels at 0: {np.mean(cache == 0):.1%}")


if __name__ == "__main__":
    main()
