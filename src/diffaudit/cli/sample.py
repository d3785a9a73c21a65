"""``diffaudit sample``: generate images from the trained model (or count them as they come, ``--sequential``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DETECTORS, SampleConfig, SequentialConfig, override
from ..errors import DiffauditError
from ..io import check_name
from ..presets import PRESETS, get_preset
from .common import _model_defaults, _run_model, _say
from .options import ALL_SAMPLERS, Formatter, _example, common, model_options, numerics_options


def cmd_sample(args: argparse.Namespace) -> None:
    from ..data.prepare import load_manifest
    from ..generate import claim_folder, run_conditions, sample_run

    run = Path(args.run_dir)
    if args.name is not None:
        check_name(args.name)  # before the model is loaded
    if (args.target_rate is not None or args.alpha is not None) and not args.sequential:
        raise DiffauditError("--target-rate and --alpha say when the sequential count stops; add --sequential")
    seq = override(SequentialConfig(), target_rate=args.target_rate, alpha=args.alpha) if args.sequential else None
    base = get_preset(args.preset).sample if args.preset else SampleConfig()
    flags = dict(n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                 shard_size=args.shard_size, precision=args.precision, compile=args.compile,
                 memory_format=args.memory_format, condition=args.condition)
    override(base, **flags)  # the flags' types and ranges, before the model is loaded
    if args.sequential and args.detector == "classifiers":  # its detectors too, before a model given is registered
        from ..adversary.stage import load_detectors

        load_detectors(run, device="cpu")

    def configure(net):
        """The sampling config for ``net`` and its folder name, checked against the model and any samples already in
        that folder (before a model given with --model is registered; nothing is written)."""
        cfg = override(override(base, **_model_defaults(net)), **flags)
        name = args.name if args.name is not None else f"{cfg.sampler}{cfg.steps}-seed{cfg.seed}"
        claim_folder(run / "samples" / name, net, cfg, write=False,
                     conditions=run_conditions(load_manifest(run), net, cfg.condition, args.data_root))
        if args.sequential:
            from ..audit.count.sequential import check_sequential_folder

            check_sequential_folder(run, name)
        return cfg, name

    net = _run_model(args, run, check=configure)
    cfg, name = configure(net)
    if args.sequential:
        from ..audit.count.sequential import sequential_run

        r = sequential_run(run, name, cfg, target_rate=seq.target_rate, alpha=seq.alpha, detector=args.detector,
                           data_root=args.data_root, device=args.device, progress=not args.quiet, log=_say, net=net)
        _say(f"{r['n_samples']} of at most {cfg.n} samples under {run / 'samples' / name}; 'diffaudit count "
             f"--samples {name}' reports the anytime-valid interval")
        return
    out = sample_run(run, name, cfg, device=args.device, progress=not args.quiet, net=net, data_root=args.data_root)
    _say(f"{cfg.n} samples in shards under {out} (grid: {out / 'grid.png'})")


def add_parser(sub) -> None:
    p = sub.add_parser("sample", formatter_class=Formatter, help="generate images from the trained model",
                       description="Generate N images into uint8 npz shards under <run>/samples/<name>/; image i "
                                   "depends only on (seed, i). A killed run resumes at its first missing shard; "
                                   "a larger --n keeps the shards already made.",
                       epilog=_example("diffaudit sample --run-dir runs/b32 --n 1000 --sampler em --steps 500"))
    common(p)
    p.add_argument("--n", "--n-samples", dest="n", type=int, default=None,
                   help="number of images (default 64); spell it --n-samples after torchrun, which takes --n as its own")
    p.add_argument("--sampler", default=None, choices=ALL_SAMPLERS,
                   help="em (reverse-SDE Euler-Maruyama), pc (predictor-corrector), ode (probability flow, Heun); "
                        "a model trained with a scheduler: ddpm (ancestral) or ddim (default: its own)")
    p.add_argument("--steps", type=int, default=None, help="time steps (default: the preset's; a scheduler model: its "
                                                           "pipeline's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--shard-size", type=int, default=None)
    p.add_argument("--name", default=None, help="sub-folder under samples/ (default: <sampler><steps>-seed<seed>)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="sampling defaults")
    p.add_argument("--condition", default=None, choices=SampleConfig.CONDITIONS,
                   help="a conditional model's conditions: classes (each in turn; the default for a class-conditional "
                        "model), training (the training set's classes or attributes, as often as they occur; the "
                        "default for a model conditioned on attributes), x_p (x_p's own: what an attacker who knows "
                        "the patient's attributes draws)")
    p.add_argument("--sequential", action="store_true",
                   help="draw and count one shard at a time and stop when an anytime-valid interval settles the "
                        "question (--n is then the most to draw); needs the run's detectors")
    p.add_argument("--target-rate", type=float, default=None, metavar="RATE",
                   help="with --sequential: stop once the rate is surely below or above RATE (default: stop once full "
                        "memorisation, 1/N_D, is rejected)")
    p.add_argument("--alpha", type=float, default=None, help="with --sequential: 1 - the confidence (default 0.05)")
    p.add_argument("--detector", default="classifiers", choices=DETECTORS, help="with --sequential: the detectors")
    numerics_options(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None, help="folder with the dataset's .npz (to check --model's classes)")
    model_options(p)
    p.set_defaults(func=cmd_sample)
