"""``diffaudit audit``: every stage in one run directory, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DETECTORS, STAGES, override
from ..errors import DiffauditError
from ..io import read_json
from ..runlock import check_run_dir
from .common import (MANIFEST, REPORT_FOLDER_FILES, _audit_config, _check_limit, _class_conditional, _dp_config, _gate,
                     _load_manifest, _refuse_folder, _say)
from .options import (ALL_SAMPLERS, Formatter, _example, audit_options, common, data_given, data_options, dp_options,
                      model_options, saf_options)


def _with_model(cfg, args: argparse.Namespace):
    """``cfg`` auditing the model of ``--model`` (trained elsewhere): its sampler and steps are the model's own
    pipeline's unless --sampler / --sampling-steps say otherwise."""
    from ..config import ExternalConfig
    from ..models.load import sampling_defaults

    if args.model is None:
        if args.scheduler or args.prediction_type:
            raise DiffauditError("--scheduler and --prediction-type describe a model given with --model")
        if cfg.external is None and (args.sampler is not None or args.sampling_steps is not None):
            return override(cfg, sample=override(cfg.sample, sampler=args.sampler, steps=args.sampling_steps),
                            tprime=override(cfg.tprime, sampler=args.sampler, steps=args.sampling_steps))
        return cfg
    if not Path(args.model).exists():
        raise DiffauditError(f"no model at {args.model}; give the folder it was saved to")
    ext = ExternalConfig(path=str(Path(args.model).resolve()), scheduler=args.scheduler,
                         prediction_type=args.prediction_type)
    own = sampling_defaults(args.model, args.scheduler)
    sampler = args.sampler if args.sampler is not None else own.get("sampler")
    steps = args.sampling_steps if args.sampling_steps is not None else own.get("steps")
    return override(cfg, external=ext, sample=override(cfg.sample, sampler=sampler, steps=steps),
                    tprime=override(cfg.tprime, sampler=sampler, steps=steps))


def _prepared_data(cfg, args: argparse.Namespace):
    """A run prepared stage by stage (``prepare``, ``export``, a model trained elsewhere) is audited on the data it was
    prepared with, unless the command names other data (which the audit then refuses, naming the difference)."""
    from ..config import PrepareConfig, from_dict

    manifest = Path(args.run_dir) / MANIFEST
    named = args.config or data_given(args) or any(getattr(args, k, None) is not None
                                                    for k in ("dataset", "n_train", "seed"))
    if named or not manifest.is_file() or (Path(args.run_dir) / "audit.json").exists():
        return cfg
    prepared = from_dict(PrepareConfig, _load_manifest(Path(args.run_dir))["config"], where="manifest config")
    if prepared != cfg.prepare:
        _say(f"auditing the data {args.run_dir} was prepared with: {prepared.data or prepared.dataset}, N_D = "
             f"{_load_manifest(Path(args.run_dir))['n_train']}, seed {prepared.seed}")
    return override(cfg, prepare=prepared)


def _check_medmnist(cfg, args: argparse.Namespace) -> None:
    """The MedMNIST file of ``cfg``: downloaded with --download, checked against the audit with --dry-run (which
    downloads nothing). A source of the user's own (--data) is read by the prepare stage."""
    from ..audit.engine.stages import check_audit_data
    from ..data.medmnist import dataset_path, open_dataset, resolve_root

    p = cfg.prepare
    if p.data is not None:
        return
    if args.dry_run:
        missing = not dataset_path(p.dataset, resolve_root(args.data_root), p.size).is_file()
        if not (args.download and missing):  # a dry run downloads nothing
            check_audit_data(cfg, open_dataset(p.dataset, data_root=args.data_root, size=p.size))
    elif args.download:
        open_dataset(p.dataset, data_root=args.data_root, download_missing=True, size=p.size, log=_say)


