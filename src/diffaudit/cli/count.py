"""``diffaudit count``: count reproductions of x_p in the samples (Table 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DETECTORS
from .common import _load_manifest, _say
from .options import Formatter, _example, common, device_and_data


def cmd_count(args: argparse.Namespace) -> None:
    from ..audit.count.stage import run_count

    run = Path(args.run_dir)
    _load_manifest(run)
    r = run_count(run, samples=args.samples, detector=args.detector, control_samples=args.control_samples,
                  data_root=args.data_root, device=args.device, progress=not args.quiet, log=_say,
                  target_fpr=args.target_fpr)
    low, high = r["rate_ci95"]
    found = f"|c_p+| = {r['c_p']}, |c_id+| = {r['c_id']}, " if r["c_p"] is not None else "nearest-neighbour: "
    seq = r.get("sequential") if r.get("design") == "sequential" else None
    test = ("anytime-valid p-value for H0 p = 1/N_D" if seq else "H0 p = 1/N_D vs p < 1/N_D: p-value")
    interval = (f"95% confidence sequence (sequential count, stopped: {seq['reason']})" if seq else "95% interval")
    _say(f"{found}|q| = {r['q']} of N = {r['n_samples']} "
         f"(E|q| = {r['expected_q']:.3g} under full memorisation); {test} {r['p_value']:.3g}; "
         f"{interval} for the reproduction probability [{low:.3g}, {high:.3g}] -> {run / 'results.json'}")


def add_parser(sub) -> None:
    p = sub.add_parser("count", formatter_class=Formatter, help="count reproductions of x_p in the samples (Table 1)",
                       description="Classify the generated images with c_p and c_id (or the reference "
                                   "nearest-neighbour detector), count |c_p+|, |c_id+| and |q|, test H0: p = 1/N_D "
                                   "against p < 1/N_D, and write the 'reproduction' section of <run>/results.json "
                                   "with grids of the positives under <run>/count/.",
                       epilog=_example("""
                            diffaudit count --run-dir runs/b32
                            diffaudit count --run-dir runs/b32 --control-samples runs/b32-control/samples/em500-seed0"""))
    common(p)
    p.add_argument("--samples", default=None, help="folder under <run>/samples/ or a path (default: the only one)")
    p.add_argument("--detector", default="classifiers", choices=DETECTORS,
                   help="classifiers: q = c_p+ and c_id+; nn: the reference nearest-neighbour detector alone")
    p.add_argument("--control-samples", default=None,
                   help="samples of a control model (prepare --no-fingerprint): false-positive rates on generated images")
    p.add_argument("--target-fpr", type=float, default=None, metavar="RATE",
                   help="set each classifier's threshold to flag at most RATE of the held-out real images "
                        "(default: the trained thresholds, 0.5)")
    device_and_data(p)
    p.set_defaults(func=cmd_count)
