"""``diffaudit tprime``: t', t'_alpha and the q(p) bound (Algorithm 1), or post-hoc t' of chosen training images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DETECTORS, T_SEARCHES, TPrimeConfig, override
from ..errors import DiffauditError
from .common import _load_manifest, _model_defaults, _run_model, _say
from .options import ALL_SAMPLERS, Formatter, _example, common, device_and_data, model_options


def _positions(text: str | None) -> list[int] | None:
    if text is None or text == "all":
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DiffauditError(f"--images takes 'all' or comma-separated positions in the training set, got '{text}'") from None


def cmd_tprime(args: argparse.Namespace) -> None:
    from ..audit.tprime.search import make_grid
    from ..audit.tprime.stage import run_posthoc, run_tprime

    run = Path(args.run_dir)
    t = override(TPrimeConfig(), M=args.M, resolution=args.resolution, t_max=args.t_max, steps=args.steps,
                 sampler=args.sampler, search=args.search, alpha=args.alpha, chance=args.chance,
                 seed=args.seed)  # checked up front
    positions = _positions(args.images)
    if args.images is None:  # the chance level and the detectors too, before a model given is loaded and registered
        from ..adversary.stage import load_detectors
        from ..audit.tprime.stage import chance_level

        chance_level(run, _load_manifest(run), t.chance)
        if args.detector == "classifiers":
            load_detectors(run, device="cpu")
    base = t

    def configure(net):
        """The t' config for ``net``, with its sampler, steps and every grid time checked against the model's schedule
        (before a model given with --model is registered)."""
        cfg = override(override(base, **_model_defaults(net)), sampler=args.sampler, steps=args.steps)
        net.check_sampler(cfg.sampler)
        for time in make_grid(cfg.resolution, cfg.t_max):
            net.nfe(cfg.sampler, cfg.steps, t=time)
        return cfg

    net = _run_model(args, run, check=configure)
    t = configure(net)
    grid = make_grid(t.resolution, t.t_max)
    common_args = dict(grid=grid, m=t.M, seed=t.seed, steps=t.steps, sampler=t.sampler, alpha=t.alpha,
                       data_root=args.data_root, device=args.device, progress=not args.quiet, net=net)
    if args.images is not None:
        rows = run_posthoc(run, positions, **common_args)
        top = ", ".join(f"#{r['position']} (t'={r['t_prime']:.2f}, t'_a={r['t_prime_alpha']:.2f})" for r in rows[:5])
        _say(f"post-hoc t' of {len(rows)} training images; most at risk: {top} -> {run / 'results.json'}")
        return
    r = run_tprime(run, detector=args.detector, method=args.search, chance=args.chance, log=_say, **common_args)
    extra = ""
    if "compare" in r:
        c = r["compare"]
        extra = (f"; exhaustive t' = {c['exhaustive']['value']:.2f} with {c['exhaustive']['nfe']} NFE "
                 f"({c['nfe_ratio']:.1f}x the fast search's, {c['wall_ratio']:.1f}x its wall time)")
    _say(f"t' = {r['value']:.2f}, t'_alpha = {r['value_alpha']:.2f} (alpha {r['alpha']}, chance level "
         f"{r['chance_level']:.3g}); bound (Eq. 9) {r['bound']:.3g}; {r['nfe']} network evaluations ({r['search']})"
         f"{extra}{'; q_M was not monotone in t' if r['non_monotone'] else ''} -> {run / r['figure']}")


def add_parser(sub) -> None:
    p = sub.add_parser("tprime", formatter_class=Formatter, help="t', t'_alpha and the q(p) bound (Algorithm 1)",
                       description="Perturb x_p to time t, run the reverse sampler M times from there, and find the "
                                   "largest t at which the detectors still see x_p (t', Algorithm 1), the largest t at "
                                   "which that happens significantly above chance (t'_alpha), and the upper Darboux "
                                   "bound of Eq. 9. With --images, compute t' of chosen training images with the "
                                   "reference nearest-neighbour detector instead (post-hoc audit, no fingerprint).",
                       epilog=_example("""
                            diffaudit tprime --run-dir runs/b32 --M 16 --search fast
                            diffaudit tprime --run-dir runs/b32 --search both        # compare with the exhaustive grid
                            diffaudit tprime --run-dir runs/b32 --images 0,5,9      # post-hoc: any training images"""))
    common(p)
    p.add_argument("--M", type=int, default=16, help="reverse runs per time t")
    p.add_argument("--resolution", type=float, default=0.01, help="grid step in t (the paper: 0.01)")
    p.add_argument("--t-max", type=float, default=1.0, help="largest t on the grid")
    p.add_argument("--search", default="fast", choices=T_SEARCHES)
    p.add_argument("--detector", default="classifiers", choices=DETECTORS)
    p.add_argument("--alpha", type=float, default=0.05, help="level of t'_alpha (Bonferroni over the grid)")
    p.add_argument("--chance", default="full", help="chance level p_0 for t'_alpha: full (1/N_D), measured (the "
                                                    "count's 95%% upper bound) or a number")
    p.add_argument("--steps", type=int, default=None, help="sampler steps over the whole [eps, T]; a run from t uses "
                                                           "t/T of them (default 500; a scheduler model: its pipeline's)")
    p.add_argument("--sampler", default=None, choices=ALL_SAMPLERS, help="default em; a scheduler model: its own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", default=None, help="post-hoc: 'all' or comma-separated positions in the training set")
    device_and_data(p)
    model_options(p)
    p.set_defaults(func=cmd_tprime)