def cmd_audit(args: argparse.Namespace) -> None:
    from ..audit.engine.pipeline import run_audit
    from ..audit.engine.plan import format_plan, plan
    from ..audit.report.render import detector_warning, excess_warning, verdict
    from ..audit.engine.stages import Context, check_audit_config, check_models

    _check_limit(args.fail_above)
    _refuse_folder(args.run_dir, "--run-dir", REPORT_FOLDER_FILES, "the folder of a sweep or a comparison",
                   "its report.html is theirs: choose a new --run-dir")
    cfg = _audit_config(args)
    if args.detector:
        cfg = override(cfg, detector=args.detector)
    cfg = _with_model(cfg, args)
    if args.control_model is not None:
        from ..config import ExternalConfig

        if not Path(args.control_model).exists():
            raise DiffauditError(f"no model at --control-model {args.control_model}; give the folder it was saved to")
        cfg = override(cfg, control_model=ExternalConfig(path=str(Path(args.control_model).resolve()),
                                                         scheduler=args.scheduler, prediction_type=args.prediction_type))
    cfg = _prepared_data(cfg, args)
    dp = _dp_config(args)
    if dp is not None:
        cfg = override(cfg, dp=dp)
    check_audit_config(cfg)  # names and extras first, then the data (run_audit checks it again before any stage)
    _check_medmnist(cfg, args)
    if args.class_conditional:
        cfg = _class_conditional(cfg, args.data_root)
    ctx = Context(run=Path(args.run_dir), cfg=cfg, device=args.device, data_root=args.data_root,
                  progress=not args.quiet, log=_say)
    if cfg.with_control:  # its folder, before any stage runs
        check_run_dir(ctx.run / "control")
    check_models(ctx)  # a model trained elsewhere: every config the stages will load, checked before any work
    if args.dry_run:
        print(format_plan(plan(ctx), ctx))
        return
    results = run_audit(ctx, stop_after=args.stop_after)
    if "reproduction" in results:
        _say(results["verdict"]["statement"] if results.get("verdict") else verdict(results))
        if results.get("verdict"):
            _say(f"risk level: {results['verdict']['level']}: {results['verdict']['release']}")
        metrics = ctx.run / "classifiers" / "metrics.json"
        for warning in (detector_warning(results, read_json(metrics) if metrics.exists() else {}),
                        excess_warning(results)):
            if warning:
                _say(warning)
    if (ctx.run / "report.html").exists():
        _say(f"report: {ctx.run / 'report.html'} (and report.md); results: {ctx.run / 'results.json'}")
    _gate(ctx.run, args.fail_above)


def add_parser(sub) -> None:
    p = sub.add_parser("audit", formatter_class=Formatter, help="the whole audit in one run directory, with a report",
                       description="Run every stage (prepare, train, classifiers, sample, count, tprime, nll, fid, "
                                   "utility, report) into one run directory. Finished stages are kept: rerun the same command "
                                   "after an interruption to continue. Writes results.json, report.html, report.md and "
                                   "audit/audit.log.",
                       epilog=_example("""
                            diffaudit audit --run-dir runs/demo                          # cpu-demo preset
                            diffaudit audit --run-dir runs/b64 --preset cpu --n-train 64 --dry-run
                            diffaudit audit --run-dir runs/paper --preset paper --dataset pneumoniamnist
                            diffaudit audit --run-dir runs/ext --model runs/ext-model   # a diffusers model"""))
    common(p)
    audit_options(p)
    p.add_argument("--dataset", default=None, help="MedMNIST flag (default: the preset's, breastmnist)")
    p.add_argument("--n-train", type=int, default=None, help="N_D (default: the preset's)")
    p.add_argument("--detector", default=None, choices=DETECTORS, help="(default: the preset's, classifiers)")
    p.add_argument("--dry-run", action="store_true", help="print the stages, their state, time and disk estimates; run nothing")
    p.add_argument("--stop-after", default=None, choices=list(STAGES), help="stop after this stage")
    p.add_argument("--class-conditional", action="store_true",
                   help="condition the model on the dataset's labels; adds the utility test (train on synthetic, test on real)")
    p.add_argument("--sampler", default=None, choices=ALL_SAMPLERS, help="sampler of the sample and tprime stages "
                                                                         "(default: the preset's; --model: its own)")
    p.add_argument("--sampling-steps", type=int, default=None, help="their steps (default: the preset's; --model: its "
                                                                    "pipeline's)")
    p.add_argument("--fail-above", type=float, default=None, metavar="RATE",
                   help="exit 3 when the 95%% upper limit of the reproduction rate exceeds RATE (a release gate)")
    p.add_argument("--control-model", default=None, metavar="PATH",
                   help="with --model: the control model, trained with the same recipe on the set 'diffaudit export "
                        "--control' writes; its samples are the verdict's negatives (same --scheduler and "
                        "--prediction-type)")
    model_options(p)
    dp_options(p)
    data_options(p)
    saf_options(p)
    p.set_defaults(func=cmd_audit)
