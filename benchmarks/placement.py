"""Placing the SAF on real images: how often 0.5 is kept, the contrast reached, the draws, the foreground.

For each shared dataset (the 2D MedMNIST files in ../shared/data/medmnist and mid axial slices of IXI T1 volumes
in ../shared/data/ixi-t1, at 64 px) and each seed, draws a training image with the seed and places a disc SAF of
the default size (3/28 of the side, width half the radius) with the grey level chosen (min contrast 0.2), as
``prepare`` does. Prints per dataset the share of picks that kept the paper's 0.5, the mean and least contrast,
the mean number of centres drawn, the mean foreground fraction and the share of images with a light background;
with --scan also how many images of the whole split have no place for the SAF (refused).

Usage: python benchmarks/placement.py [--seeds 20] [--ixi 8] [--scan] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from diffaudit.config import PrepareConfig
from diffaudit.data.placement import footprint, foreground_mask, holds, place_saf

MEDMNIST = ("breastmnist.npz", "breastmnist_64.npz", "pneumoniamnist.npz", "retinamnist.npz")


def medmnist(path: Path) -> np.ndarray:
    images = np.load(path)["train_images"]
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


def ixi_slices(folder: Path, n: int, size: int = 64) -> np.ndarray:
    """Mid axial slices of the first ``n`` IXI T1 volumes: 0.5 / 99.5 percentiles to uint8, padded square, resized."""
    import nibabel as nib
    from PIL import Image

    out = []
    for path in sorted(folder.glob("*.nii.gz"))[:n]:
        vol = nib.load(path)
        axis = [code in "SI" for code in nib.aff2axcodes(vol.affine)].index(True)
        data = np.asarray(vol.dataobj, dtype=np.float32)
        s = np.take(data, data.shape[axis] // 2, axis=axis)
        lo, hi = np.percentile(s, [0.5, 99.5])
        u = np.clip((s - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        side = max(u.shape)
        square = np.zeros((side, side), np.uint8)
        r0, c0 = (side - u.shape[0]) // 2, (side - u.shape[1]) // 2
        square[r0:r0 + u.shape[0], c0:c0 + u.shape[1]] = u
        out.append(np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR))[None])
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--ixi", type=int, default=8, help="IXI volumes to slice")
    ap.add_argument("--scan", action="store_true", help="also count the images of each split that are refused")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no shared data at {args.data}; pass --data")
    sets = {name: medmnist(args.data / "medmnist" / name) for name in MEDMNIST
            if (args.data / "medmnist" / name).is_file()}
    if (args.data / "ixi-t1").is_dir():
        sets[f"ixi-t1 ({args.ixi} mid axial)"] = ixi_slices(args.data / "ixi-t1", args.ixi)
    cfg = PrepareConfig()
    print(f"{'dataset':<26}{'side':>5}{'r px':>6}{'kept 0.5':>9}{'mean c':>8}{'min c':>7}{'draws':>7}"
          f"{'fg':>6}{'light bg':>9}{'ms':>6}" + (f"{'refused':>14}" if args.scan else ""))
    for name, images in sets.items():
        _, _, h, w = images.shape
        radius, width = cfg.saf_pixels(h)
        picks = []
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            image = images[int(rng.integers(len(images)))]
            picks.append(place_saf(image, rng, shape=cfg.saf_shape, radius=radius, width=width, intensity=None,
                                   min_contrast=cfg.saf_contrast))
        ms = (time.perf_counter() - t0) / args.seeds * 1e3
        contrast = np.array([p.contrast for p in picks])
        row = (f"{name:<26}{h:>5}{radius:>6.2f}{np.mean([p.intensity == 0.5 for p in picks]):>9.2f}"
               f"{contrast.mean():>8.3f}{contrast.min():>7.3f}{np.mean([p.draws for p in picks]):>7.1f}"
               f"{np.mean([p.foreground_fraction for p in picks]):>6.2f}"
               f"{np.mean(['light background' in p.mask_rule for p in picks]):>9.2f}{ms:>6.1f}")
        if args.scan:
            foot = footprint(cfg.saf_shape, radius, width)
            refused = sum(not holds(foreground_mask(im, saf=foot)[0], foot) for im in images)
            row += f"{refused:>8}/{len(images)}"
        print(row)


if __name__ == "__main__":
    main()
