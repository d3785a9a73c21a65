"""``diffaudit nll``: exact NLL of x_p, training and test images (Eq. 5)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import override
from .common import _run_model, _say
from .options import Formatter, _example, common, device_and_data, model_options


def cmd_nll(args: argparse.Namespace) -> None:
    from ..audit.quality.stage import run_nll
    from ..config import NLLConfig

    run = Path(args.run_dir)
    cfg = override(NLLConfig(), n_train=args.n_train, n_test=args.n_test, x_p_repeats=args.x_p_repeats, rtol=args.rtol,
                   atol=args.atol, batch_size=args.batch_size, seed=args.seed)
    net = _run_model(args, run)
    r = run_nll(run, cfg, data_root=args.data_root, device=args.device, progress=not args.quiet, net=net)
    if r.get("skipped"):
        _say(f"NLL not computed: {r['skipped']}")
        return
    parts = ", ".join(f"{k} {r[k]['mean']:.3f}" for k in ("x_p", "train", "test") if r.get(k))
    _say(f"NLL ({r.get('unit', 'bits/dim')}): {parts} -> {run / 'results.json'}")


def add_parser(sub) -> None:
    p = sub.add_parser("nll", formatter_class=Formatter, help="exact NLL of x_p, training and test images (Eq. 5)",
                       description="Bits per dimension of x_p, of other training images and of test images under the "
                                   "run's model, by the probability-flow ODE (a discrete-time model: the VP SDE of its "
                                   "schedule, see the README). Writes <run>/nll/nll.json and results.json's nll_bpd.",
                       epilog=_example("""
                            diffaudit nll --run-dir runs/b32
                            diffaudit nll --run-dir runs/ext --model runs/ext-model --n-train 16 --n-test 16"""))
    common(p)
    p.add_argument("--n-train", type=int, default=None, help="training images besides x_p (default 64)")
    p.add_argument("--n-test", type=int, default=None, help="test images (default 64)")
    p.add_argument("--x-p-repeats", type=int, default=None, help="dequantisation draws of x_p (default 8)")
    p.add_argument("--rtol", type=float, default=None, help="ODE solver tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=None, help="ODE solver tolerance (default 1e-5)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    device_and_data(p)
    model_options(p)
    p.set_defaults(func=cmd_nll)
