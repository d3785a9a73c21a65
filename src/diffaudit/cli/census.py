"""``diffaudit census``: how many training images a trained model gives back, with or without a canary."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import CensusConfig, SampleConfig
from ..errors import DiffauditError
from ..io import check_name
from .common import _load_manifest, _model_defaults, _run_model, _say
from .options import Formatter, _example, common, device_and_data, model_options


def cmd_census(args: argparse.Namespace) -> None:
    from ..audit.census.calibrate import check_fpr
    from ..audit.census.stage import run_census
    from ..generate import sample_run

    run = Path(args.run_dir)
    _load_manifest(run)
    check_fpr(args.fpr)
    if args.embedding is not None and args.space == "pixel":
        raise DiffauditError("--embedding gives the encoder of the embedding space; leave --space pixel out")
    space = args.space or ("embedding" if args.embedding is not None else "pixel")
    CensusConfig(space=space, fpr=args.fpr, embedding_steps=args.embedding_steps)  # the ranges, before any work
    if args.n is not None and args.n < 1:
        raise DiffauditError(f"--n is the number of samples to draw, at least 1; got {args.n}")
    samples = args.samples
    if args.model is not None or args.n is not None:  # draw the samples first, with the run's model or --model
        if samples is not None:
            check_name(samples)
        net = _run_model(args, run)
        cfg = SampleConfig(n=args.n if args.n is not None else 1000, **{"steps": 250, **_model_defaults(net)})
        samples = samples or f"census-{cfg.sampler}{cfg.steps}-seed{cfg.seed}"
        sample_run(run, samples, cfg, device=args.device, progress=not args.quiet, net=net, data_root=args.data_root)
    r = run_census(run, samples=samples, space=space, fpr=args.fpr, embedding=args.embedding,
                   embedding_size=args.embedding_size, embedding_steps=args.embedding_steps, data_root=args.data_root,
                   progress=not args.quiet, log=_say)
    lo, hi = r["share_ci95"]
    cal = r["calibration"]
    _say(f"{r['copies']} of {r['n_samples']} samples are copies ({r['share']:.3g}, 95% interval [{lo:.3g}, {hi:.3g}]) "
         f"of {r['n_copied']} of {r['n_train']} training images ({r['n_copied_patients']} patients) in "
         f"{r['space']['space']} space; false positives on held-out images: {cal['test_false_positives']} of "
         f"{cal['n_test']} -> {run / 'results.json'}")


def add_parser(sub) -> None:
    p = sub.add_parser("census", formatter_class=Formatter,
                       help="count the training images a model gives back (no canary needed)",
                       description="Match every generated image to its nearest training image (pixel space with "
                                   "±1 px shifts, or a contrastive embedding trained on the run's own real images, or "
                                   "your encoder), flag a copy below a threshold fitted on the held-out images of the "
                                   "val split (at most --fpr of them flagged) and checked on the test split, and "
                                   "write 'census' in <run>/results.json with the pairs and a gallery under "
                                   "<run>/census/.",
                       epilog=_example("""
                            diffaudit census --run-dir runs/b32
                            diffaudit census --run-dir runs/ixi --model runs/ixi-model --n 2000 --space embedding"""))
    common(p)
    p.add_argument("--samples", default=None, help="folder under <run>/samples/ or a path (default: the only one; "
                                                   "with --model or --n: census-<sampler><steps>-seed0)")
    p.add_argument("--n", type=int, default=None, help="draw this many samples first (default with --model: 1000)")
    p.add_argument("--space", default=None, choices=("pixel", "embedding"),
                   help="pixel (the default): RMSE with ±1 px shifts; embedding: a SimCLR ResNet10 trained on the "
                        "run's real images, or your --embedding")
    p.add_argument("--fpr", type=float, default=0.001,
                   help="the false-positive rate on held-out real images the threshold allows (default 0.001)")
    p.add_argument("--embedding", default=None, metavar="FILE",
                   help="your encoder: a TorchScript file, or a census embedding's model.safetensors")
    p.add_argument("--embedding-size", type=int, default=None, metavar="S",
                   help="the input side your encoder takes (images are area-resized to it; default: the run's)")
    p.add_argument("--embedding-steps", type=int, default=300, help="training steps of the census's own embedding")
    model_options(p)
    device_and_data(p)
    p.set_defaults(func=cmd_census)
