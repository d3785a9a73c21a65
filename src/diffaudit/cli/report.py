"""``diffaudit report``: (re)write report.html and report.md of a run, or read its verdict and gate on it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DiffauditError
from ..io import read_json
from ..runlock import run_lock
from .common import _check_limit, _gate, _say
from .options import Formatter, _example


def _report_writes(args: argparse.Namespace) -> bool:
    """Plain ``report`` writes; ``--json`` and ``--fail-above`` only read, unless ``--write`` asks for both."""
    return args.write or not (args.json or args.fail_above is not None)


def cmd_report(args: argparse.Namespace) -> None:
    import json

    from ..audit.report.render import current_verdict, verdict, write_report
    from ..audit.engine.verify import check_results

    run = Path(args.run_dir)
    _check_limit(args.fail_above)
    if not (run / "results.json").exists():
        raise DiffauditError(f"{run} has no results.json; run 'diffaudit count' (or 'diffaudit audit') first")
    check_results(read_json(run / "results.json"), run / "results.json")  # a wrong-typed section: one line
    paths = None
    if _report_writes(args):
        try:
            with run_lock(run):  # one writer: an audit or another report in this run directory is refused
                paths = write_report(run)
        except PermissionError as err:
            raise DiffauditError(f"cannot write into {run} ({err.strerror}: {err.filename}); 'report --json' and "
                                 "'report --fail-above' without --write only read") from None
        results = read_json(run / "results.json")
    else:  # read only: the verdict recomputed from results.json's counts, nothing written, no lock taken
        results, v = current_verdict(run)
        results = {**results, "verdict": v}
    if args.json:
        print(json.dumps(results.get("verdict"), indent=1))
    elif paths is not None:
        _say(verdict(results))
        _say(f"report: {paths['html']} and {paths['md']}")
    else:
        _say(verdict(results))
    _gate(run, args.fail_above)


def add_parser(sub) -> None:
    p = sub.add_parser("report", formatter_class=Formatter, help="(re)write report.html and report.md of a run",
                       description="Add the verdict (risk level) and the provenance to a run's results.json and write "
                                   "report.html (self-contained, prints to PDF) and report.md from it, holding the "
                                   "run's lock (another process writing in the run is refused). With --json or "
                                   "--fail-above it only reads: the verdict is recomputed from results.json's counts, "
                                   "nothing is written and no lock is taken, so a read-only copy of a run can be "
                                   "gated; --write writes the report as well. With --fail-above, exit 3 when the "
                                   "reproduction rate's 95%% upper limit exceeds RATE. Run 'diffaudit verify' first: "
                                   "the gate trusts the counts in results.json.",
                       epilog=_example("""
                            diffaudit report --run-dir runs/demo
                            diffaudit verify runs/demo && diffaudit report --run-dir runs/demo --fail-above 0.001
                            diffaudit report --run-dir runs/demo --json --fail-above 0.001 --write"""))
    p.add_argument("--run-dir", required=True)
    p.add_argument("--json", action="store_true", help="print the verdict as JSON on stdout (reads only)")
    p.add_argument("--fail-above", type=float, default=None, metavar="RATE",
                   help="exit 3 when the 95%% upper limit of the reproduction rate exceeds RATE (reads only)")
    p.add_argument("--write", action="store_true",
                   help="with --json or --fail-above: also write report.html, report.md and results.json's verdict "
                        "and provenance, under the run's lock, before printing and gating (plain report always writes)")
    p.set_defaults(func=cmd_report)
