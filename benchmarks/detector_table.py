"""The detectors across a Table 1 sweep: do c_p and c_id see the noise-free copies of x_p at every N_D and size?

For each image size (MedMNIST ``<flag>.npz`` at 28 px, the MedMNIST+ ``<flag>_<size>.npz`` above) and each N_D,
prepares the training set (seed 0, the default SAF placement), trains c_p and c_id with an audit preset's settings
(default: the default preset) until their criterion or their cap, and prints what ``classifiers/metrics.json``
records: the criterion (met, steps), the noise-free shifted copies of x_p flagged by c_p, c_id and both (of 200), the
held-out real images flagged, the SAF's contrast against x_i, and the wall time. No diffusion model is trained.

Usage: python benchmarks/detector_table.py [--dataset breastmnist] [--sizes 28,64] [--n-train 16,32,64,128,256,all]
       [--preset cpu-demo] [--out runs/detector-table] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from diffaudit.adversary.stage import train_classifiers
from diffaudit.presets import get_audit_preset
from diffaudit.data.prepare import prepare_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--sizes", default="28,64")
    ap.add_argument("--n-train", default="16,32,64,128,256,all")
    ap.add_argument("--preset", default="cpu-demo", help="the audit preset whose classifiers are trained (default: cpu-demo, the default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/detector-table"))
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    preset = get_audit_preset(args.preset)
    rows = []
    print(f"{'size':>4} {'N_D':>4} {'c_p':>7} {'c_id':>7} {'q':>7} {'FP q':>7} {'crit c_p':>10} {'crit c_id':>10} "
          f"{'contrast':>8} {'time s':>7}", flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        for text in args.n_train.split(","):
            n = None if text == "all" else int(text)
            run = args.out / f"{args.dataset}-{size}px-n{text}-s{args.seed}"
            cfg = dataclasses.replace(preset.prepare, dataset=args.dataset, n_train=n, seed=args.seed,
                                      size=None if size == 28 else size)
            t = time.perf_counter()
            m = prepare_run(run, cfg, data_root=args.data_root, log=lambda _: None, progress=False)
            metrics = train_classifiers(run, {"c_p": preset.c_p, "c_id": preset.c_id}, data_root=args.data_root,
                                        progress=False, log=lambda _: None)
            took = time.perf_counter() - t
            clean = metrics["true_positive_rate"]["copies_of_x_p"]["0"]
            fp = metrics["false_positive_rate"]["heldout_real"]["q"]
            crit = {k: metrics[k].get("criterion") or {} for k in ("c_p", "c_id")}

            def met(c: dict) -> str:
                return f"{'met' if c.get('met') else 'MISSED'} {c.get('steps', '?')}" if c else "-"

            row = {"size": size, "n_train": m["n_train"], "c_p": clean["c_p"], "c_id": clean["c_id"], "q": clean["q"],
                   "heldout_fp_q": fp, "criterion": crit, "contrast": m["fingerprint"]["placement"]["contrast"],
                   "seconds": took}
            rows.append(row)
            print(f"{size:>4} {m['n_train']:>4} {clean['c_p']['positives']:>3}/{clean['c_p']['n']:<3} "
                  f"{clean['c_id']['positives']:>3}/{clean['c_id']['n']:<3} {clean['q']['positives']:>3}/{clean['q']['n']:<3} "
                  f"{fp['positives']:>3}/{fp['n']:<3} {met(crit['c_p']):>10} {met(crit['c_id']):>10} "
                  f"{row['contrast']:>8.3f} {took:>7.0f}", flush=True)
    (args.out / "table.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
