"""``diffaudit verify``: check a run's artefacts against their recorded digests and recount its samples."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DiffauditError
from ..runlock import run_lock
from .common import _say
from .options import Formatter, _example, device_and_data


def cmd_verify(args: argparse.Namespace) -> None:
    from ..audit.engine.verify import verify_run

    run = Path(args.run)
    if args.reseal_manifest:
        from ..data.prepare import reseal_manifest

        if not run.is_dir():
            raise DiffauditError(f"{run} is not a run directory")
        with run_lock(run):
            manifest, resealed = reseal_manifest(run)
        _say(f"{run / 'manifest.json'} {'resealed' if resealed else 'was sealed already'}: digest {manifest['digest']}")
        return
    r = verify_run(run, data_root=args.data_root, device=args.device, progress=not args.quiet)
    counted = f"|q| = {r['q']} of N = {r['n']}" if r["q"] is not None else f"the census of N = {r['n']}"
    _say(f"verified: {run} is what its records say (model {r['model']}; {counted}"
         + (f"; risk level {r['level']}" if r["level"] else "") + ")")


def add_parser(sub) -> None:
    p = sub.add_parser("verify", formatter_class=Formatter,
                       help="check a run's artefacts against their recorded digests and recount its samples",
                       description="Recompute what can be recomputed from a run directory and compare: the manifest's "
                                   "digest; the SHA-256 of the model's weights, of every sample shard and of the "
                                   "detectors against the digests recorded when they were written; the audit's stage "
                                   "records against the files they name; the count (the counted shards through the "
                                   "stored detectors) against results.json; and results.json's interval, p-value and "
                                   "verdict against their recomputation from its counts. Exit 0 when everything "
                                   "agrees, 4 naming the first artefact that disagrees or has no recorded digest (a "
                                   "run made before digests were recorded), 2 for bad input. Writes nothing. Needs "
                                   "the dataset file the run was prepared from.",
                       epilog=_example("""
                            diffaudit verify runs/demo
                            diffaudit verify runs/demo && diffaudit report --run-dir runs/demo --fail-above 0.001
                            diffaudit verify runs/old --reseal-manifest   # a manifest from before sealed manifests"""))
    p.add_argument("run", metavar="RUN", help="the run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    device_and_data(p)
    p.add_argument("--reseal-manifest", action="store_true",
                   help="instead of verifying: add the digest to a manifest written by a diffaudit that did not seal "
                        "manifests yet (it must pass every other check; reseal only a manifest you trust)")
    p.set_defaults(func=cmd_verify)
