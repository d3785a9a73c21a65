"""The ``diffaudit`` command line. Every command works inside a run directory and never silently overwrites
an earlier result: a finished stage with the same config is reported and kept, a different config is refused.

Each command imports the stages it runs inside its function: importing every stage (diffusers, torchvision,
torchmetrics, scipy) doubles the start-up of ``diffaudit --help`` and of the commands that need few of them."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from . import __version__
from .adversary.classifiers import ARCHS
from .config import (
    ACCOUNTANTS,
    COMPILE_MODES,
    AUDIT_PRESETS,
    CLASSIFIER_PRESETS,
    DETECTORS,
    DP_FINETUNE,
    FID_EXTRACTORS,
    INCEPTION_FILE,
    PRECISIONS,
    PREDICTION_TYPES,
    PRESETS,
    STAGES,
    T_SEARCHES,
    PrepareConfig,
    SampleConfig,
    SequentialConfig,
    TPrimeConfig,
    apply_overrides,
    get_audit_preset,
    get_preset,
    override,
)
from .data.export import EXPORT_FORMATS
from .data.fingerprint import SHAPES
from .data.medmnist import SPLITS, open_dataset
from .diffusion.discrete import SCHEDULER_SAMPLERS
from .diffusion.samplers import SAMPLERS
from .diffusion.sde import SDES
from .errors import RELEASE_BLOCKED, VERIFY_FAILED, DiffauditError, ReleaseBlocked, VerifyFailed
from .io import check_name, read_json
from .parallel import shutdown_processes
from .runlock import check_run_dir, run_lock

MANIFEST = "manifest.json"
ALL_SAMPLERS = [*SAMPLERS, *SCHEDULER_SAMPLERS]
DEFAULT_AUDIT_PRESET = "cpu-demo"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- prepare -------------------------------------------------------------------------------------------
def cmd_prepare(args: argparse.Namespace) -> None:
    from .data.prepare import prepare_run

    cfg = PrepareConfig(
        dataset=args.dataset, split=args.split, n_train=args.n_train, channels=args.channels, seed=args.seed,
        fingerprint=not args.no_fingerprint, saf_shape=args.saf_shape, saf_radius=args.saf_radius,
        saf_intensity=args.saf_intensity, saf_width=args.saf_width,
    )
    prepare_run(Path(args.run_dir), cfg, data_root=args.data_root, download=args.download, log=_say)


def _load_manifest(run: Path) -> dict:
    from .data.prepare import load_manifest

    return load_manifest(run)


# ---- train ---------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> None:
    from .audit.stages import train_run
    from .digests import record_model_digests
    from .data.prepare import number_of_classes
    from .diffusion.sde import make_sde

    run = Path(args.run_dir)
    preset = get_preset(args.preset)
    train_cfg = override(preset.train, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         ema_decay=args.ema_decay, checkpoint_every=args.checkpoint_every)
    sde = make_sde(args.sde, **{k: v for k, v in (("beta_min", args.beta_min), ("beta_max", args.beta_max)) if v is not None})
    dp = _dp_config(args)
    manifest = _load_manifest(run)
    model_cfg = preset.model
    if args.class_conditional:
        model_cfg = override(model_cfg, num_classes=number_of_classes(manifest["dataset"], data_root=args.data_root))
    summary = train_run(run, model_cfg=model_cfg, train_cfg=train_cfg, sde=sde, dp=dp, resume=args.resume,
                        data_root=args.data_root, device=args.device, progress=not args.quiet)
    record_model_digests(run / "train")  # what 'diffaudit verify' checks the weights against
    path = run / "train" / "model.safetensors"
    if dp is not None:
        _say(f"DP model ({args.preset} preset, {train_cfg.steps} steps): epsilon at delta = {dp.delta:g}: "
             + ", ".join(f"{k[len('epsilon_'):]} {v:.3g}" for k, v in summary.items() if k.startswith("epsilon_"))
             + f" -> {path}")
        return
    _say(f"model ({args.preset} preset, {train_cfg.steps} steps, {sde.name} SDE) -> {path}")


def _dp_config(args: argparse.Namespace):
    """The DPConfig asked for by the --dp-* options, or None for non-private training."""
    from .config import DPConfig

    if args.dp_epsilon is None and args.dp_noise_multiplier is None:
        if args.dp_pretrained or args.dp_noise_multiplicity != 1 or args.dp_finetune != "all":
            raise DiffauditError("DP options need --dp-epsilon or --dp-noise-multiplier")
        return None
    return override(DPConfig(), epsilon=args.dp_epsilon, noise_multiplier=args.dp_noise_multiplier, delta=args.dp_delta,
                   max_grad_norm=args.dp_max_grad_norm, noise_multiplicity=args.dp_noise_multiplicity,
                   physical_batch_size=args.dp_physical_batch_size, accountant=args.dp_accountant,
                   finetune=args.dp_finetune, pretrained=args.dp_pretrained)


# ---- sample --------------------------------------------------------------------------------------------
def _run_model(args: argparse.Namespace, run: Path, check=None):
    """The model the command works on: ``--model`` (registered for the run once ``check(model)``, the command's own
    checks, passed), the run's registered one, or its own."""
    from .data.prepare import number_of_classes
    from .models.load import run_model

    manifest = _load_manifest(run)
    classes = (number_of_classes(manifest["dataset"], data_root=getattr(args, "data_root", None))
               if args.model is not None else None)
    return run_model(run, manifest=manifest, model=args.model, scheduler=args.scheduler,
                     prediction_type=args.prediction_type, num_classes=classes, device=args.device, check=check)


def _model_defaults(net) -> dict:
    """A discrete-time model samples with its own scheduler and the pipeline's number of steps unless told otherwise."""
    return {} if net.continuous else {"sampler": net.default_sampler, "steps": net.default_steps}


