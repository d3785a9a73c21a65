"""``diffaudit canaries``: every canary candidate's count, the dose-response and the one-run ε lower bound."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DiffauditError
from .common import _load_manifest, _model_defaults, _run_model, _say
from .options import ALL_SAMPLERS, Formatter, _example, common, device_and_data, model_options


def _bound_line(e: dict) -> str:
    bound = (f"epsilon >= {e['epsilon_lower']:.3g} at {e['confidence']:.0%} ({e['correct']} of {e['guesses']} guesses "
             f"right, delta {e['delta']:g})" if e["epsilon_lower"] is not None else f"no epsilon bound ({e['note']})")
    beside = (f" (accountant: {', '.join(f'{k} {v:.3g}' for k, v in e['accountant']['epsilon'].items())})"
              if e.get("accountant") else "")
    return bound + beside


def _whitebox_settings(args: argparse.Namespace) -> tuple[float, list[float]]:
    """(t, the t' grid), checked before anything runs."""
    from ..audit.tprime.search import make_grid

    t = 0.3 if args.whitebox_t is None else args.whitebox_t
    if args.whitebox_M < 1 or not 0 < t <= 1 or args.tprime_candidates < 0:
        raise DiffauditError(f"--whitebox-M must be >= 1, --whitebox-t in (0, 1] and --tprime-candidates >= 0; got "
                             f"{args.whitebox_M}, {t} and {args.tprime_candidates}")
    return t, make_grid(args.resolution, args.t_max) if args.tprime_candidates else []


def _whitebox(args: argparse.Namespace, run: Path) -> None:
    from ..audit.canaries.whitebox import run_whitebox

    t, grid = _whitebox_settings(args)

    def check(net):
        sampler = args.sampler or _model_defaults(net).get("sampler", "em")
        steps = args.steps or _model_defaults(net).get("steps", 100)
        net.check_sampler(sampler)
        for time in [t, *grid]:
            net.nfe(sampler, steps, t=time)
        return sampler, steps

    net = _run_model(args, run, check=check)
    sampler, steps = check(net)
    r = run_whitebox(run, net, t=t, m=args.whitebox_M, tprime=args.tprime_candidates, grid=grid, seed=args.seed,
                     steps=steps, sampler=sampler, confidence=args.confidence, delta=args.delta,
                     data_root=args.data_root, device=args.device, progress=not args.quiet, log=_say)
    _say(f"white box, q_M({t:g}) of {r['m']} candidates ({r['score']['nfe']} network evaluations): "
         f"{_bound_line(r['epsilon'])} -> {run / 'results.json'} (canaries_whitebox)")
    for row in (r.get("tprime") or {}).get("candidates", []):
        _say(f"  candidate {row['candidate']} ({'included ' + str(row['duplicates']) + 'x' if row['included'] else 'left out'}): "
             f"t' = {row['t_prime']:.2f}, t'_alpha = {row['t_prime_alpha']:.2f}")


def cmd_canaries(args: argparse.Namespace) -> None:
    from ..audit.canaries.stage import run_canaries

    run = Path(args.run_dir)
    _load_manifest(run)
    if args.whitebox_t is not None or args.tprime_candidates:
        _whitebox_settings(args)  # bad white-box settings are refused before the count runs
        if args.whitebox_only:
            _whitebox(args, run)
            return
    elif args.whitebox_only:
        raise DiffauditError("--whitebox-only needs --whitebox-t or --tprime-candidates")
    r = run_canaries(run, samples=args.samples, confidence=args.confidence, delta=args.delta, seed=args.seed,
                     detector=args.detector, data_root=args.data_root, device=args.device, progress=not args.quiet,
                     log=_say)
    _say(f"{r['reproduced']} of {r['n_included']} included candidates reproduced, {r['excluded_flagged']} of "
         f"{r['m'] - r['n_included']} left-out flagged, in {r['n_samples']} samples; {_bound_line(r['epsilon'])} -> "
         f"{run / 'results.json'}")
    if args.whitebox_t is not None or args.tprime_candidates:
        _whitebox(args, run)


def add_parser(sub) -> None:
    p = sub.add_parser("canaries", formatter_class=Formatter,
                       help="count every canary of a --canaries run; dose-response and the one-run epsilon bound",
                       description="For a run prepared with --canaries M: count each candidate's copies among the "
                                   "samples in one pass (the reference nearest-neighbour detector per candidate, or "
                                   "one classifier over the candidates and 'none'; its recall and false positives "
                                   "measured per candidate), the reproduction rate by duplication count "
                                   "with a logistic trend test, and the lower bound on epsilon of Steinke, Nasr & "
                                   "Jagielski (2023) from guesses on the candidates included once or not at all. "
                                   "Writes 'canaries' in <run>/results.json and <run>/canaries/<samples>/. With "
                                   "--whitebox-t or --tprime-candidates it also runs the model: q_M(t) of every "
                                   "candidate (M reverse runs from it perturbed to t) as a white-box score with its "
                                   "own bound, and t' of the first K candidates ('canaries_whitebox', "
                                   "<run>/canaries/whitebox/).",
                       epilog=_example("""
                            diffaudit prepare --run-dir runs/c64 --n-train 96 --canaries 64 --inclusion 0.5 --duplicates 1,2,4
                            diffaudit audit --run-dir runs/c64 --preset cpu-demo --n-train 96 --canaries 64 --inclusion 0.5 --duplicates 1,2,4
                            diffaudit canaries --run-dir runs/c64 --confidence 0.99
                            diffaudit canaries --run-dir runs/c64 --whitebox-t 0.3 --tprime-candidates 8"""))
    common(p)
    p.add_argument("--samples", default=None, help="folder under <run>/samples/ or a path (default: the only one)")
    p.add_argument("--confidence", type=float, default=0.95, help="of the epsilon lower bound (default 0.95)")
    p.add_argument("--delta", type=float, default=None,
                   help="delta of the bound (default: the DP-trained model's delta, else 0)")
    p.add_argument("--detector", default="nn", choices=("nn", "classifier"),
                   help="nn: the reference nearest-neighbour detector per candidate; classifier: one c_id over the "
                        "candidates and 'none' (trained once, kept in <run>/canaries/identity/)")
    p.add_argument("--seed", type=int, default=0,
                   help="breaks ties between equal scores; seeds the white-box runs (default 0)")
    g = p.add_argument_group("white box (runs the model)")
    g.add_argument("--whitebox-t", type=float, default=None,
                   help="score every candidate by q_M at this t as well (e.g. 0.3), with its own epsilon bound")
    g.add_argument("--whitebox-M", type=int, default=16, help="reverse runs per candidate")
    g.add_argument("--tprime-candidates", type=int, default=0, metavar="K",
                   help="t' of the first K candidates (default 0: none); costs a t' search each")
    g.add_argument("--whitebox-only", action="store_true", help="skip the count of samples (a run without them)")
    g.add_argument("--resolution", type=float, default=0.05, help="t' grid step")
    g.add_argument("--t-max", type=float, default=1.0, help="largest t on the t' grid")
    g.add_argument("--steps", type=int, default=None, help="sampler steps over the whole [eps, T] (default 100; a "
                                                           "scheduler model: its own)")
    g.add_argument("--sampler", default=None, choices=ALL_SAMPLERS, help="default em; a scheduler model: its own")
    model_options(p)
    device_and_data(p)
    p.set_defaults(func=cmd_canaries)
