"""The audit's stages as one table: ``RUNNERS[stage](ctx)`` runs a stage of :mod:`diffaudit.audit.engine.pipeline` and returns
its one-line summary. Each runner takes the stage's part of the audit config and calls the function that does the
work; a newcomer finds stage ``X`` as ``_X`` here, and its work where that function points:

==============  ===================================================
stage           does its work in
==============  ===================================================
prepare         ``data.prepare.prepare_run``
train           ``training.loop.train`` (``privacy.dpsgd.train_dp`` under DP)
classifiers     ``adversary.stage.train_classifiers``
sample          ``generate.sample_run``
control         the three above on ``<run>/control/`` (``--control`` only)
count           ``audit.count.stage.run_count``
tprime          ``audit.tprime.stage.run_tprime``
nll             ``audit.quality.stage.run_nll``
fid             ``audit.quality.stage.run_fid``
utility         ``audit.quality.utility.run_utility``
report          ``audit.report.render.write_report``
==============  ===================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...adversary.classifiers import ARCHS
from ...adversary.stage import train_classifiers
from ...config import (MIN_N_TRAIN, SAF_SHAPES, AuditConfig, DPConfig, ModelConfig, SampleConfig, TrainConfig,
                      audit_from_dict)
from ...data.conditions import conditioned_model, training_conditions
from ...data.medmnist import MedMNISTFile
from ...data.prepare import build_training_set, load_manifest, prepare_run, training_labels
from ...diffusion.discrete import scheduler_class
from ...diffusion.samplers import get_sampler
from ...diffusion.sde import SDE, make_sde
from ...diffusion.networks import check_shape
from ...errors import DiffauditError
from ...extras import require
from ...generate import sample_run
from ...io import config_hash, read_json
from ...privacy.dpsgd import train_dp
from ...training.loop import train
from ..canaries.stage import run_canaries
from ..census.stage import run_census
from ..utility.stage import run_dp_utility
from ..count.sequential import sequential_run
from ..count.stage import run_count
from ..quality.fid import find_inception_weights
from ..quality.stage import run_fid, run_nll
from ..quality.utility import run_utility
from ..report.render import write_report
from ..tprime.search import make_grid
from ..tprime.stage import load_run_model, run_tprime


def check_audit_config(cfg: AuditConfig) -> None:
    """Refuse a config whose names or paths cannot work, before any stage runs (``--dry-run`` included). Types and
    ranges were checked when the config was built (:class:`~diffaudit.config.Checked`); this checks what the
    registries, the installed extras and the file system decide: samplers, the SDE, classifier architectures, the
    SAF shape, the Inception weights and a pretrained model."""
    make_sde(cfg.sde)
    check = get_sampler if cfg.external is None else scheduler_class  # a model trained elsewhere: its scheduler's
    check(cfg.sample.sampler)
    check(cfg.tprime.sampler)
    if cfg.external is not None and not Path(cfg.external.path).exists():
        raise DiffauditError(f"no model at {cfg.external.path}; give the folder it was saved to (--model)")
    for name in ("c_p", "c_id"):
        if getattr(cfg, name).arch not in ARCHS:
            raise DiffauditError(f"{name}.arch '{getattr(cfg, name).arch}' is unknown; choose one of {', '.join(ARCHS)}")
    if cfg.prepare.size is not None and cfg.external is None:  # a size the network cannot halve, before any stage
        size = cfg.prepare.size
        check_shape(cfg.model, (cfg.prepare.channels, *size) if isinstance(size, tuple) else (cfg.prepare.channels, size, size))
    if cfg.prepare.saf_shape not in SAF_SHAPES:
        raise DiffauditError(f"prepare.saf_shape '{cfg.prepare.saf_shape}' is unknown; choose one of {', '.join(SAF_SHAPES)}")
    weights = find_inception_weights(cfg.fid.inception_weights) if cfg.fid.extractor != "domain" else None
    if cfg.fid.extractor == "inception" or weights is not None:
        require("torch_fidelity", "the Inception FID (or set --fid-extractor domain)")
    if cfg.dp is not None:
        require("opacus", "DP-SGD training")
    for pretrained in {cfg.pretrained, cfg.dp.pretrained if cfg.dp else None} - {None}:
        if not (Path(pretrained) / "model.safetensors").is_file():
            raise DiffauditError(f"no finished model to start from in {pretrained}; give the train/ folder of a "
                                 "finished run")


def check_audit_data(cfg: AuditConfig, data: MedMNISTFile) -> None:
    """Refuse an audit whose training set cannot be drawn from ``data``: N_D beyond the split, or grey channels
    asked of an RGB dataset."""
    p = cfg.prepare
    images = data.images(p.split)
    if p.n_train is not None and p.n_train > len(images):
        raise DiffauditError(f"--n-train {p.n_train} does not fit {p.dataset}, whose {p.split} split has {len(images)} "
                             f"images; use a value between {MIN_N_TRAIN} and {len(images)}, or the whole split")
    if images.shape[1] == 3 and p.channels == 1:
        raise DiffauditError(f"{p.dataset} is RGB; prepare.channels must be 3 for it")


def check_models(ctx: "Context") -> None:
    """Every model trained elsewhere that the audit will load (``--model``, and a control model when one is given),
    loaded on the CPU and checked as its stages will check it: its configs and weights, its channels, image size and
    classes against the run, the sample and tprime stages' sampler, steps and t grid against its schedule, and that
    the run directory may audit it. Trains, samples and writes nothing (``--dry-run`` runs it too)."""
    from ...data.dataset import open_config_data
    from ...data.medmnist import dataset_path, resolve_root
    from ...data.prepare import labelled_classes, make_manifest
    from ...models.load import load_model, registration

    c = ctx.cfg
    given = [(c.external, ctx.run, c.prepare), (getattr(c, "control_model", None), ctx.run / CONTROL,
                                                c.prepare.control())]
    given = [(e, run, prep) for e, run, prep in given if e is not None]
    if not given:
        return
    data = (open_config_data(c.prepare, data_root=ctx.data_root) if c.prepare.data is None and
            dataset_path(c.prepare.dataset, resolve_root(ctx.data_root), c.prepare.size).is_file() else None)
    classes = int(np.asarray(data.labels("train")).max()) + 1 if data is not None else None
    if len(given) == 2 and Path(given[0][0].path).resolve() == Path(given[1][0].path).resolve():
        raise DiffauditError(f"--control-model {c.control_model.path} is the audited model (--model); the control model "
                             "is trained without x_p on the set 'diffaudit export --control' writes")
    for e, run, prep in given:
        manifest = load_manifest(run) if (run / "manifest.json").is_file() else None
        if manifest is None and c.prepare.data is not None:
            continue  # a --data source not scanned yet: the sample stage checks the model against its images
        if manifest is not None and c.prepare.data is not None:
            classes = labelled_classes(manifest, data_root=ctx.data_root)
        if manifest is None and data is not None:  # the one its prepare stage will write: its training set checked now
            manifest = make_manifest(prep, data)
        if manifest is not None:
            shape = tuple(manifest["image_shape"])
        else:
            size = data.images(c.prepare.split).shape[2:] if data is not None else (28, 28)
            shape = (c.prepare.channels, *map(int, size))
        net = load_model(e.path, image_shape=shape, num_classes=classes, scheduler=e.scheduler,
                         prediction_type=e.prediction_type, device="cpu")
        for s in (c.sample, c.tprime):
            net.check_sampler(s.sampler)
            net.nfe(s.sampler, s.steps)
        for t in make_grid(c.tprime.resolution, c.tprime.t_max):
            net.nfe(c.tprime.sampler, c.tprime.steps, t=t)
        own = net.continuous and Path(e.path).resolve() in (run.resolve(), (run / "train").resolve())
        if manifest is not None and not own:
            registration(run, net, {"path": e.path, "scheduler": e.scheduler, "prediction_type": e.prediction_type},
                         manifest)


def load_config(path: str | Path) -> AuditConfig:
    """The audit config in the JSON file ``path`` (a run's ``audit.json`` is one)."""
    path = Path(path)
    if not path.is_file():
        raise DiffauditError(f"no audit config at {path}; give the path of an audit config JSON (a run's audit.json "
                             "is one), or leave --config out to use --preset")
    return audit_from_dict(read_json(path))


@dataclass
class Context:
    run: Path
    cfg: AuditConfig
    device: str = "auto"
    data_root: str | None = None
    progress: bool = True
    log: Callable[[str], None] = print
    shared_extractor: Path | None = None  # the sweep's FID extractor folder, shared by its cells

    @property
    def samples_name(self) -> str:
        s = self.cfg.sample
        return f"{s.sampler}{s.steps}-seed{s.seed}"

    @property
    def conditional(self) -> bool:
        """Whether the audit trains a conditional model (classes, or --condition-on attributes) and so also samples
        it with x_p's own conditions."""
        c = self.cfg
        return c.external is None and bool(c.model.num_classes or c.prepare.condition)

    @property
    def sample_cfg(self) -> SampleConfig:
        """The sampling config of the main samples: a conditional model's drawn with the training set's conditions."""
        s = self.cfg.sample
        return dataclasses.replace(s, condition="training") if self.conditional and s.condition == "auto" else s


X_P_SAMPLES = "{}-x_p"  # the samples a conditional model draws with x_p's own class or attributes


def _prepare(ctx: Context) -> dict:
    m = prepare_run(ctx.run, ctx.cfg.prepare, data_root=ctx.data_root, log=ctx.log, progress=ctx.progress)
    return {"n_train": m["n_train"]}


def fit_score_model(train_dir: Path, images: np.ndarray, *, labels: np.ndarray | None, model_cfg: ModelConfig,
                    train_cfg: TrainConfig, sde: SDE, dp: DPConfig | None = None, pretrained: str | None = None,
                    data_id: str = "", resume: bool = True, device: str = "auto", progress: bool = True) -> dict:
    """Train a score model on ``images`` into ``train_dir``: with DP-SGD when ``dp`` is given, else non-privately;
    from the finished model in ``pretrained`` when given. Returns the stage summary (steps, and epsilon under DP)."""
    if dp is not None:
        dp = dataclasses.replace(dp, pretrained=pretrained or dp.pretrained)
        train_dp(train_dir, images, model_cfg=model_cfg, train_cfg=train_cfg, dp=dp, sde=sde, data_id=data_id,
                 device=device, progress=progress, labels=labels)
        eps = read_json(train_dir / "model.json")["dp"]["epsilon"]
        return {"steps": train_cfg.steps, **{f"epsilon_{k}": v for k, v in eps.items()}}
    train(train_dir, images, model_cfg=model_cfg, train_cfg=train_cfg, sde=sde, data_id=data_id, resume=resume,
          device=device, progress=progress, labels=labels, init_from=pretrained)
    return {"steps": train_cfg.steps}


def train_run(run: Path, *, model_cfg: ModelConfig, train_cfg: TrainConfig, sde: SDE, dp: DPConfig | None = None,
              pretrained: str | None = None, resume: bool = True, data_root: str | None = None, device: str = "auto",
              progress: bool = True) -> dict:
    """Train the score model of ``run`` on its prepared set (class-conditional when ``model_cfg.num_classes``,
    conditioned on the run's ``--condition`` attributes when it has them): the one way every command trains a run's
    model."""
    manifest = load_manifest(run)
    images = build_training_set(manifest, data_root=data_root)
    model_cfg = conditioned_model(model_cfg, manifest)
    labels = (training_conditions(manifest, lambda: training_labels(manifest, data_root=data_root))
              if model_cfg.num_classes or model_cfg.covariates else None)
    return fit_score_model(run / "train", images, labels=labels, model_cfg=model_cfg, train_cfg=train_cfg, sde=sde,
                           dp=dp, pretrained=pretrained, data_id=config_hash(manifest), resume=resume, device=device,
                           progress=progress)


def _external(ctx: Context) -> dict:
    """A model trained elsewhere: loaded, checked against the run's data and registered as the model the run audits."""
    e = ctx.cfg.external
    manifest = load_manifest(ctx.run)
    net = load_run_model(ctx.run, manifest, model=e.path, scheduler=e.scheduler, prediction_type=e.prediction_type,
                         data_root=ctx.data_root, device=ctx.device)
    data = net.described.get("training_data") or {}
    if not data.get("confirmed"):
        ctx.log(f"warning: {data.get('note', 'the training data of the model is not recorded')}")
    return {"external": net.model_id, "format": net.describe().get("format"),
            "training_data_confirmed": bool(data.get("confirmed"))}


def _train(ctx: Context) -> dict:
    c = ctx.cfg
    if c.external is not None:
        return _external(ctx)
    return train_run(ctx.run, model_cfg=c.model, train_cfg=c.train, sde=make_sde(c.sde), dp=c.dp,
                     pretrained=c.pretrained, data_root=ctx.data_root, device=ctx.device, progress=ctx.progress)


def _classifiers(ctx: Context) -> dict:
    if ctx.cfg.detector == "nn":
        return {"skipped": "detector nn"}
    m = train_classifiers(ctx.run, {"c_p": ctx.cfg.c_p, "c_id": ctx.cfg.c_id}, data_root=ctx.data_root,
                          device=ctx.device, progress=ctx.progress, log=ctx.log)
    return {"saf_accuracy": m["c_p"]["test_accuracy"], "id_accuracy": m["c_id"]["train_accuracy"]}


def _sample(ctx: Context) -> dict:
    if ctx.cfg.sequential is not None:
        return {"skipped": "sequential: the count stage draws shards until it is decided"}
    sample_run(ctx.run, ctx.samples_name, ctx.sample_cfg, device=ctx.device, progress=ctx.progress,
               data_root=ctx.data_root)
    if not ctx.conditional:
        return {"n": ctx.cfg.sample.n}
    sample_run(ctx.run, X_P_SAMPLES.format(ctx.samples_name), dataclasses.replace(ctx.cfg.sample, condition="x_p"),
               device=ctx.device, progress=ctx.progress, data_root=ctx.data_root)
    return {"n": ctx.cfg.sample.n, "n_x_p": ctx.cfg.sample.n}


CONTROL = "control"  # <run>/control/: the control run (prepare --no-fingerprint, same settings) of an audit


def _control(ctx: Context) -> dict:
    """A control model: the same training (DP and pretraining included) and sampling on the control set, which holds
    neither x_p nor x_i, so every detection among its samples is a false positive on generated images (App. B)."""
    c = ctx.cfg
    if not c.with_control:
        return {"skipped": "no control model (--no-control; for a model trained elsewhere, --control-model gives one)"}
    folder = ctx.run / CONTROL
    prepare_run(folder, c.prepare.control(), data_root=ctx.data_root, log=ctx.log,
                progress=ctx.progress, same_data=ctx.run)
    if c.control_model is not None:  # trained elsewhere on 'export --control', with the audited model's recipe
        m = c.control_model
        sample_run(folder, ctx.samples_name, c.sample, model=m.path, scheduler=m.scheduler,
                   prediction_type=m.prediction_type, data_root=ctx.data_root, device=ctx.device, progress=ctx.progress)
        return {"n": c.sample.n, "samples": f"{CONTROL}/samples/{ctx.samples_name}", "model": m.path}
    train_run(folder, model_cfg=c.model, train_cfg=c.train, sde=make_sde(c.sde), dp=c.dp, pretrained=c.pretrained,
              data_root=ctx.data_root, device=ctx.device, progress=ctx.progress)
    sample_run(folder, ctx.samples_name, ctx.sample_cfg, device=ctx.device, progress=ctx.progress,
               data_root=ctx.data_root)
    return {"n": c.sample.n, "samples": f"{CONTROL}/samples/{ctx.samples_name}"}


def _count(ctx: Context) -> dict:
    control = str(ctx.run / CONTROL / "samples" / ctx.samples_name) if ctx.cfg.with_control else None
    seq = ctx.cfg.sequential
    if seq is not None:
        sequential_run(ctx.run, ctx.samples_name, ctx.sample_cfg, target_rate=seq.target_rate, alpha=seq.alpha,
                       detector=ctx.cfg.detector, data_root=ctx.data_root, device=ctx.device, progress=ctx.progress,
                       log=ctx.log)
    r = run_count(ctx.run, samples=ctx.samples_name, detector=ctx.cfg.detector, data_root=ctx.data_root,
                  device=ctx.device, progress=ctx.progress, log=ctx.log, control_samples=control)
    out = {"q": r["q"], "n": r["n_samples"], "expected_q": r["expected_q"], "p_value": r["p_value"]}
    if ctx.conditional and seq is None:
        own = run_count(ctx.run, samples=X_P_SAMPLES.format(ctx.samples_name), detector=ctx.cfg.detector,
                        data_root=ctx.data_root, device=ctx.device, progress=ctx.progress, log=ctx.log,
                        section_name="reproduction_x_p")
        out.update(q_x_p=own["q"], expected_q_x_p=own["expected_q"], p_value_x_p=own["p_value"])
    return out


def _census(ctx: Context) -> dict:
    c = ctx.cfg.census
    if c is None:
        return {"skipped": "no census (--census counts the training images the samples copy)"}
    r = run_census(ctx.run, samples=ctx.samples_name, space=c.space, fpr=c.fpr, embedding_steps=c.embedding_steps,
                   data_root=ctx.data_root, progress=ctx.progress, log=ctx.log)
    return {"copies": r["copies"], "n": r["n_samples"], "n_copied": r["n_copied"], "level": r["verdict"]["level"]}


def _canaries(ctx: Context) -> dict:
    if not ctx.cfg.prepare.many_canaries:
        return {"skipped": "one canary (prepare --canaries m for the many-canary audit)"}
    r = run_canaries(ctx.run, samples=ctx.samples_name, data_root=ctx.data_root, progress=ctx.progress, log=ctx.log)
    return {"m": r["m"], "n": r["n_samples"], "reproduced": r["reproduced"],
            "epsilon_lower": r["epsilon"]["epsilon_lower"]}


def _tprime(ctx: Context) -> dict:
    t = ctx.cfg.tprime
    r = run_tprime(ctx.run, detector=ctx.cfg.detector, grid=make_grid(t.resolution, t.t_max), m=t.M, seed=t.seed,
                   steps=t.steps, sampler=t.sampler, method=t.search, chance=t.chance, alpha=t.alpha,
                   data_root=ctx.data_root, device=ctx.device, progress=ctx.progress, log=ctx.log)
    return {"t_prime": r["value"], "t_prime_alpha": r["value_alpha"], "nfe": r["nfe"]}


def _nll(ctx: Context) -> dict:
    r = run_nll(ctx.run, ctx.cfg.nll, data_root=ctx.data_root, device=ctx.device, progress=ctx.progress)
    return {k: r[k]["mean"] for k in ("x_p", "train", "test")}


def _fid(ctx: Context) -> dict:
    r = run_fid(ctx.run, ctx.cfg.fid, ctx.run / "samples" / ctx.samples_name, data_root=ctx.data_root,
                device=ctx.device, progress=ctx.progress, extractor_dir=ctx.shared_extractor, log=ctx.log)
    if r.get("skipped"):
        return {"skipped": r["skipped"]}
    return {"train": r["train"], "test": r["test"], "extractor": r["extractor"]["name"]}


def _utility(ctx: Context) -> dict:
    if ctx.cfg.external is not None and ctx.cfg.utility is None:
        return {"skipped": "a model trained elsewhere (the utility test trains diffaudit's class-conditional model)"}
    if not ctx.cfg.model.num_classes and ctx.cfg.external is None:
        if ctx.cfg.utility is not None:
            raise DiffauditError("the DP utility regimes need a class-conditional model: add --class-conditional")
        return {"skipped": "unconditional model (--class-conditional for the utility test)"}
    samples = ctx.run / "samples" / ctx.samples_name
    out = {}
    if ctx.cfg.external is None:
        r = run_utility(ctx.run, samples, ctx.cfg.fid.domain, data_root=ctx.data_root, device=ctx.device,
                        progress=ctx.progress)
        out = {"synthetic_accuracy": r["synthetic"]["accuracy"], "real_accuracy": r["real"]["accuracy"]}
    if ctx.cfg.utility is not None:
        d = run_dp_utility(ctx.run, samples, ctx.cfg.utility, data_root=ctx.data_root, device=ctx.device,
                           progress=ctx.progress, log=ctx.log)
        out["dp_winners"] = d["winners"]
    return out


def _report(ctx: Context) -> dict:
    paths = write_report(ctx.run)
    return {"html": str(paths["html"].relative_to(ctx.run)), "md": str(paths["md"].relative_to(ctx.run))}


RUNNERS: dict[str, Callable[[Context], dict | None]] = {
    "prepare": _prepare, "train": _train, "classifiers": _classifiers, "sample": _sample, "control": _control,
    "count": _count, "census": _census, "canaries": _canaries,
    "tprime": _tprime, "nll": _nll, "fid": _fid, "utility": _utility, "report": _report,
}


