"""The package as a user installs it, without the Makefile: build the wheel, install it into a fresh venv on the
lowest torch and torchvision that pyproject.toml claims, run the entry point, and run the quick tests against it.
It builds what is committed (``git archive HEAD``).

    python benchmarks/lowest_versions.py                      # torch 2.13.0, torchvision 0.28.0
    python benchmarks/lowest_versions.py --torch-wheel torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl
    python benchmarks/lowest_versions.py --torch 2.14.1 --torchvision 0.29.1 --extras all,test

torchvision's wheels on the package index are built against the index's (CUDA) torch of the same version; a
``+cpu`` torch from another index does not load them ("operator torchvision::nms does not exist"), so give the
index's torch (``--torch-wheel`` for a downloaded file).

Prints each step's wall time and the test summary; exits non-zero when a step fails. Needs the package index (or
local wheels) for the pinned versions. The venv lives in a temporary folder and is removed afterwards.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Test files that need no long training: the maths, the command line, the robustness checks.
QUICK_TESTS = ["tests/test_sde.py", "tests/test_stats.py", "tests/test_bounds.py", "tests/test_tprime.py",
               "tests/test_fingerprint.py", "tests/test_data.py", "tests/test_cli.py", "tests/test_robustness.py"]


def step(name: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    print(f"{name:<44} {time.perf_counter() - t0:7.1f} s  (exit {done.returncode})", flush=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
        sys.exit(done.returncode)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", default="2.13.0", help="torch version (pyproject's lowest: 2.13)")
    parser.add_argument("--torchvision", default="0.28.0", help="the torchvision that goes with it")
    parser.add_argument("--torch-wheel", default=None, help="install torch from this wheel file instead")
    parser.add_argument("--extras", default="all,test")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diffaudit-lowest-") as tmp:
        tmp = Path(tmp)
        # the committed state, as a clone has it; building in a copy leaves no build/ folder in the checkout
        step("git archive HEAD", ["bash", "-c", f"mkdir -p {tmp / 'src'} && git -C {ROOT} archive HEAD | tar -x -C {tmp / 'src'}"])
        step("pip wheel (no dependencies)", [args.python, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"),
                                             str(tmp / "src")])
        wheel = next((tmp / "dist").glob("diffaudit-*.whl"))
        step("fresh venv", [args.python, "-m", "venv", str(tmp / "venv")])
        py = str(tmp / "venv" / "bin" / "python")
        torch_req = args.torch_wheel or f"torch=={args.torch}"
        step(f"torch {args.torch}, torchvision {args.torchvision}",
             [py, "-m", "pip", "install", "-q", torch_req, f"torchvision=={args.torchvision}"])
        step(f"{wheel.name}[{args.extras}]", [py, "-m", "pip", "install", "-q", f"{wheel}[{args.extras}]"])
        versions = step("versions", [py, "-c", "import torch, torchvision, diffaudit; "
                                               "print(torch.__version__, torchvision.__version__, diffaudit.__file__)"])
        print("   ", versions.stdout.strip())
        entry = tmp / "venv" / "bin" / "diffaudit"
        print("   ", step("diffaudit --version", [str(entry), "--version"]).stdout.strip())
        print("   ", step("diffaudit bound --kappa 0.01 --mu 1", [str(entry), "bound", "--kappa", "0.01", "--mu", "1"]
                          ).stdout.strip().splitlines()[-1])
        # from a copy of tests/ outside the checkout, so that the installed wheel is what gets imported
        shutil_copy = [py, "-c", f"import shutil; shutil.copytree({str(ROOT / 'tests')!r}, {str(tmp / 'tests')!r})"]
        step("copy the tests", shutil_copy)
        quick = [str(tmp / t) for t in QUICK_TESTS]
        done = step("quick tests against the installed wheel", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *quick],
                    cwd=tmp)
        print("   ", done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
