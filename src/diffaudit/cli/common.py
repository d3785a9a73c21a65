"""Helpers several commands share: messages, the run's manifest and model, DP settings, the audit config built
from the flags, and the release gate."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..config import CensusConfig, SequentialConfig, UtilityConfig, override
from ..errors import DiffauditError, ReleaseBlocked
from ..presets import apply_overrides, get_audit_preset
from .options import DEFAULT_AUDIT_PRESET, with_data_options

MANIFEST = "manifest.json"
#: files that make a folder the combined report of a sweep or a comparison, which no audit may write into
REPORT_FOLDER_FILES = ("sweep.json", "privacy_sweep.json", "compare.json")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load_manifest(run: Path) -> dict:
    from ..data.prepare import load_manifest

    return load_manifest(run)


def _dp_config(args: argparse.Namespace):
    """The DPConfig asked for by the --dp-* options, or None for non-private training."""
    from ..config import DPConfig

    if args.dp_epsilon is None and args.dp_noise_multiplier is None:
        if args.dp_pretrained or args.dp_noise_multiplicity != 1 or args.dp_finetune != "all":
            raise DiffauditError("DP options need --dp-epsilon or --dp-noise-multiplier")
        return None
    return override(DPConfig(), epsilon=args.dp_epsilon, noise_multiplier=args.dp_noise_multiplier, delta=args.dp_delta,
                   max_grad_norm=args.dp_max_grad_norm, noise_multiplicity=args.dp_noise_multiplicity,
                   physical_batch_size=args.dp_physical_batch_size, accountant=args.dp_accountant,
                   finetune=args.dp_finetune, pretrained=args.dp_pretrained)


# ---- the run's model -----------------------------------------------------------------------------------
def _run_model(args: argparse.Namespace, run: Path, check=None):
    """The model the command works on: ``--model`` (registered for the run once ``check(model)``, the command's own
    checks, passed), the run's registered one, or its own."""
    from ..data.prepare import labelled_classes
    from ..models.load import run_model

    manifest = _load_manifest(run)
    classes = labelled_classes(manifest, data_root=getattr(args, "data_root", None)) if args.model is not None else None
    return run_model(run, manifest=manifest, model=args.model, scheduler=args.scheduler,
                     prediction_type=args.prediction_type, num_classes=classes, device=args.device, check=check)


def _model_defaults(net) -> dict:
    """A discrete-time model samples with its own scheduler and the pipeline's number of steps unless told otherwise."""
    return {} if net.continuous else {"sampler": net.default_sampler, "steps": net.default_steps}


# ---- the audit config ----------------------------------------------------------------------------------
def _audit_config(args: argparse.Namespace):
    """The audit config of --preset or --config, with every override flag applied on top of it."""
    from ..audit.engine.stages import load_config

    if args.config and args.preset:
        raise DiffauditError("give --config or --preset, not both (the config file holds every setting)")
    base = load_config(args.config) if args.config else get_audit_preset(args.preset or DEFAULT_AUDIT_PRESET)
    if args.control is not None:
        base = override(base, control=args.control)
    if getattr(args, "target_rate", None) is not None and not getattr(args, "sequential", False):
        raise DiffauditError("--target-rate says when the sequential count stops; add --sequential")
    if getattr(args, "sequential", False):
        base = override(base, sequential=override(base.sequential or SequentialConfig(), target_rate=args.target_rate))
    utility = {k: getattr(args, a, None) for k, a in (("epsilons", "classifier_epsilons"), ("mix_ratio", "mix_ratio"),
                                                       ("seeds", "utility_seeds"))}
    if getattr(args, "dp_utility", False) or any(v is not None for v in utility.values()):
        base = override(base, utility=override(base.utility or UtilityConfig(), **utility))
    if getattr(args, "census", None) is not None:
        base = override(base, census=override(base.census or CensusConfig(), space=args.census))
    cfg = apply_overrides(
        base,
        prepare={"dataset": getattr(args, "dataset", None), "n_train": getattr(args, "n_train", None), "seed": args.seed},
        train={"steps": args.steps},
        sample={"n": args.n_samples, "precision": args.precision, "compile": args.compile,
                "memory_format": args.memory_format},
        tprime={"M": args.M},
        fid={"extractor": args.fid_extractor, "inception_weights": args.inception_weights},
    )
    prepare = with_data_options(cfg.prepare, args)
    if getattr(args, "dataset", None) is not None and prepare.data is not None:  # a MedMNIST flag replaces the
        prepare = dataclasses.replace(prepare, data=None)  # config file's own data
    return cfg if prepare == cfg.prepare else override(cfg, prepare=prepare)


def _class_conditional(cfg, data_root: str | None):
    """``cfg`` with its model conditioned on the classes of its data (a MedMNIST file or a --data source)."""
    from ..data.prepare import number_of_classes_for

    return override(cfg, model=override(cfg.model, num_classes=number_of_classes_for(cfg.prepare, data_root=data_root)))


# ---- folders and the release gate ----------------------------------------------------------------------
def _refuse_folder(folder: str, option: str, names: tuple[str, ...], what: str, fix: str) -> None:
    found = next((n for n in names if (Path(folder) / n).exists()), None)
    if found is not None:
        raise DiffauditError(f"{option} {folder} is {what} (it holds {found}); {fix}")


def _check_limit(limit: float | None) -> None:
    if limit is not None and not 0 <= limit <= 1:
        raise DiffauditError(f"--fail-above is a reproduction rate in [0, 1], got {limit}")


def _gate(run: Path, limit: float | None) -> None:
    """``--fail-above RATE``: refuse the release (exit 3) when the 95% upper limit of the reproduction rate exceeds
    RATE, or when there is no verdict to gate on. The limit is recomputed from the run's primary counts (q, N, N_D,
    the negatives), never read from a stored verdict, and impossible or inconsistent counts are refused (exit 2)."""
    if limit is None:
        return
    from ..audit.report.render import current_verdict

    v = current_verdict(run)[1]
    if v is None:
        raise DiffauditError("--fail-above needs a verdict: the audit has not counted reproductions yet")
    hi = v["interval"][1]
    if hi > limit:
        raise ReleaseBlocked(f"release blocked: the reproduction rate is at most {hi:.4g} (95% upper limit, risk level "
                             f"{v['level']}), above --fail-above {limit:g}")
    _say(f"release gate passed: the reproduction rate is at most {hi:.4g} (95% upper limit, risk level {v['level']}), "
         f"not above {limit:g}")
