"""``diffaudit canaries``: every canary candidate's count, the dose-response and the one-run ε lower bound."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import _load_manifest, _say
from .options import Formatter, _example, common, device_and_data


def cmd_canaries(args: argparse.Namespace) -> None:
    from ..audit.canaries.stage import run_canaries

    run = Path(args.run_dir)
    _load_manifest(run)
    r = run_canaries(run, samples=args.samples, confidence=args.confidence, delta=args.delta, seed=args.seed,
                     data_root=args.data_root, progress=not args.quiet, log=_say)
    e = r["epsilon"]
    bound = (f"epsilon >= {e['epsilon_lower']:.3g} at {e['confidence']:.0%} ({e['correct']} of {e['guesses']} guesses "
             f"right, delta {e['delta']:g})" if e["epsilon_lower"] is not None else f"no epsilon bound ({e['note']})")
    beside = (f" (accountant: {', '.join(f'{k} {v:.3g}' for k, v in e['accountant']['epsilon'].items())})"
              if e.get("accountant") else "")
    _say(f"{r['reproduced']} of {r['n_included']} included candidates reproduced, {r['excluded_flagged']} of "
         f"{r['m'] - r['n_included']} left-out flagged, in {r['n_samples']} samples; {bound}{beside} -> "
         f"{run / 'results.json'}")


def add_parser(sub) -> None:
    p = sub.add_parser("canaries", formatter_class=Formatter,
                       help="count every canary of a --canaries run; dose-response and the one-run epsilon bound",
                       description="For a run prepared with --canaries M: count each candidate's copies among the "
                                   "samples in one pass (the reference nearest-neighbour detector per candidate, its "
                                   "recall and false positives measured), the reproduction rate by duplication count "
                                   "with a logistic trend test, and the lower bound on epsilon of Steinke, Nasr & "
                                   "Jagielski (2023) from guesses on the candidates included once or not at all. "
                                   "Writes 'canaries' in <run>/results.json and <run>/canaries/<samples>/.",
                       epilog=_example("""
                            diffaudit prepare --run-dir runs/c64 --n-train 96 --canaries 64 --inclusion 0.5 --duplicates 1,2,4
                            diffaudit audit --run-dir runs/c64 --preset cpu-demo --n-train 96 --canaries 64 --inclusion 0.5 --duplicates 1,2,4
                            diffaudit canaries --run-dir runs/c64 --confidence 0.99"""))
    common(p)
    p.add_argument("--samples", default=None, help="folder under <run>/samples/ or a path (default: the only one)")
    p.add_argument("--confidence", type=float, default=0.95, help="of the epsilon lower bound (default 0.95)")
    p.add_argument("--delta", type=float, default=None,
                   help="delta of the bound (default: the DP-trained model's delta, else 0)")
    p.add_argument("--seed", type=int, default=0, help="breaks ties between equal counts (default 0)")
    device_and_data(p)
    p.set_defaults(func=cmd_canaries)