def cmd_sample(args: argparse.Namespace) -> None:
    from .generate import claim_folder, sample_run

    run = Path(args.run_dir)
    if args.name is not None:
        check_name(args.name)  # before the model is loaded
    if (args.target_rate is not None or args.alpha is not None) and not args.sequential:
        raise DiffauditError("--target-rate and --alpha say when the sequential count stops; add --sequential")
    seq = override(SequentialConfig(), target_rate=args.target_rate, alpha=args.alpha) if args.sequential else None
    base = get_preset(args.preset).sample if args.preset else SampleConfig()
    flags = dict(n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                 shard_size=args.shard_size, precision=args.precision, compile=args.compile)
    override(base, **flags)  # the flags' types and ranges, before the model is loaded
    if args.sequential and args.detector == "classifiers":  # its detectors too, before a model given is registered
        from .adversary.stage import load_detectors

        load_detectors(run, device="cpu")

    def configure(net):
        """The sampling config for ``net`` and its folder name, checked against the model and any samples already in
        that folder (before a model given with --model is registered; nothing is written)."""
        cfg = override(override(base, **_model_defaults(net)), **flags)
        name = args.name if args.name is not None else f"{cfg.sampler}{cfg.steps}-seed{cfg.seed}"
        claim_folder(run / "samples" / name, net, cfg, write=False)
        if args.sequential:
            from .audit.sequential import check_sequential_folder

            check_sequential_folder(run, name)
        return cfg, name

    net = _run_model(args, run, check=configure)
    cfg, name = configure(net)
    if args.sequential:
        from .audit.sequential import sequential_run

        r = sequential_run(run, name, cfg, target_rate=seq.target_rate, alpha=seq.alpha, detector=args.detector,
                           data_root=args.data_root, device=args.device, progress=not args.quiet, log=_say, net=net)
        _say(f"{r['n_samples']} of at most {cfg.n} samples under {run / 'samples' / name}; 'diffaudit count "
             f"--samples {name}' reports the anytime-valid interval")
        return
    out = sample_run(run, name, cfg, device=args.device, progress=not args.quiet, net=net)
    _say(f"{cfg.n} samples in shards under {out} (grid: {out / 'grid.png'})")


# ---- train-classifiers ----------------------------------------------------------------------------------
def cmd_train_classifiers(args: argparse.Namespace) -> None:
    from .adversary.stage import train_classifiers
    from .config import get_classifier_preset

    run = Path(args.run_dir)
    _load_manifest(run)
    preset = get_classifier_preset(args.preset)
    configs = {name: override(cfg, arch=args.arch, max_epochs=args.max_epochs, patience=args.patience,
                             epoch_size=args.epoch_size, batch_size=args.batch_size, seed=args.seed)
               for name, cfg in preset.items()}
    m = train_classifiers(run, configs, data_root=args.data_root, device=args.device, progress=not args.quiet, log=_say)
    real = m["false_positive_rate"]["heldout_real"]
    clean = m["true_positive_rate"]["copies_of_x_p"]["0"]
    _say(f"c_p test accuracy {m['c_p']['test_accuracy']:.3f}; c_id training accuracy {m['c_id']['train_accuracy']:.3f}; "
         f"false positives on {real['q']['n']} held-out real images: c_p {real['c_p']['positives']}, "
         f"c_id {real['c_id']['positives']}, q {real['q']['positives']}; copies of x_p detected by both: "
         f"{clean['q']['positives']}/{clean['q']['n']} -> {run / 'classifiers' / 'metrics.json'}")


# ---- count ---------------------------------------------------------------------------------------------
def cmd_count(args: argparse.Namespace) -> None:
    from .audit.count import run_count

    run = Path(args.run_dir)
    _load_manifest(run)
    r = run_count(run, samples=args.samples, detector=args.detector, control_samples=args.control_samples,
                  data_root=args.data_root, device=args.device, progress=not args.quiet, log=_say,
                  target_fpr=args.target_fpr)
    low, high = r["rate_ci95"]
    found = f"|c_p+| = {r['c_p']}, |c_id+| = {r['c_id']}, " if r["c_p"] is not None else "nearest-neighbour: "
    seq = r.get("sequential") if r.get("design") == "sequential" else None
    test = ("anytime-valid p-value for H0 p = 1/N_D" if seq else "H0 p = 1/N_D vs p < 1/N_D: p-value")
    interval = (f"95% confidence sequence (sequential count, stopped: {seq['reason']})" if seq else "95% interval")
    _say(f"{found}|q| = {r['q']} of N = {r['n_samples']} "
         f"(E|q| = {r['expected_q']:.3g} under full memorisation); {test} {r['p_value']:.3g}; "
         f"{interval} for the reproduction probability [{low:.3g}, {high:.3g}] -> {run / 'results.json'}")


# ---- tprime --------------------------------------------------------------------------------------------
def _positions(text: str | None) -> list[int] | None:
    if text is None or text == "all":
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DiffauditError(f"--images takes 'all' or comma-separated positions in the training set, got '{text}'") from None


def cmd_tprime(args: argparse.Namespace) -> None:
    from .audit.tprime import make_grid
    from .audit.tprime_stage import run_posthoc, run_tprime

    run = Path(args.run_dir)
    t = override(TPrimeConfig(), M=args.M, resolution=args.resolution, t_max=args.t_max, steps=args.steps,
                 sampler=args.sampler, search=args.search, alpha=args.alpha, chance=args.chance,
                 seed=args.seed)  # checked up front
    positions = _positions(args.images)
    if args.images is None:  # the chance level and the detectors too, before a model given is loaded and registered
        from .adversary.stage import load_detectors
        from .audit.tprime_stage import chance_level

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


