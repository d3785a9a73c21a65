"""``diffaudit utility``: what a class-conditional model's synthetic data is worth to a classifier trained under DP."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import UtilityConfig, override
from .common import _load_manifest, _say
from .options import Formatter, _example, common, device_and_data, epsilon_list


def cmd_utility(args: argparse.Namespace) -> None:
    from ..audit.count.stage import find_samples
    from ..audit.utility.stage import run_dp_utility

    run = Path(args.run_dir)
    _load_manifest(run)
    cfg = override(UtilityConfig(), epsilons=args.classifier_epsilons, mix_ratio=args.mix_ratio, seeds=args.seeds,
                   steps=args.steps, batch_size=args.batch_size, width=args.width)
    r = run_dp_utility(run, find_samples(run, args.samples), cfg, data_root=args.data_root, device=args.device,
                       progress=not args.quiet, log=_say)
    for line in r["winners"]:
        _say(line)
    _say(f"-> {run / 'results.json'} (utility_dp) and {run / r['figure']}")


def add_parser(sub) -> None:
    p = sub.add_parser("utility", formatter_class=Formatter,
                       help="the downstream classifier under DP: real, synthetic, and DP-SGD regimes",
                       description="Train the label classifier (the FID domain extractor's ResNet10, GroupNorm for "
                                   "BatchNorm) on the run's real images and on a class-conditional model's samples in "
                                   "five regimes (real; synthetic; real with DP-SGD; real + synthetic with DP-SGD; "
                                   "synthetic-pretrained, then DP-SGD on real) at each classifier epsilon and seed, "
                                   "and test each on the real test split. Only the real records are accounted; the "
                                   "generator's epsilon is reported beside. Writes 'utility_dp' in "
                                   "<run>/results.json and <run>/utility_dp/.",
                       epilog=_example("""
                            diffaudit utility --run-dir runs/b32 --classifier-epsilons 1,3,10,inf
                            diffaudit utility --run-dir runs/b32-dp10 --mix-ratio 1 --seeds 5 --width 16"""))
    common(p)
    p.add_argument("--samples", default=None, help="folder under <run>/samples/ or a path (default: the only one)")
    p.add_argument("--classifier-epsilons", type=epsilon_list, default=None, metavar="E,E,...",
                   help="the classifier's epsilons, inf for no DP (default 1,3,10,inf)")
    p.add_argument("--mix-ratio", type=float, default=None, metavar="R",
                   help="synthetic images per expected real image of a batch in 'real + synthetic' (default 0.5)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per regime and epsilon (default 3)")
    p.add_argument("--steps", type=int, default=None, help="classifier training steps (default 300)")
    p.add_argument("--batch-size", type=int, default=None, help="expected batch of real images (default 32)")
    p.add_argument("--width", type=int, default=None,
                   help="channels of the classifier's first level (default 64, the extractor's; a DP-SGD step costs "
                        "about 4x less at half the width)")
    device_and_data(p)
    p.set_defaults(func=cmd_utility)
