"""``diffaudit prepare``: choose N_D training images and put the SAF on x_p."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import SAF_SHAPES, PrepareConfig, override
from ..data.medmnist import SPLITS
from .common import _say
from .options import Formatter, _example, common, data_options, saf_options, with_data_options


def prepare_config(args: argparse.Namespace) -> PrepareConfig:
    """The PrepareConfig of the prepare options, the data and SAF options included."""
    cfg = PrepareConfig(split=args.split, n_train=args.n_train, channels=args.channels, seed=args.seed,
                        fingerprint=not args.no_fingerprint, saf_shape=args.saf_shape)
    return with_data_options(override(cfg, dataset=args.dataset), args)


def prepare(run: Path, cfg: PrepareConfig, args: argparse.Namespace, *, download: bool = False) -> dict:
    """Write ``<run>/manifest.json`` for ``cfg`` (kept when done with the same config, refused for another)."""
    from ..data.prepare import prepare_run

    return prepare_run(run, cfg, data_root=args.data_root, download=download, log=_say, progress=not args.quiet)


def cmd_prepare(args: argparse.Namespace) -> None:
    prepare(Path(args.run_dir), prepare_config(args), args, download=args.download)


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", formatter_class=Formatter, help="choose N_D training images and put the SAF on x_p",
                       description="Choose N_D training images of a MedMNIST split or of your own images (--data: a "
                                   "folder of PNG/JPEG/TIFF/BMP, DICOM or NIfTI, or a datalist, prepared once into "
                                   "<run>/data/images.npy; with --size D,H,W a folder of NIfTI volumes, into "
                                   "<run>/data/volumes.npy), put a synthetic anatomical fingerprint on one of them "
                                   "(x_p, Eq. 10) where it lies on the anatomy and stands out, drop its clean original "
                                   "and its patient's other images, and write manifest.json, from which the exact "
                                   "training set can be rebuilt.",
                       epilog=_example("""
                            diffaudit prepare --dataset breastmnist --n-train 32 --seed 0 --run-dir runs/b32
                            diffaudit prepare --dataset breastmnist --size 64 --n-train 16 --run-dir runs/b64
                            diffaudit prepare --data scans/ --size 128 --n-train 64 --run-dir runs/cxr
                            diffaudit prepare --data ixi-t1/ --size 32,32,32 --fit resize --n-train 16 --run-dir runs/ixi"""))
    common(p)
    p.add_argument("--dataset", default=None, help="MedMNIST flag (file <flag>.npz in the data root) "
                                                   "(default: breastmnist)")
    p.add_argument("--n-train", type=int, default=None, help="N_D, the training-set size (default: the whole split)")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="3 repeats grey images to RGB (as the paper)")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of images, of x_i and of the SAF location")
    p.add_argument("--no-fingerprint", action="store_true", help="the control set for false-positive rates: the same draw (same --seed and --n-train) with x_i replaced by another image and no SAF")
    p.add_argument("--saf-shape", default="disc", choices=list(SAF_SHAPES),
                   help="disc or ring in an image; in a volume a disc is drawn as a ball and a ring as a shell")
    p.add_argument("--data-root", default=None, help="folder with <dataset>.npz (default: $DIFFAUDIT_DATA, "
                                                      "../shared/data/medmnist, ~/.medmnist)")
    p.add_argument("--download", action="store_true", help="download the file if missing (needs internet)")
    data_options(p)
    saf_options(p)
    p.set_defaults(func=cmd_prepare)