# ---- nll, export ---------------------------------------------------------------------------------------
def cmd_nll(args: argparse.Namespace) -> None:
    from .audit.quality import run_nll
    from .config import NLLConfig

    run = Path(args.run_dir)
    cfg = override(NLLConfig(), n_train=args.n_train, n_test=args.n_test, x_p_repeats=args.x_p_repeats, rtol=args.rtol,
                   atol=args.atol, batch_size=args.batch_size, seed=args.seed)
    net = _run_model(args, run)
    r = run_nll(run, cfg, data_root=args.data_root, device=args.device, progress=not args.quiet, net=net)
    if r.get("skipped"):
        _say(f"NLL not computed: {r['skipped']}")
        return
    parts = ", ".join(f"{k} {r[k]['mean']:.3f}" for k in ("x_p", "train", "test") if r.get(k))
    _say(f"NLL (bits/dim): {parts} -> {run / 'results.json'}")


def cmd_export(args: argparse.Namespace) -> None:
    from .data.export import export_run

    run = Path(args.run_dir)
    if args.control:  # the control set (the same draw, x_i replaced, no SAF) for the control model's training
        from .config import PrepareConfig, from_dict
        from .data.prepare import prepare_run

        prepared = from_dict(PrepareConfig, _load_manifest(run)["config"], where="manifest config")
        control = run / "control"
        made = [p for p in (control / "manifest.json", control / "prepare", control) if not p.exists()]
        try:
            prepare_run(control, override(prepared, fingerprint=False), data_root=args.data_root, log=_say)
            r = export_run(control, fmt=args.format, out=args.out, channels=args.channels, size=args.size,
                           data_root=args.data_root)
        except BaseException:  # a refused export leaves no control set behind it
            import shutil

            for p in made:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()
            raise
        run = control
    else:
        r = export_run(run, fmt=args.format, out=args.out, channels=args.channels, size=args.size,
                       data_root=args.data_root)
    where = args.out or run / "export" / f"{r['format']}-{r['channels']}c-{r['size']}px"
    _say(f"{r['n_images']} training images as {r['format']} ({r['channels']} channels, {r['size']}x{r['size']}"
         f"{', ' + r['resize'] if r['resize'] else ''}; digest {r['digest']}) -> {where}")


# ---- audit, sweep, report -------------------------------------------------------------------------------
def _audit_config(args: argparse.Namespace):
    """The audit config of --preset or --config, with every override flag applied on top of it."""
    from .audit.stages import load_config

    if args.config and args.preset:
        raise DiffauditError("give --config or --preset, not both (the config file holds every setting)")
    base = load_config(args.config) if args.config else get_audit_preset(args.preset or DEFAULT_AUDIT_PRESET)
    if args.control is not None:
        base = override(base, control=args.control)
    if getattr(args, "target_rate", None) is not None and not getattr(args, "sequential", False):
        raise DiffauditError("--target-rate says when the sequential count stops; add --sequential")
    if getattr(args, "sequential", False):
        base = override(base, sequential=override(base.sequential or SequentialConfig(), target_rate=args.target_rate))
    return apply_overrides(
        base,
        prepare={"dataset": getattr(args, "dataset", None), "n_train": getattr(args, "n_train", None), "seed": args.seed},
        train={"steps": args.steps},
        sample={"n": args.n_samples, "precision": args.precision, "compile": args.compile},
        tprime={"M": args.M},
        fid={"extractor": args.fid_extractor, "inception_weights": args.inception_weights},
    )


def _class_conditional(cfg, dataset: str, data_root: str | None):
    """``cfg`` with its model conditioned on ``dataset``'s classes."""
    from .data.prepare import number_of_classes

    return override(cfg, model=override(cfg.model, num_classes=number_of_classes(dataset, data_root=data_root)))


def _with_model(cfg, args: argparse.Namespace):
    """``cfg`` auditing the model of ``--model`` (trained elsewhere): its sampler and steps are the model's own
    pipeline's unless --sampler / --sampling-steps say otherwise."""
    from .config import ExternalConfig
    from .models.load import sampling_defaults

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
    from .config import PrepareConfig, from_dict

    manifest = Path(args.run_dir) / MANIFEST
    named = args.config or any(getattr(args, k, None) is not None for k in ("dataset", "n_train", "seed"))
    if named or not manifest.is_file() or (Path(args.run_dir) / "audit.json").exists():
        return cfg
    prepared = from_dict(PrepareConfig, _load_manifest(Path(args.run_dir))["config"], where="manifest config")
    if prepared != cfg.prepare:
        _say(f"auditing the data {args.run_dir} was prepared with: {prepared.dataset}, N_D = "
             f"{_load_manifest(Path(args.run_dir))['n_train']}, seed {prepared.seed}")
    return override(cfg, prepare=prepared)


def cmd_audit(args: argparse.Namespace) -> None:
    from .audit.pipeline import run_audit
    from .audit.plan import format_plan, plan
    from .audit.report import detector_warning, excess_warning, verdict
    from .audit.stages import Context, check_audit_config, check_audit_data, check_models
    from .data.medmnist import dataset_path, resolve_root

    _check_limit(args.fail_above)
    _refuse_folder(args.run_dir, "--run-dir", REPORT_FOLDER_FILES, "the folder of a sweep or a comparison",
                   "its report.html is theirs: choose a new --run-dir")
    cfg = _audit_config(args)
    if args.detector:
        cfg = override(cfg, detector=args.detector)
    cfg = _with_model(cfg, args)
    if args.control_model is not None:
        from .config import ExternalConfig

        if not Path(args.control_model).exists():
            raise DiffauditError(f"no model at --control-model {args.control_model}; give the folder it was saved to")
        cfg = override(cfg, control_model=ExternalConfig(path=str(Path(args.control_model).resolve()),
                                                         scheduler=args.scheduler, prediction_type=args.prediction_type))
    cfg = _prepared_data(cfg, args)
    dp = _dp_config(args)
    if dp is not None:
        cfg = override(cfg, dp=dp)
    check_audit_config(cfg)  # names and extras first, then the data (run_audit checks it again before any stage)
    if args.dry_run:
        missing = not dataset_path(cfg.prepare.dataset, resolve_root(args.data_root)).is_file()
        if not (args.download and missing):  # a dry run downloads nothing
            check_audit_data(cfg, open_dataset(cfg.prepare.dataset, data_root=args.data_root))
    elif args.download:
        open_dataset(cfg.prepare.dataset, data_root=args.data_root, download_missing=True, log=_say)
    if args.class_conditional:
        cfg = _class_conditional(cfg, cfg.prepare.dataset, args.data_root)
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


