"""``diffaudit bound``: upper bounds on reconstruction success under DP (no training needed)."""

from __future__ import annotations

import argparse

from ..errors import DiffauditError
from .options import Formatter, _example


def cmd_bound(args: argparse.Namespace) -> None:
    from ..privacy.bounds import dpsgd_bound, eps_delta_bound, gdp_bound

    rows = []
    if args.mu is not None:
        rows.append(f"mu-GDP (mu = {args.mu:g}): reconstruction success <= {gdp_bound(args.kappa, args.mu):.4g}")
    if args.epsilon is not None:
        rows.append(f"({args.epsilon:g}, {args.delta:g})-DP: reconstruction success <= "
                    f"{eps_delta_bound(args.kappa, args.epsilon, args.delta):.4g}")
    dpsgd = (args.sample_rate, args.noise_multiplier, args.steps)
    if any(v is not None for v in dpsgd):
        if any(v is None for v in dpsgd):
            raise DiffauditError("the DP-SGD bound needs --sample-rate, --noise-multiplier and --steps together")
        b = dpsgd_bound(args.kappa, *dpsgd)
        rows.append(f"DP-SGD (q = {args.sample_rate:g}, sigma = {args.noise_multiplier:g}, T = {args.steps}): "
                    f"reconstruction success <= {b.bound:.4g} (numerical error {b.numerical_error:.2g}; central-limit "
                    f"approximation mu = {b.clt_mu:.3g}: {b.clt_bound:.4g}, not a bound)")
    if not rows:
        raise DiffauditError("give a mechanism: --mu, or --epsilon (with --delta), or --sample-rate, --noise-multiplier "
                             "and --steps")
    print(f"baseline success kappa = {args.kappa:g}")
    print("\n".join(rows))


def add_parser(sub) -> None:
    p = sub.add_parser("bound", formatter_class=Formatter, help="upper bounds on reconstruction success under DP",
                       description="Upper bounds 1 - f(kappa) on the success probability of a reconstruction attack "
                                   "whose baseline success (without the target in the training set) is kappa, for a "
                                   "mechanism with trade-off function f: mu-GDP, (epsilon, delta)-DP, or DP-SGD with "
                                   "Poisson sampling rate q, noise multiplier sigma and T steps (numerically, from "
                                   "Opacus' PRV accountant). No training needed.",
                       epilog=_example("""
                            diffaudit bound --kappa 0.01 --mu 1
                            diffaudit bound --kappa 0.01 --epsilon 10 --delta 1e-5
                            diffaudit bound --kappa 0.01 --sample-rate 0.01 --noise-multiplier 1.0 --steps 1000"""))
    p.add_argument("--kappa", type=float, required=True, help="baseline success probability in (0, 1)")
    p.add_argument("--mu", type=float, default=None, help="mu of mu-GDP")
    p.add_argument("--epsilon", type=float, default=None)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--sample-rate", type=float, default=None, help="DP-SGD: Poisson sampling rate q")
    p.add_argument("--noise-multiplier", type=float, default=None, help="DP-SGD: sigma")
    p.add_argument("--steps", type=int, default=None, help="DP-SGD: number of noisy steps T")
    p.set_defaults(func=cmd_bound)
