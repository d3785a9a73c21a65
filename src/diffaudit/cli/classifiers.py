"""``diffaudit train-classifiers``: train the adversary c_p and c_id."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..adversary.classifiers import ARCHS
from ..config import CLASSIFIER_PRESETS, override
from .common import _load_manifest, _say
from .options import Formatter, _example, common, device_and_data


def cmd_train_classifiers(args: argparse.Namespace) -> None:
    from ..adversary.stage import train_classifiers
    from ..config import get_classifier_preset

    run = Path(args.run_dir)
    _load_manifest(run)
    preset = get_classifier_preset(args.preset)
    configs = {name: override(cfg, arch=args.arch, max_epochs=args.max_epochs, patience=args.patience,
                             epoch_size=args.epoch_size, batch_size=args.batch_size, seed=args.seed)
               for name, cfg in preset.items()}
    m = train_classifiers(run, configs, data_root=args.data_root, device=args.device, progress=not args.quiet, log=_say)
    real = m["false_positive_rate"]["heldout_real"]
    clean = m["true_positive_rate"]["copies_of_x_p"]["0"]
    _say(f"c_p test accuracy {m['c_p']['test_accuracy']:.3f}; c_id training accuracy {m['c_id']['train_accuracy']:.3f}; "
         f"false positives on {real['q']['n']} held-out real images: c_p {real['c_p']['positives']}, "
         f"c_id {real['c_id']['positives']}, q {real['q']['positives']}; copies of x_p detected by both: "
         f"{clean['q']['positives']}/{clean['q']['n']} -> {run / 'classifiers' / 'metrics.json'}")


def add_parser(sub) -> None:
    p = sub.add_parser("train-classifiers", formatter_class=Formatter, help="train the adversary c_p and c_id",
                       description="Train the fingerprint detector c_p and the identity classifier c_id (ResNets "
                                   "from scratch with AugMix; c_id with SAF-shaped masks and noise) for the prepared "
                                   "run, then measure their accuracies and error rates on held-out real images and "
                                   "on jittered, noisy copies of x_p. Writes <run>/classifiers/.",
                       epilog=_example("diffaudit train-classifiers --run-dir runs/b32 --preset cpu"))
    common(p)
    p.add_argument("--preset", default="cpu", choices=sorted(CLASSIFIER_PRESETS),
                   help="cpu: ResNet10, a few minutes on 2 cores; paper: ResNet50, patience 20")
    p.add_argument("--arch", default=None, choices=list(ARCHS), help="(default: the preset's)")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--patience", type=int, default=None, help="epochs without a better validation loss before stopping")
    p.add_argument("--epoch-size", type=int, default=None, help="training draws per epoch")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    device_and_data(p)
    p.set_defaults(func=cmd_train_classifiers)
