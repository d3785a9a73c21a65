"""Wall time of `make demo` on a fresh clone: the install and the audit separately, then the demo's figures.

Clones this repository (its committed state) into a temporary folder beside the shared data, runs `make install`
and then `make demo` (the cpu-demo audit), each timed, and prints |q|, E|q|, the p-value, the interval, t', the NLL
and FID rows, and each stage's wall time from the run's stage records.

    python benchmarks/demo.py                 # from the repository root
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=".", help="the repository to clone")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    clone = Path(tempfile.mkdtemp(prefix="diffaudit-demo-", dir=repo.parent))  # beside it: ../shared/data is found
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    try:
        install = timed(["make", "install"], clone)
        audit = timed(["make", "demo"], clone)
        run = clone / "runs" / "demo"
        r = json.loads((run / "results.json").read_text())
        rep, tp, nll, fid = r["reproduction"], r["t_prime"], r["nll_bpd"], r["fid"]
        print(f"install {install:.0f} s; audit {audit:.0f} s ({audit / 60:.1f} min); total {(install + audit) / 60:.1f} min")
        print(f"|c_p+| {rep['c_p']}, |c_id+| {rep['c_id']}, |q| {rep['q']} of {rep['n_samples']}; E|q| {rep['expected_q']:.3g}; "
              f"p = {rep['p_value']:.3g}; 95% interval [{rep['rate_ci95'][0]:.3g}, {rep['rate_ci95'][1]:.3g}]")
        print(f"t' {tp['value']:.2f}, t'_alpha {tp['value_alpha']:.2f}, bound {tp['bound']:.3g}, {tp['nfe']} NFE")
        print(f"NLL bits/dim: x_p {nll['x_p']['mean']:.3f}, train {nll['train']['mean']:.3f}, test {nll['test']['mean']:.3f}")
        print(f"FID ({fid['extractor']['name']}): train {fid['train']:.3g}, test {fid['test']:.3g}")
        for stage in sorted((run / "audit" / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime):
            print(f"  {stage.stem:<12}{json.loads(stage.read_text())['seconds']:>8.1f} s")
    finally:
        if args.keep:
            print(f"clone kept at {clone}")
        else:
            shutil.rmtree(clone)


if __name__ == "__main__":
    main()