def _n_trains(text: str) -> list[int | None]:
    out: list[int | None] = []
    for v in text.split(","):
        v = v.strip()
        if v == "all":
            out.append(None)
            continue
        try:
            out.append(int(v))
        except ValueError:
            raise DiffauditError(f"--n-train takes comma-separated sizes or 'all', got '{v}'") from None
    return out


def _epsilons(text: str) -> list[float | None]:
    out: list[float | None] = []
    for v in text.split(","):
        v = v.strip().lower()
        try:
            eps = None if v in ("inf", "none") else float(v)
        except ValueError:
            eps = -1.0
        if eps is not None and not (0 < eps < float("inf")):
            raise DiffauditError(f"--dp-epsilons takes comma-separated positive numbers or inf, got '{v}'")
        out.append(eps)
    return out


#: files that make a folder the combined report of a sweep or a comparison, which no audit may write into
REPORT_FOLDER_FILES = ("sweep.json", "privacy_sweep.json", "compare.json")


def _refuse_folder(folder: str, option: str, names: tuple[str, ...], what: str, fix: str) -> None:
    found = next((n for n in names if (Path(folder) / n).exists()), None)
    if found is not None:
        raise DiffauditError(f"{option} {folder} is {what} (it holds {found}); {fix}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .audit.compare import RUN_FILES
    from .audit.sweep import run_privacy_sweep, run_sweep

    _refuse_folder(args.out, "--out", RUN_FILES, "a run directory",
                   "a sweep writes its own run directory per cell and its report into --out: choose a new folder")
    cfg = _audit_config(args)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    n_trains = _n_trains(args.n_trains)
    epsilons = _epsilons(args.dp_epsilons) if args.dp_epsilons else None
    if epsilons is not None:
        if len(datasets) != 1 or len(n_trains) != 1:
            raise DiffauditError("a privacy sweep (--dp-epsilons) runs on one dataset and one N_D")
        open_dataset(datasets[0], data_root=args.data_root, download_missing=args.download, log=_say)
        if args.class_conditional:
            cfg = _class_conditional(cfg, datasets[0], args.data_root)
        cfg = override(cfg, prepare=override(cfg.prepare, dataset=datasets[0], n_train=n_trains[0]),
                       control=True if args.control is None else args.control)  # on: DP samples make detectors fire

        pretrain = {"yes": [True], "no": [False], "both": [False, True]}[args.pretrain]
        summary = run_privacy_sweep(Path(args.out), cfg, epsilons=epsilons, pretrain=pretrain,
                                    public_dataset=args.public_dataset or datasets[0], public_split=args.public_split,
                                    device=args.device, data_root=args.data_root, progress=not args.quiet, log=_say)
        _say(f"{len(summary['cells'])} audits; report: {Path(args.out) / 'report.html'} (and privacy_sweep.json)")
        return
    summary = run_sweep(Path(args.out), cfg, datasets=datasets, n_trains=n_trains,
                        class_conditional=args.class_conditional, device=args.device, data_root=args.data_root,
                        download=args.download, progress=not args.quiet, log=_say)
    _say(f"{len(summary['cells'])} audits; combined report: {Path(args.out) / 'report.html'} (and report.md, sweep.json)")


def _gate(run: Path, limit: float | None) -> None:
    """``--fail-above RATE``: refuse the release (exit 3) when the 95% upper limit of the reproduction rate exceeds
    RATE, or when there is no verdict to gate on. The limit is recomputed from the run's primary counts (q, N, N_D,
    the negatives), never read from a stored verdict, and impossible or inconsistent counts are refused (exit 2)."""
    if limit is None:
        return
    from .audit.report import current_verdict

    v = current_verdict(run)[1]
    if v is None:
        raise DiffauditError("--fail-above needs a verdict: the audit has not counted reproductions yet")
    hi = v["interval"][1]
    if hi > limit:
        raise ReleaseBlocked(f"release blocked: the reproduction rate is at most {hi:.4g} (95% upper limit, risk level "
                             f"{v['level']}), above --fail-above {limit:g}")
    _say(f"release gate passed: the reproduction rate is at most {hi:.4g} (95% upper limit, risk level {v['level']}), "
         f"not above {limit:g}")


def cmd_verify(args: argparse.Namespace) -> None:
    from .audit.verify import verify_run

    run = Path(args.run)
    if args.reseal_manifest:
        from .data.prepare import reseal_manifest

        if not run.is_dir():
            raise DiffauditError(f"{run} is not a run directory")
        with run_lock(run):
            manifest, resealed = reseal_manifest(run)
        _say(f"{run / 'manifest.json'} {'resealed' if resealed else 'was sealed already'}: digest {manifest['digest']}")
        return
    r = verify_run(run, data_root=args.data_root, device=args.device, progress=not args.quiet)
    _say(f"verified: {run} is what its records say (model {r['model']}; |q| = {r['q']} of N = {r['n']}"
         + (f"; risk level {r['level']}" if r["level"] else "") + ")")


def cmd_compare(args: argparse.Namespace) -> None:
    from .audit.compare import compare_runs

    summary = compare_runs([Path(r) for r in args.runs], Path(args.out))
    for r in summary["runs"]:
        _say(f"{r['run']}: {r['level']}, {r['q']} of {r['n']}, at most {1000 * r['interval'][1]:.3g} in 1 000")
    _say(f"comparison: {Path(args.out) / 'report.html'} (and report.md, compare.json)")


def _check_limit(limit: float | None) -> None:
    if limit is not None and not 0 <= limit <= 1:
        raise DiffauditError(f"--fail-above is a reproduction rate in [0, 1], got {limit}")


def _report_writes(args: argparse.Namespace) -> bool:
    """Plain ``report`` writes; ``--json`` and ``--fail-above`` only read, unless ``--write`` asks for both."""
    return args.write or not (args.json or args.fail_above is not None)


def cmd_report(args: argparse.Namespace) -> None:
    import json

    from .audit.report import current_verdict, verdict, write_report
    from .audit.verify import check_results

    run = Path(args.run_dir)
    _check_limit(args.fail_above)
    if not (run / "results.json").exists():
        raise DiffauditError(f"{run} has no results.json; run 'diffaudit count' (or 'diffaudit audit') first")
    check_results(read_json(run / "results.json"), run / "results.json")  # a wrong-typed section: one line
    paths = None
    if _report_writes(args):
        try:
            with run_lock(run):  # one writer: an audit or another report in this run directory is refused
                paths = write_report(run)
        except PermissionError as err:
            raise DiffauditError(f"cannot write into {run} ({err.strerror}: {err.filename}); 'report --json' and "
                                 "'report --fail-above' without --write only read") from None
        results = read_json(run / "results.json")
    else:  # read only: the verdict recomputed from results.json's counts, nothing written, no lock taken
        results, v = current_verdict(run)
        results = {**results, "verdict": v}
    if args.json:
        print(json.dumps(results.get("verdict"), indent=1))
    elif paths is not None:
        _say(verdict(results))
        _say(f"report: {paths['html']} and {paths['md']}")
    else:
        _say(verdict(results))
    _gate(run, args.fail_above)


# ---- bound ---------------------------------------------------------------------------------------------
def cmd_bound(args: argparse.Namespace) -> None:
    from .privacy.bounds import dpsgd_bound, eps_delta_bound, gdp_bound

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


# ---- parser --------------------------------------------------------------------------------------------
class _UsageError(Exception):
    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse with one ``error:`` line (and exit code 2) for a bad option, as for every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(self.prog, f"{message} (see '{self.prog} --help')")


def _example(text: str) -> str:
    return "example:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def numerics_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="the sampler's network numerics: fp32 (default; deterministic, TF32 off), tf32 (GPU tensor "
                        "cores) or bf16 (autocast); see the README's table of what each costs and gains")
    p.add_argument("--compile", default=None, choices=COMPILE_MODES,
                   help="torch.compile the sampler's network (default none; reduce-overhead adds CUDA graphs on a GPU)")


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

    class Formatter(argparse.RawDescriptionHelpFormatter):
        """Shows an option's default only where it has one (not "(default: None)" on required or optional ones)."""

        def _get_help_string(self, action: argparse.Action) -> str:
            text = action.help or ""
            if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text \
                    and action.option_strings:
                text += " (default: %(default)s)"
            return text

    def device_and_data(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--data-root", default=None, help="folder with the dataset's .npz")

    def dp_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("differential privacy (DP-SGD through Opacus; --batch-size is the expected logical batch)")
        g.add_argument("--dp-epsilon", type=float, default=None, help="train with DP-SGD to this epsilon (at --dp-delta)")
        g.add_argument("--dp-noise-multiplier", type=float, default=None, help="or with this noise multiplier sigma")
        g.add_argument("--dp-delta", type=float, default=1e-5, help="delta")
        g.add_argument("--dp-max-grad-norm", type=float, default=1.0, help="per-example clipping norm")
        g.add_argument("--dp-noise-multiplicity", type=int, default=1,
                       help="K noise draws averaged inside each example's loss before clipping")
        g.add_argument("--dp-physical-batch-size", type=int, default=64, help="largest forward pass")
        g.add_argument("--dp-accountant", default="prv", choices=ACCOUNTANTS,
                       help="the accountant that calibrates sigma (all three are reported)")
        g.add_argument("--dp-finetune", default="all", choices=DP_FINETUNE,
                       help="train all layers, or the attention layers only (with --dp-pretrained)")
        g.add_argument("--dp-pretrained", default=None, help="the train/ folder of a model to start from (public pretraining)")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run-dir", required=True, help="the run directory (created if missing)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    def model_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("a model trained elsewhere (diffusers, latent, MONAI; see the README)")
        g.add_argument("--model", default=None, help="the folder it was saved to (save_pretrained, a MONAI monai.json, "
                                                     "or a diffaudit train/); a run directory audits one model")
        g.add_argument("--scheduler", default=None, help="for a bare UNet folder: a scheduler folder or "
                                                         "scheduler_config.json, or ddpm/ddim for its defaults")
        g.add_argument("--prediction-type", default=None, choices=PREDICTION_TYPES,
                       help="the network's output (default: the scheduler config's)")

    p = sub.add_parser("prepare", formatter_class=Formatter, help="choose N_D training images and put the SAF on x_p",
                       description="Choose N_D training images of a MedMNIST split, put a synthetic anatomical "
                                   "fingerprint on one of them (x_p, Eq. 10), drop its clean original, and write "
                                   "manifest.json, from which the exact training set can be rebuilt.",
                       epilog=_example("diffaudit prepare --dataset breastmnist --n-train 32 --seed 0 --run-dir runs/b32"))
    common(p)
    p.add_argument("--dataset", default="breastmnist", help="MedMNIST flag (file <flag>.npz in the data root)")
    p.add_argument("--n-train", type=int, default=None, help="N_D, the training-set size (default: the whole split)")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="3 repeats grey images to RGB (as the paper)")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of images, of x_i and of the SAF location")
    p.add_argument("--no-fingerprint", action="store_true", help="the control set for false-positive rates: the same draw (same --seed and --n-train) with x_i replaced by another image and no SAF")
    p.add_argument("--saf-shape", default="disc", choices=list(SHAPES))
    p.add_argument("--saf-radius", type=float, default=3.0, help="pixels")
    p.add_argument("--saf-intensity", type=float, default=0.5, help="grey level in [0, 1]")
    p.add_argument("--saf-width", type=float, default=1.5, help="ring thickness in pixels (ring only)")
    p.add_argument("--data-root", default=None, help="folder with <dataset>.npz (default: $DIFFAUDIT_DATA, "
                                                      "../shared/data/medmnist, ~/.medmnist)")
    p.add_argument("--download", action="store_true", help="download the file if missing (needs internet)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", formatter_class=Formatter, help="train the score model on the prepared set",
                       description="Train a diffusers U-Net score model by denoising score matching (Eq. 4, "
                                   "lambda(t) = sigma_t^2) on the training set of manifest.json. Writes "
                                   "<run>/train/ with checkpoints (safetensors + JSON), loss.csv and the EMA model.",
                       epilog=_example("""
                            diffaudit train --run-dir runs/b32 --preset cpu --steps 3000
                            diffaudit train --run-dir runs/b32 --preset cpu --steps 6000 --resume   # continue / extend"""))
    common(p)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="model size and training schedule")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--sde", default="subvp", choices=list(SDES), help="subvp (the paper's), vp or ve")
    p.add_argument("--beta-min", type=float, default=None, help="VP/sub-VP beta_min (default 0.1)")
    p.add_argument("--beta-max", type=float, default=None, help="VP/sub-VP beta_max (default 20)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished or shorter run from its last checkpoint")
    p.add_argument("--class-conditional", action="store_true", help="condition the model on the dataset's class labels")
    dp_options(p)
    device_and_data(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", formatter_class=Formatter, help="generate images from the trained model",
                       description="Generate N images into uint8 npz shards under <run>/samples/<name>/; image i "
                                   "depends only on (seed, i). A killed run resumes at its first missing shard; "
                                   "a larger --n keeps the shards already made.",
                       epilog=_example("diffaudit sample --run-dir runs/b32 --n 1000 --sampler em --steps 500"))
    common(p)
    p.add_argument("--n", "--n-samples", dest="n", type=int, default=None,
                   help="number of images (default 64); spell it --n-samples after torchrun, which takes --n as its own")
    p.add_argument("--sampler", default=None, choices=ALL_SAMPLERS,
                   help="em (reverse-SDE Euler-Maruyama), pc (predictor-corrector), ode (probability flow, Heun); "
                        "a model trained with a scheduler: ddpm (ancestral) or ddim (default: its own)")
    p.add_argument("--steps", type=int, default=None, help="time steps (default: the preset's; a scheduler model: its "
                                                           "pipeline's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--shard-size", type=int, default=None)
    p.add_argument("--name", default=None, help="sub-folder under samples/ (default: <sampler><steps>-seed<seed>)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="sampling defaults")
    p.add_argument("--sequential", action="store_true",
                   help="draw and count one shard at a time and stop when an anytime-valid interval settles the "
                        "question (--n is then the most to draw); needs the run's detectors")
    p.add_argument("--target-rate", type=float, default=None, metavar="RATE",
                   help="with --sequential: stop once the rate is surely below or above RATE (default: stop once full "
                        "memorisation, 1/N_D, is rejected)")
    p.add_argument("--alpha", type=float, default=None, help="with --sequential: 1 - the confidence (default 0.05)")
    p.add_argument("--detector", default="classifiers", choices=DETECTORS, help="with --sequential: the detectors")
    numerics_options(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None, help="folder with the dataset's .npz (to check --model's classes)")
    model_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train-classifiers", formatter_class=Formatter, help="train the adversary c_p and c_id",
                       description="Train the fingerprint detector c_p and the identity classifier c_id (ResNets "
                                   "from scratch with AugMix; c_id with SAF-shaped masks and noise) for the prepared "
                                   "run, then measure their accuracies and error rates on held-out real images and "
                                   "on jittered, noisy copies of x_p. Writes <run>/classifiers/.",
                       epilog=_example("diffaudit train-classifiers --run-dir runs/b32 --preset cpu"))
    common(p)
    p.add_argument("--preset", default="cpu", choices=sorted(CLASSIFIER_PRESETS),
                   help="cpu: ResNet10, a few minutes on 2 cores; paper: ResNet50, patience 20")
    p.add_argument("--arch", default=None, choices=list(ARCHS), help="(default: the preset's)")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--patience", type=int, default=None, help="epochs without a better validation loss before stopping")
    p.add_argument("--epoch-size", type=int, default=None, help="training draws per epoch")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    device_and_data(p)
    p.set_defaults(func=cmd_train_classifiers)

    p = sub.add_parser("count", formatter_class=Formatter, help="count reproductions of x_p in the samples (Table 1)",
                       description="Classify the generated images with c_p and c_id (or the reference "
                                   "nearest-neighbour detector), count |c_p+|, |c_id+| and |q|, test H0: p = 1/N_D "
                                   "against p < 1/N_D, and write the 'reproduction' section of <run>/results.json "
                                   "with grids of the positives under <run>/count/.",
                       epilog=_example("""
                            diffaudit count --run-dir runs/b32
                            diffaudit count --run-dir runs/b32 --control-samples runs/b32-control/samples/em500-seed0"""))
    common(p)
    p.add_argument("--samples", default=None, help="folder under <run>/samples/ or a path (default: the only one)")
    p.add_argument("--detector", default="classifiers", choices=DETECTORS,
                   help="classifiers: q = c_p+ and c_id+; nn: the reference nearest-neighbour detector alone")
    p.add_argument("--control-samples", default=None,
                   help="samples of a control model (prepare --no-fingerprint): false-positive rates on generated images")
    p.add_argument("--target-fpr", type=float, default=None, metavar="RATE",
                   help="set each classifier's threshold to flag at most RATE of the held-out real images "
                        "(default: the trained thresholds, 0.5)")
    device_and_data(p)
    p.set_defaults(func=cmd_count)

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

    p = sub.add_parser("nll", formatter_class=Formatter, help="exact NLL of x_p, training and test images (Eq. 5)",
                       description="Bits per dimension of x_p, of other training images and of test images under the "
                                   "run's model, by the probability-flow ODE (a discrete-time model: the VP SDE of its "
                                   "schedule, see the README). Writes <run>/nll/nll.json and results.json's nll_bpd.",
                       epilog=_example("""
                            diffaudit nll --run-dir runs/b32
                            diffaudit nll --run-dir runs/ext --model runs/ext-model --n-train 16 --n-test 16"""))
    common(p)
    p.add_argument("--n-train", type=int, default=None, help="training images besides x_p (default 64)")
    p.add_argument("--n-test", type=int, default=None, help="test images (default 64)")
    p.add_argument("--x-p-repeats", type=int, default=None, help="dequantisation draws of x_p (default 8)")
    p.add_argument("--rtol", type=float, default=None, help="ODE solver tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=None, help="ODE solver tolerance (default 1e-5)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    device_and_data(p)
    model_options(p)
    p.set_defaults(func=cmd_nll)

    p = sub.add_parser("export", formatter_class=Formatter, help="write the prepared training set for other trainers",
                       description="Write the run's training set (x_p with its SAF, x_i left out) as PNG files in an "
                                   "ImageFolder layout with metadata.jsonl, or as a MedMNIST-style train.npz, with an "
                                   "export.json of every file's digest. Which image is x_p is not written. Copy "
                                   "export.json beside the trained model so the audit can confirm its training set.",
                       epilog=_example("""
                            diffaudit export --run-dir runs/ext --format imagefolder --out runs/ext-data
                            diffaudit export --run-dir runs/ext --format npz --channels 3 --size 64"""))
    common(p)
    p.add_argument("--format", default="imagefolder", choices=EXPORT_FORMATS)
    p.add_argument("--out", default=None, help="an empty or new folder (default: <run>/export/<format>-<C>c-<S>px)")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3], help="3 repeats grey to RGB (default: as prepared)")
    p.add_argument("--size", type=int, default=None, help="resize to SIZE x SIZE, PIL bicubic (default: 28, unchanged)")
    p.add_argument("--data-root", default=None, help="folder with the dataset's .npz")
    p.add_argument("--control", action="store_true",
                   help="write the control set instead (the same draw with x_i replaced and no SAF, prepared in "
                        "<run>/control/): train the control model on it with the same recipe, then audit with "
                        "--control-model")
    p.set_defaults(func=cmd_export)

    def audit_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default=None, choices=list(AUDIT_PRESETS),
                       help=f"{DEFAULT_AUDIT_PRESET} (the default): about eleven minutes on 2 CPU cores with its control model; cpu: about an "
                            "hour; paper: the paper's settings (GPU)")
        p.add_argument("--config", default=None, help="an audit config JSON (e.g. a run's audit.json) instead of "
                                                      "--preset; the flags below override its settings")
        p.add_argument("--seed", type=int, default=None, help="the prepare stage's seed (choice of images, x_i, SAF)")
        p.add_argument("--steps", type=int, default=None, help="diffusion training steps (default: the preset's)")
        p.add_argument("--n-samples", type=int, default=None, help="N, generated images to count (default: the preset's)")
        p.add_argument("--M", type=int, default=None, help="reverse runs per t in the t' search (default: the preset's)")
        p.add_argument("--fid-extractor", default=None, choices=FID_EXTRACTORS,
                       help="auto: Inception when its weights are found, else the domain extractor")
        p.add_argument("--inception-weights", default=None, help=f"path of {INCEPTION_FILE} (torch-fidelity's)")
        p.add_argument("--control", action=argparse.BooleanOptionalAction, default=None,
                       help="train a control model (same settings, DP included) on the control set and count its "
                            "samples: the verdict's negatives, as many as the audit's samples (default: on when "
                            "diffaudit trains the model; a model trained elsewhere takes --control-model)")
        p.add_argument("--sequential", action="store_true",
                       help="draw and count shards of sample.shard_size until an anytime-valid interval settles the "
                            "question; --n-samples is then the most to draw (default: the fixed-N count of the paper)")
        numerics_options(p)
        p.add_argument("--target-rate", type=float, default=None, metavar="RATE",
                       help="with --sequential: stop once the rate is surely below or above RATE (default: once full "
                            "memorisation is rejected)")
        device_and_data(p)
        p.add_argument("--download", action="store_true",
                       help="download the dataset with medmnist's downloader (MD5 checked) when no local copy is found")

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
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("sweep", formatter_class=Formatter, help="audits over datasets and N_D with a combined report",
                       description="One audit per (dataset, N_D) cell under --out, then report.html/report.md and "
                                   "sweep.json with Table 1 (reproductions against N_D), Table 2 (NLL, FID, SAF %, "
                                   "ID % per dataset) and the q_M(t) curves overlaid. Rerun to continue a killed sweep.",
                       epilog=_example("""
                            diffaudit sweep --out runs/table1 --datasets breastmnist --n-train 16,32,64
                            diffaudit sweep --out runs/table2 --preset paper --n-train all \\
                                --datasets breastmnist,retinamnist,pneumoniamnist
                            diffaudit sweep --out runs/eps --n-train 16 --dp-epsilons 1,10,inf --pretrain both \\
                                --public-dataset pneumoniamnist --public-split train --class-conditional"""))
    p.add_argument("--out", required=True, help="the sweep folder (created if missing)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--datasets", default="breastmnist", help="comma-separated MedMNIST flags")
    p.add_argument("--n-train", dest="n_trains", default="16,32", help="comma-separated N_D values, or 'all'")
    p.add_argument("--class-conditional", action="store_true", help="condition on the labels; adds the utility test")
    g = p.add_argument_group("privacy sweep (epsilon x pretraining on one dataset and N_D)")
    g.add_argument("--dp-epsilons", default=None, help="comma-separated epsilon targets, 'inf' for non-private, e.g. 1,10,inf")
    g.add_argument("--pretrain", default="both", choices=["yes", "no", "both"], help="public pretraining before training")
    g.add_argument("--public-dataset", default=None, help="the public pretraining dataset (default: the audited one)")
    g.add_argument("--public-split", default="val", choices=["train", "val", "test"],
                   help="its split (must differ from the private set)")
    audit_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", formatter_class=Formatter, help="(re)write report.html and report.md of a run",
                       description="Add the verdict (risk level) and the provenance to a run's results.json and write "
                                   "report.html (self-contained, prints to PDF) and report.md from it, holding the "
                                   "run's lock (another process writing in the run is refused). With --json or "
                                   "--fail-above it only reads: the verdict is recomputed from results.json's counts, "
                                   "nothing is written and no lock is taken, so a read-only copy of a run can be "
                                   "gated; --write writes the report as well. With --fail-above, exit 3 when the "
                                   "reproduction rate's 95%% upper limit exceeds RATE. Run 'diffaudit verify' first: "
                                   "the gate trusts the counts in results.json.",
                       epilog=_example("""
                            diffaudit report --run-dir runs/demo
                            diffaudit verify runs/demo && diffaudit report --run-dir runs/demo --fail-above 0.001
                            diffaudit report --run-dir runs/demo --json --fail-above 0.001 --write"""))
    p.add_argument("--run-dir", required=True)
    p.add_argument("--json", action="store_true", help="print the verdict as JSON on stdout (reads only)")
    p.add_argument("--fail-above", type=float, default=None, metavar="RATE",
                   help="exit 3 when the 95%% upper limit of the reproduction rate exceeds RATE (reads only)")
    p.add_argument("--write", action="store_true",
                   help="with --json or --fail-above: also write report.html, report.md and results.json's verdict "
                        "and provenance, under the run's lock, before printing and gating (plain report always writes)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("verify", formatter_class=Formatter,
                       help="check a run's artefacts against their recorded digests and recount its samples",
                       description="Recompute what can be recomputed from a run directory and compare: the manifest's "
                                   "digest; the SHA-256 of the model's weights, of every sample shard and of the "
                                   "detectors against the digests recorded when they were written; the audit's stage "
                                   "records against the files they name; the count (the counted shards through the "
                                   "stored detectors) against results.json; and results.json's interval, p-value and "
                                   "verdict against their recomputation from its counts. Exit 0 when everything "
                                   "agrees, 4 naming the first artefact that disagrees or has no recorded digest (a "
                                   "run made before digests were recorded), 2 for bad input. Writes nothing. Needs "
                                   "the dataset file the run was prepared from.",
                       epilog=_example("""
                            diffaudit verify runs/demo
                            diffaudit verify runs/demo && diffaudit report --run-dir runs/demo --fail-above 0.001
                            diffaudit verify runs/old --reseal-manifest   # a manifest from before sealed manifests"""))
    p.add_argument("run", metavar="RUN", help="the run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    device_and_data(p)
    p.add_argument("--reseal-manifest", action="store_true",
                   help="instead of verifying: add the digest to a manifest written by a diffaudit that did not seal "
                        "manifests yet (it must pass every other check; reseal only a manifest you trust)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("compare", formatter_class=Formatter, help="one report across audited runs",
                       description="One report across runs (diffaudit-trained and external models, datasets, N_D): a "
                                   "row per run with its risk level, rate, t', t'_alpha, FID and NLL gap, and the "
                                   "q_M(t) curves overlaid. Each run's risk level is recomputed from its counts. The "
                                   "runs are not changed.",
                       epilog=_example("diffaudit compare runs/demo runs/ext --out runs/compare"))
    p.add_argument("runs", nargs="+", help="run directories with results.json")
    p.add_argument("--out", required=True, help="the folder for the comparison: new, empty, or an earlier comparison's "
                                                "(rewritten); never a run directory or a folder inside a compared run")
    p.set_defaults(func=cmd_compare)

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
    return parser


#: The folder each writing command works in, which it holds locked while it runs (see :mod:`diffaudit.runlock`).
_LOCKED = {"prepare": "run_dir", "train": "run_dir", "sample": "run_dir", "train-classifiers": "run_dir",
           "count": "run_dir", "tprime": "run_dir", "nll": "run_dir", "export": "run_dir", "audit": "run_dir",
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
                "inception_weights": "--inception-weights", "dp_pretrained": "--dp-pretrained"}


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


if __name__ == "__main__":
    sys.exit(main())
