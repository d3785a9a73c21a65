"""The ``diffaudit`` command line. Every command works inside a run directory and never silently overwrites
an earlier result: a finished stage with the same config is reported and kept, a different config is refused.

One module per command holds its parser (``add_parser``) beside its handler (``cmd_<command>``); the option groups
several commands share are defined once in :mod:`.options`, the helpers in :mod:`.common`. Each command imports the
stages it runs inside its function: importing every stage (diffusers, torchvision, torchmetrics, scipy) doubles the
start-up of ``diffaudit --help`` and of the commands that need few of them."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import RELEASE_BLOCKED, VERIFY_FAILED, DiffauditError, ReleaseBlocked, VerifyFailed
from ..parallel import shutdown_processes
from ..runlock import check_run_dir, run_lock
from . import (audit, bound, canaries, census, classifiers, compare, count, export, nll, prepare, report, sample, sweep, tprime,
               train, utility, verify)
from .audit import _prepared_data, _with_model, cmd_audit
from .bound import cmd_bound
from .classifiers import cmd_train_classifiers
from .common import MANIFEST, _audit_config, _class_conditional, _dp_config, _gate, _load_manifest, _say
from .compare import cmd_compare
from .count import cmd_count
from .export import cmd_export
from .nll import cmd_nll
from .options import ALL_SAMPLERS, DEFAULT_AUDIT_PRESET, _example, _Parser, _UsageError, numerics_options
from .prepare import cmd_prepare
from .report import cmd_report
from .sample import cmd_sample
from .sweep import _epsilons, _n_trains, cmd_sweep
from .tprime import cmd_tprime
from .train import cmd_train
from .verify import cmd_verify

#: the commands in the order ``diffaudit --help`` lists them
COMMANDS = (prepare, train, sample, classifiers, count, census, canaries, tprime, nll, utility, export, audit, sweep, report,
            verify, compare, bound)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diffaudit",
        description="Audit a score-based diffusion model for reproduction of an identifiable training image.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_example("""
            diffaudit prepare --dataset breastmnist --n-train 32 --run-dir runs/demo
            diffaudit train --run-dir runs/demo --preset cpu
            diffaudit sample --run-dir runs/demo --n 256"""),
    )
    parser.add_argument("--version", action="version", version=f"diffaudit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


#: The folder each writing command works in, which it holds locked while it runs (see :mod:`diffaudit.runlock`).
_LOCKED = {"prepare": "run_dir", "train": "run_dir", "sample": "run_dir", "train-classifiers": "run_dir",
           "count": "run_dir", "census": "run_dir", "canaries": "run_dir", "utility": "run_dir", "tprime": "run_dir", "nll": "run_dir", "export": "run_dir", "audit": "run_dir",
           "sweep": "out"}


def _run(args: argparse.Namespace) -> None:
    dest = _LOCKED.get(args.command)
    if dest is None:
        args.func(args)
        return
    option = "--" + dest.replace("_", "-")
    if getattr(args, "dry_run", False):  # reads only
        check_run_dir(getattr(args, dest), option)
        args.func(args)
        return
    with run_lock(getattr(args, dest), option=option):
        args.func(args)


def _os_error(err: OSError) -> str:
    """One line for an error of the operating system: the path it is about, the cause and the fix."""
    import errno

    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    cause = err.strerror or " ".join(str(err).split()) or type(err).__name__
    no_write = "give a folder you can write to (or fix its permissions)"
    fix = {errno.ENAMETOOLONG: "use a shorter name (the file system limits a name to 255 bytes)",
           errno.EROFS: "the file system is read-only: give a --run-dir (or --out) on a writable one",
           errno.EACCES: no_write, errno.EPERM: no_write,
           errno.ENOSPC: "the disk is full: free space, or give a --run-dir on another disk",
           errno.EDQUOT: "the disk quota is exhausted: free space, or give a --run-dir on another disk",
           errno.ENOTDIR: "a part of the path is a file, not a folder: give another path",
           errno.EEXIST: "a file is in the way of a folder: give another path",
           }.get(err.errno, "check the path and the disk, then rerun")
    return f"{where}: {cause}; {fix}" if where else f"{cause}; {fix}"


#: the options that name a file or folder (dest: as written on the command line)
PATH_OPTIONS = {"run_dir": "--run-dir", "out": "--out", "run": "RUN", "runs": "RUN", "model": "--model",
                "control_model": "--control-model", "scheduler": "--scheduler", "config": "--config",
                "data_root": "--data-root", "samples": "--samples", "control_samples": "--control-samples",
                "inception_weights": "--inception-weights", "dp_pretrained": "--dp-pretrained", "data": "--data"}


def _empty_path(args: argparse.Namespace) -> str | None:
    """The first path option given as an empty string: an unset shell variable (``--run-dir "$RUN"``) would otherwise
    mean the current directory."""
    for dest, option in PATH_OPTIONS.items():
        values = getattr(args, dest, None)
        for v in values if isinstance(values, list) else [values]:
            if isinstance(v, str) and not v.strip():
                return option
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(f"{err.prog}: error: {err}", file=sys.stderr)
        return 2
    empty = _empty_path(args)
    if empty is not None:
        print(f"diffaudit {args.command}: error: {empty} is empty; give the path (is a shell variable unset?)",
              file=sys.stderr)
        return 2
    try:
        _run(args)
    except ReleaseBlocked as err:
        shutdown_processes(wait=False)
        print(f"diffaudit {args.command}: {err}", file=sys.stderr)
        return RELEASE_BLOCKED
    except VerifyFailed as err:
        shutdown_processes(wait=False)
        print(f"diffaudit {args.command}: {err}", file=sys.stderr)
        return VERIFY_FAILED
    except DiffauditError as err:
        shutdown_processes(wait=False)
        print(f"diffaudit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused: a name too long, a read-only or full disk, no permission
        shutdown_processes(wait=False)
        print(f"diffaudit {args.command}: error: {_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        shutdown_processes(wait=False)
        print(f"diffaudit {args.command}: interrupted; finished work is kept, rerun the same command "
              "(train: add --resume) to continue", file=sys.stderr)
        return 130
    shutdown_processes()
    return 0


__all__ = ["ALL_SAMPLERS", "COMMANDS", "DEFAULT_AUDIT_PRESET", "MANIFEST", "PATH_OPTIONS", "_audit_config",
           "_class_conditional", "_dp_config", "_empty_path", "_epsilons", "_gate", "_load_manifest", "_n_trains",
           "_os_error", "_prepared_data", "_run", "_say", "_with_model", "build_parser", "cmd_audit", "cmd_bound",
           "cmd_compare", "cmd_count", "cmd_export", "cmd_nll", "cmd_prepare", "cmd_report", "cmd_sample", "cmd_sweep",
           "cmd_train", "cmd_train_classifiers", "cmd_tprime", "cmd_verify", "main", "numerics_options"]
