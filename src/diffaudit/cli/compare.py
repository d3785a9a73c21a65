"""``diffaudit compare``: one report across audited runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import _say
from .options import Formatter, _example


def cmd_compare(args: argparse.Namespace) -> None:
    from ..audit.report.compare import compare_runs

    summary = compare_runs([Path(r) for r in args.runs], Path(args.out))
    for r in summary["runs"]:
        _say(f"{r['run']}: {r['level']}, {r['q']} of {r['n']}, at most {1000 * r['interval'][1]:.3g} in 1 000")
    _say(f"comparison: {Path(args.out) / 'report.html'} (and report.md, compare.json)")


def add_parser(sub) -> None:
    p = sub.add_parser("compare", formatter_class=Formatter, help="one report across audited runs",
                       description="One report across runs (diffaudit-trained and external models, datasets, N_D): a "
                                   "row per run with its risk level, rate, t', t'_alpha, FID and NLL gap, and the "
                                   "q_M(t) curves overlaid. Each run's risk level is recomputed from its counts. The "
                                   "runs are not changed.",
                       epilog=_example("diffaudit compare runs/demo runs/ext --out runs/compare"))
    p.add_argument("runs", nargs="+", help="run directories with results.json")
    p.add_argument("--out", required=True, help="the folder for the comparison: new, empty, or an earlier comparison's "
                                                "(rewritten); never a run directory or a folder inside a compared run")
    p.set_defaults(func=cmd_compare)
