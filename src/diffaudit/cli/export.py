"""``diffaudit export``: write the prepared training set (or the control set) for other trainers."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import PrepareConfig, override
from ..data.export import EXPORT_FORMATS
from .common import _load_manifest, _say
from .options import DATA_FIELDS, Formatter, _example, common, data_options, image_size, with_data_options
from .prepare import prepare


def cmd_export(args: argparse.Namespace) -> None:
    from ..data.export import export_run

    run = Path(args.run_dir)
    size = None if isinstance(args.size, tuple) else args.size  # D,H,W: the volumes' prepared size, exported as is
    if any(getattr(args, k) is not None for k in DATA_FIELDS if k != "size"):  # prepared first, as 'prepare' would
        prepare(run, with_data_options(PrepareConfig(), args), args)  # (--size: the size it is prepared at)
    if args.control:  # the control set (the same draw, x_i replaced, no SAF) for the control model's training
        from ..config import from_dict
        from ..data.prepare import prepare_run

        prepared = from_dict(PrepareConfig, _load_manifest(run)["config"], where="manifest config")
        control = run / "control"
        made = [p for p in (control / "manifest.json", control / "prepare", control) if not p.exists()]
        try:
            prepare_run(control, prepared.control(), data_root=args.data_root, log=_say,
                        progress=not args.quiet, same_data=run)  # a --data source's prepared images are reused
            r = export_run(control, fmt=args.format, out=args.out, channels=args.channels, size=size,
                           data_root=args.data_root)
        except BaseException:  # a refused export leaves no control set behind it
            import shutil

            for p in made:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()
            raise
        run = control
    else:
        r = export_run(run, fmt=args.format, out=args.out, channels=args.channels, size=size,
                       data_root=args.data_root)
    if isinstance(r["size"], list):  # volumes
        where = args.out or run / "export" / f"{r['format']}-volumes"
        _say(f"{r['n_images']} training volumes as {r['format']} ({'x'.join(map(str, r['size']))}, RAS+; digest "
             f"{r['digest']}) -> {where}")
        return
    where = args.out or run / "export" / f"{r['format']}-{r['channels']}c-{r['size']}px"
    _say(f"{r['n_images']} training images as {r['format']} ({r['channels']} channels, {r['size']}x{r['size']}"
         f"{', ' + r['resize'] if r['resize'] else ''}; digest {r['digest']}) -> {where}")


def add_parser(sub) -> None:
    p = sub.add_parser("export", formatter_class=Formatter, help="write the prepared training set for other trainers",
                       description="Write the run's training set (x_p with its SAF, x_i left out) as PNG files in an "
                                   "ImageFolder layout with metadata.jsonl, or as a MedMNIST-style train.npz (volumes: "
                                   "train.npz or one NIfTI file per volume, --format nifti), with an "
                                   "export.json of every file's digest. Which image is x_p is not written. Copy "
                                   "export.json beside the trained model so the audit can confirm its training set. "
                                   "With --data, the run is prepared from your images first, as 'diffaudit prepare "
                                   "--data' would (kept when already prepared so).",
                       epilog=_example("""
                            diffaudit export --run-dir runs/ext --format imagefolder --out runs/ext-data
                            diffaudit export --run-dir runs/ext --format npz --channels 3 --size 64"""))
    common(p)
    p.add_argument("--format", default="imagefolder", choices=EXPORT_FORMATS)
    p.add_argument("--out", default=None, help="an empty or new folder (default: <run>/export/<format>-<C>c-<S>px)")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3], help="3 repeats grey to RGB (default: as prepared)")
    p.add_argument("--size", type=image_size, default=None, metavar="SIZE",
                   help="resize to S x S, PIL bicubic (default: 28, unchanged); with --data, also the size the run is "
                        "prepared at (D,H,W: a folder of volumes, exported as prepared)")
    p.add_argument("--data-root", default=None, help="folder with the dataset's .npz")
    p.add_argument("--control", action="store_true",
                   help="write the control set instead (the same draw with x_i replaced and no SAF, prepared in "
                        "<run>/control/): train the control model on it with the same recipe, then audit with "
                        "--control-model")
    data_options(p, size=False)
    p.set_defaults(func=cmd_export)
