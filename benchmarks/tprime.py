"""Exhaustive versus fast t' search on one trained run: network evaluations, wall time, and the answers.

Usage: python benchmarks/tprime.py --run-dir runs/b32 [--M 16] [--resolution 0.01] [--steps 500] [--detector nn]
The two searches use the same seeded q_M(t) (so equal answers are expected on a monotone profile); each pays for
its own evaluations.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffaudit.adversary.stage import AuditData, make_detectors
from diffaudit.audit.tprime.search import QM, make_grid, search
from diffaudit.device import resolve_device
from diffaudit.io import read_json
from diffaudit.models.load import run_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--resolution", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--detector", default="nn", choices=["nn", "classifiers"])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    run = Path(args.run_dir)
    manifest = read_json(run / "manifest.json")
    model = run_model(run, manifest=manifest, device=args.device)
    audit = AuditData(manifest)
    detectors = make_detectors(run, audit, args.detector, device=args.device)
    device = resolve_device(args.device)
    grid = make_grid(args.resolution)
    q_m = QM(model, audit.x_p, detectors, m=args.M, steps=args.steps, device=device)
    out = {}
    for method in ("fast", "exhaustive"):
        q_m.cache.clear()
        out[method] = s = search(q_m, grid, method=method, p0=1 / manifest["n_train"])
        print(f"{method:10s} t'={s.t_prime:.2f} t'_alpha={s.t_prime_alpha:.2f} evaluated {len(s.evaluations):3d} of "
              f"{len(grid)} times, {s.nfe:9d} NFE, {s.wall_s:7.1f} s, non-monotone: {s.non_monotone}", flush=True)
    fast, full = out["fast"], out["exhaustive"]
    print(f"device {device}, M={args.M}, steps {args.steps}, grid step {args.resolution}: exhaustive/fast = "
          f"{full.nfe / fast.nfe:.1f}x NFE, {full.wall_s / fast.wall_s:.1f}x wall time")
    print("q_M over the grid (exhaustive):", " ".join(f"{e.positives}" for e in
                                                      sorted(full.evaluations.values(), key=lambda e: e.t)))


if __name__ == "__main__":
    main()
