"""``diffaudit sweep``: audits over datasets (or one source of your own) and N_D, or over epsilon and pretraining,
with a combined report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import override
from ..errors import DiffauditError
from .common import _audit_config, _class_conditional, _refuse_folder, _say
from .options import Formatter, _example, audit_options, canary_options, data_options

DEFAULT_DATASETS = "breastmnist"


def _n_trains(text: str) -> list[int | None]:
    out: list[int | None] = []
    for v in text.split(","):
        v = v.strip()
        if v == "all":
            out.append(None)
            continue
        try:
            out.append(int(v))
        except ValueError:
            raise DiffauditError(f"--n-train takes comma-separated sizes or 'all', got '{v}'") from None
    return out


def _epsilons(text: str) -> list[float | None]:
    out: list[float | None] = []
    for v in text.split(","):
        v = v.strip().lower()
        try:
            eps = None if v in ("inf", "none") else float(v)
        except ValueError:
            eps = -1.0
        if eps is not None and not (0 < eps < float("inf")):
            raise DiffauditError(f"--dp-epsilons takes comma-separated positive numbers or inf, got '{v}'")
        out.append(eps)
    return out


def _datasets(args: argparse.Namespace) -> list[str]:
    """The MedMNIST flags of --datasets; none for a sweep over N_D on --data."""
    if args.data is not None:
        if args.datasets is not None:
            raise DiffauditError("give --datasets (MedMNIST flags) or --data (your own images), not both")
        return []
    return [d.strip() for d in (args.datasets or DEFAULT_DATASETS).split(",") if d.strip()]


def cmd_sweep(args: argparse.Namespace) -> None:
    from ..audit.report.compare import RUN_FILES
    from ..audit.engine.sweep import run_privacy_sweep, run_sweep
    from ..data.medmnist import open_dataset

    _refuse_folder(args.out, "--out", RUN_FILES, "a run directory",
                   "a sweep writes its own run directory per cell and its report into --out: choose a new folder")
    datasets = _datasets(args)
    cfg = _audit_config(args)
    n_trains = _n_trains(args.n_trains)
    epsilons = _epsilons(args.dp_epsilons) if args.dp_epsilons else None
    if epsilons is not None:
        if (cfg.prepare.data is None and len(datasets) != 1) or len(n_trains) != 1:
            raise DiffauditError("a privacy sweep (--dp-epsilons) runs on one dataset and one N_D")
        pretrain = {"yes": [True], "no": [False], "both": [False, True]}[args.pretrain]
        public = args.public_dataset
        if cfg.prepare.data is None:
            open_dataset(datasets[0], data_root=args.data_root, download_missing=args.download, size=cfg.prepare.size,
                         log=_say)
            cfg = override(cfg, prepare=override(cfg.prepare, dataset=datasets[0]))
            public = public or datasets[0]
        if args.class_conditional:
            cfg = _class_conditional(cfg, args.data_root)
        cfg = override(cfg, prepare=override(cfg.prepare, n_train=n_trains[0]),
                       control=True if args.control is None else args.control)  # on: DP samples make detectors fire

        summary = run_privacy_sweep(Path(args.out), cfg, epsilons=epsilons, pretrain=pretrain,
                                    public_dataset=public, public_split=args.public_split,
                                    device=args.device, data_root=args.data_root, progress=not args.quiet, log=_say)
        _say(f"{len(summary['cells'])} audits; report: {Path(args.out) / 'report.html'} (and privacy_sweep.json)")
        return
    summary = run_sweep(Path(args.out), cfg, datasets=datasets, n_trains=n_trains,
                        class_conditional=args.class_conditional, device=args.device, data_root=args.data_root,
                        download=args.download, progress=not args.quiet, log=_say)
    _say(f"{len(summary['cells'])} audits; combined report: {Path(args.out) / 'report.html'} (and report.md, sweep.json)")


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", formatter_class=Formatter, help="audits over datasets and N_D with a combined report",
                       description="One audit per (dataset, N_D) cell under --out, then report.html/report.md and "
                                   "sweep.json with Table 1 (reproductions against N_D), Table 2 (NLL, FID, SAF %, "
                                   "ID % per dataset) and the q_M(t) curves overlaid. Rerun to continue a killed "
                                   "sweep. With --data, the cells are the N_D values on your own images.",
                       epilog=_example("""
                            diffaudit sweep --out runs/table1 --datasets breastmnist --n-train 16,32,64
                            diffaudit sweep --out runs/table2 --preset paper --n-train all \\
                                --datasets breastmnist,retinamnist,pneumoniamnist
                            diffaudit sweep --out runs/eps --n-train 16 --dp-epsilons 1,10,inf --pretrain both \\
                                --public-dataset pneumoniamnist --public-split train --class-conditional"""))
    p.add_argument("--out", required=True, help="the sweep folder (created if missing)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--datasets", default=None, help=f"comma-separated MedMNIST flags (default: {DEFAULT_DATASETS})")
    p.add_argument("--n-train", dest="n_trains", default="16,32", help="comma-separated N_D values, or 'all'")
    p.add_argument("--class-conditional", action="store_true", help="condition on the labels; adds the utility test")
    g = p.add_argument_group("privacy sweep (epsilon x pretraining on one dataset and N_D)")
    g.add_argument("--dp-epsilons", default=None, help="comma-separated epsilon targets, 'inf' for non-private, e.g. 1,10,inf")
    g.add_argument("--pretrain", default="both", choices=["yes", "no", "both"], help="public pretraining before training")
    g.add_argument("--public-dataset", default=None, help="the public pretraining dataset (default: the audited one)")
    g.add_argument("--public-split", default="val", choices=["train", "val", "test"],
                   help="its split (must differ from the private set)")
    audit_options(p)
    data_options(p)
    canary_options(p)
    p.set_defaults(func=cmd_sweep)
