"""``diffaudit audit``: every stage of the audit into one run directory, resumable, with a dry run.

Stages, in order: prepare, train, classifiers, sample, count, tprime, nll, fid, utility (class-conditional
models only), report. The whole audit's config
(:class:`AuditConfig`) is written to ``<run>/audit.json`` first; a run directory holds one audit, and another
config is refused with the sections that differ. Each finished stage writes ``<run>/audit/stages/<stage>.json``
(its config hash, the hashes of the stages it depends on, its wall time) last, atomically: a stage whose record
matches is skipped, so a killed audit continues at the stage it was in. Training resumes from its last
checkpoint and sampling from its first missing shard; the other stages restart. Every stage is seeded, so
results.json of a resumed audit equals that of an uninterrupted one (wall times live in the stage records and
in ``<run>/audit/audit.log``, never in results.json).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import (  # noqa: F401  (AuditConfig, TPrimeConfig, NLLConfig, FIDConfig are re-exported)
    CLASSIFIER_PRESETS,
    AuditConfig,
    ExtractorConfig,
    FIDConfig,
    NLLConfig,
    PrepareConfig,
    SampleConfig,
    TPrimeConfig,
    audit_from_dict,
    get_preset,
    to_dict,
)
from ..errors import DiffauditError
from ..extras import require
from ..io import config_hash, read_json, write_json
from ..parallel import processes

STAGES = ("prepare", "train", "classifiers", "sample", "count", "tprime", "nll", "fid", "utility", "report")
PARALLEL_STAGES = ("train", "sample")  # data-parallel under accelerate; the others run in the main process
DEPENDS = {"prepare": (), "train": ("prepare",), "classifiers": ("prepare",), "sample": ("train",),
           "count": ("sample", "classifiers"), "tprime": ("train", "classifiers", "count"),
           "nll": ("train",), "fid": ("sample",), "utility": ("sample",),
           "report": ("count", "tprime", "nll", "fid", "utility")}


def _audit_preset(name: str) -> AuditConfig:
    if name == "cpu-demo":
        # About ten minutes on 2 CPU cores (see the README's benchmark): 16 BreastMNIST images, a short training
        # that already memorises them, 256 samples with 100 Euler-Maruyama steps, coarse t' grid, few NLL images.
        cpu = get_preset("cpu")
        return AuditConfig(
            prepare=PrepareConfig(dataset="breastmnist", n_train=16, seed=0),
            model=cpu.model,
            train=dataclasses.replace(cpu.train, steps=1250, checkpoint_every=250),
            # c_p with AugMix severity 1 and a cosine learning rate: with severity 3 and a constant rate, 10 such
            # epochs found 0 of 200 copies of x_p; this finds 100/100 at noise std 0-0.1 with 0 false positives on
            # the 156 test images (README: the cpu-demo benchmark)
            c_p=dataclasses.replace(CLASSIFIER_PRESETS["cpu"]["c_p"], max_epochs=20, patience=20, epoch_size=512,
                                    val_size=256, augmix_severity=1, lr_schedule="cosine"),
            c_id=dataclasses.replace(CLASSIFIER_PRESETS["cpu"]["c_id"], max_epochs=6, patience=3, epoch_size=512,
                                     val_size=256),
            sample=SampleConfig(n=256, steps=100, batch_size=128),
            tprime=TPrimeConfig(M=8, resolution=0.05, steps=100),
            nll=NLLConfig(n_train=8, n_test=8, x_p_repeats=4, rtol=1e-4, atol=1e-4),
            fid=FIDConfig(domain=ExtractorConfig(steps=60)),
        )
    if name == "cpu":
        # The README's BreastMNIST N_D = 32 audit: about an hour on 2 CPU cores.
        cpu = get_preset("cpu")
        return AuditConfig(prepare=PrepareConfig(dataset="breastmnist", n_train=32, seed=0), model=cpu.model,
                           train=cpu.train, sample=SampleConfig(n=512, steps=250),
                           tprime=TPrimeConfig(M=16, steps=250), nll=NLLConfig(n_train=32, n_test=32),
                           fid=FIDConfig(domain=ExtractorConfig(steps=300)))
    if name == "paper":
        # Sec. 5.3 and App. A: 30 000 steps, 150 000 samples, M = 16, ResNet50 classifiers; for a GPU.
        paper = get_preset("paper")
        return AuditConfig(prepare=PrepareConfig(dataset="breastmnist", n_train=None, channels=3, seed=0),
                           model=paper.model, train=paper.train, c_p=CLASSIFIER_PRESETS["paper"]["c_p"],
                           c_id=CLASSIFIER_PRESETS["paper"]["c_id"],
                           sample=dataclasses.replace(paper.sample, n=150_000),
                           tprime=TPrimeConfig(M=16, steps=1000), nll=NLLConfig(n_train=1000, n_test=1000, batch_size=250),
                           fid=FIDConfig(domain=ExtractorConfig(steps=3000, batch_size=128)))
    raise DiffauditError(f"unknown audit preset '{name}'; choose one of {', '.join(AUDIT_PRESETS)}")


AUDIT_PRESETS = ("cpu-demo", "cpu", "paper")


def get_audit_preset(name: str, **overrides: Any) -> AuditConfig:
    """A preset with top-level overrides, e.g. ``prepare={"n_train": 64}`` or ``sample={"n": 1000}``."""
    return apply_overrides(_audit_preset(name), **overrides)


def apply_overrides(cfg: AuditConfig, **overrides: dict[str, Any] | None) -> AuditConfig:
    """``cfg`` with the non-None settings of each section replaced, e.g. ``sample={"n": 1000, "seed": None}``."""
    for section, changes in overrides.items():
        changes = {k: v for k, v in (changes or {}).items() if v is not None}
        if changes:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
    return cfg


def check_audit_config(cfg: AuditConfig) -> None:
    """Refuse a config whose names or paths cannot work, before any stage runs (``--dry-run`` included). Types and
    ranges were checked when the config was built (:class:`~diffaudit.config.Checked`); this checks what the
    registries, the installed extras and the file system decide: samplers, the SDE, classifier architectures, the
    SAF shape, the Inception weights and a pretrained model."""
    # imported here, not at the top: the registries pull in torchvision, which `diffaudit --help` does not need
    from ..adversary.classifiers import ARCHS
    from ..data.fingerprint import SHAPES
    from ..diffusion.samplers import get_sampler
    from ..diffusion.sde import make_sde
    from .fid import find_inception_weights

    make_sde(cfg.sde)
    get_sampler(cfg.sample.sampler)
    get_sampler(cfg.tprime.sampler)
    for name in ("c_p", "c_id"):
        if getattr(cfg, name).arch not in ARCHS:
            raise DiffauditError(f"{name}.arch '{getattr(cfg, name).arch}' is unknown; choose one of {', '.join(ARCHS)}")
    if cfg.prepare.saf_shape not in SHAPES:
        raise DiffauditError(f"prepare.saf_shape '{cfg.prepare.saf_shape}' is unknown; choose one of {', '.join(SHAPES)}")
    weights = find_inception_weights(cfg.fid.inception_weights) if cfg.fid.extractor != "domain" else None
    if cfg.fid.extractor == "inception" or weights is not None:
        require("torch_fidelity", "the Inception FID (or set --fid-extractor domain)")
    if cfg.dp is not None:
        require("opacus", "DP-SGD training")
    for pretrained in {cfg.pretrained, cfg.dp.pretrained if cfg.dp else None} - {None}:
        if not (Path(pretrained) / "model.safetensors").is_file():
            raise DiffauditError(f"no finished model to start from in {pretrained}; give the train/ folder of a "
                                 "finished run")


# ---- the run ----------------------------------------------------------------------------------------------
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


def stage_config(cfg: AuditConfig, stage: str) -> dict:
    """The part of the audit config a stage's artefact depends on (besides the stages before it)."""
    c = json.loads(json.dumps(to_dict(cfg)))
    return {"prepare": {"prepare": c["prepare"]},
            "train": {"model": c["model"], "train": c["train"], "sde": c["sde"], "dp": c["dp"], "pretrained": c["pretrained"]},
            "classifiers": {"c_p": c["c_p"], "c_id": c["c_id"]},
            "sample": {"sample": c["sample"]},
            "count": {"detector": c["detector"]},
            "tprime": {"tprime": c["tprime"], "detector": c["detector"]},
            "nll": {"nll": c["nll"]},
            "fid": {"fid": c["fid"]},
            "utility": {"classifier": c["fid"]["domain"]},
            "report": {}}[stage]


def stage_keys(cfg: AuditConfig) -> dict[str, str]:
    keys: dict[str, str] = {}
    for stage in STAGES:
        keys[stage] = config_hash({"config": stage_config(cfg, stage), "after": [keys[d] for d in DEPENDS[stage]]})
    return keys


def _keys(ctx: Context) -> dict[str, str]:
    """Stage keys of this run; a sweep's shared FID extractor is part of the fid stage's key."""
    keys = stage_keys(ctx.cfg)
    if ctx.shared_extractor is not None:
        where = os.path.relpath(Path(ctx.shared_extractor).resolve(), ctx.run.resolve())
        keys["fid"] = config_hash({"fid": keys["fid"], "extractor": where})
        keys["report"] = config_hash({"report": keys["report"], "fid": keys["fid"]})
    return keys


def _record_path(run: Path, stage: str) -> Path:
    return run / "audit" / "stages" / f"{stage}.json"


def stage_done(run: Path, stage: str, key: str) -> bool:
    path = _record_path(run, stage)
    return path.exists() and read_json(path).get("key") == key


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _diff(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return out


def check_run_dir(run: Path, cfg: AuditConfig) -> None:
    """Refuse a run directory that holds another audit, naming what differs."""
    path = run / "audit.json"
    if not path.exists():
        if (run / "manifest.json").exists():
            raise DiffauditError(f"{run} holds a run made stage by stage, not by 'diffaudit audit'; use another --run-dir")
        return
    new = json.loads(json.dumps(to_dict(cfg)))
    differs = _diff(read_json(path), new)
    if differs:
        raise DiffauditError(f"{run} holds an audit with other settings ({'; '.join(differs[:3])}"
                             f"{'; ...' if len(differs) > 3 else ''}); use another --run-dir")


def _file_logger(run: Path) -> logging.Logger:
    logger = logging.getLogger(f"diffaudit.audit.{run.resolve()}")
    if not logger.handlers:
        (run / "audit").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run / "audit" / "audit.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def run_audit(ctx: Context, *, stop_after: str | None = None) -> dict:
    """Run the audit's stages that are not done yet; returns results.json."""
    run, cfg = ctx.run, ctx.cfg
    if stop_after is not None and stop_after not in STAGES:
        raise DiffauditError(f"unknown stage '{stop_after}'; the stages are {', '.join(STAGES)}")
    check_audit_config(cfg)
    procs = processes(ctx.device)
    if cfg.dp is not None and procs.world > 1:
        raise DiffauditError("a DP-SGD audit runs in one process (its sampling, noise and accountant are not split "
                             "across ranks); start it without accelerate launch/torchrun")
    check_run_dir(run, cfg)
    procs.barrier()
    if procs.main:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / "audit.json", to_dict(cfg))
    logger = _file_logger(run) if procs.main else None
    say = ctx.log

    def log(msg: str) -> None:
        if logger is not None:
            logger.info(msg)
            say(msg)

    ctx = dataclasses.replace(ctx, log=log, progress=ctx.progress and procs.main)
    keys = _keys(ctx)
    for stage in STAGES:
        done = stage_done(run, stage, keys[stage])
        procs.barrier()  # every process has decided before the main one records anything
        if done:
            log(f"[{stage}] done earlier; kept")
        elif procs.main or stage in PARALLEL_STAGES:
            log(f"[{stage}] starting" + (f" on {procs.world} processes" if stage in PARALLEL_STAGES and procs.world > 1 else ""))
            t0 = time.perf_counter()
            summary = RUNNERS[stage](ctx) or {}
            seconds = time.perf_counter() - t0
            if procs.main:
                write_json(_record_path(run, stage), {"stage": stage, "key": keys[stage], "seconds": round(seconds, 2),
                                                      "config": stage_config(cfg, stage), "summary": summary})
            log(f"[{stage}] finished in {seconds:.1f} s" + (f": {_brief(summary)}" if summary else ""))
        procs.barrier()
        if stage == stop_after:
            break
    return read_json(run / "results.json") if (run / "results.json").exists() else {}


def _brief(summary: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())


# ---- stages -----------------------------------------------------------------------------------------------
def _prepare(ctx: Context) -> dict:
    from ..data.prepare import prepare_run

    m = prepare_run(ctx.run, ctx.cfg.prepare, data_root=ctx.data_root, log=ctx.log)
    return {"n_train": m["n_train"]}


def _train(ctx: Context) -> dict:
    from ..data.prepare import build_training_set, load_manifest, training_labels
    from ..diffusion.sde import make_sde
    from ..training.loop import train

    manifest = load_manifest(ctx.run)
    images = build_training_set(manifest, data_root=ctx.data_root)
    labels = training_labels(manifest, data_root=ctx.data_root) if ctx.cfg.model.num_classes else None
    if ctx.cfg.dp is not None:
        from ..privacy.dpsgd import train_dp

        dp = dataclasses.replace(ctx.cfg.dp, pretrained=ctx.cfg.pretrained or ctx.cfg.dp.pretrained)
        train_dp(ctx.run / "train", images, model_cfg=ctx.cfg.model, train_cfg=ctx.cfg.train, dp=dp,
                 sde=make_sde(ctx.cfg.sde), data_id=config_hash(manifest), device=ctx.device, progress=ctx.progress,
                 labels=labels)
        eps = read_json(ctx.run / "train" / "model.json")["dp"]["epsilon"]
        return {"steps": ctx.cfg.train.steps, **{f"epsilon_{k}": v for k, v in eps.items()}}
    train(ctx.run / "train", images, model_cfg=ctx.cfg.model, train_cfg=ctx.cfg.train, sde=make_sde(ctx.cfg.sde),
          data_id=config_hash(manifest), resume=True, device=ctx.device, progress=ctx.progress, labels=labels,
          init_from=ctx.cfg.pretrained)
    return {"steps": ctx.cfg.train.steps}


def _classifiers(ctx: Context) -> dict:
    from ..adversary.stage import train_classifiers

    if ctx.cfg.detector == "nn":
        return {"skipped": "detector nn"}
    m = train_classifiers(ctx.run, {"c_p": ctx.cfg.c_p, "c_id": ctx.cfg.c_id}, data_root=ctx.data_root,
                          device=ctx.device, progress=ctx.progress, log=ctx.log)
    return {"saf_accuracy": m["c_p"]["test_accuracy"], "id_accuracy": m["c_id"]["train_accuracy"]}


def _sample(ctx: Context) -> dict:
    from ..generate import sample_run

    sample_run(ctx.run, ctx.samples_name, ctx.cfg.sample, device=ctx.device, progress=ctx.progress)
    return {"n": ctx.cfg.sample.n}


def _count(ctx: Context) -> dict:
    from .count import run_count

    r = run_count(ctx.run, samples=ctx.samples_name, detector=ctx.cfg.detector, data_root=ctx.data_root,
                  device=ctx.device, progress=ctx.progress, log=ctx.log)
    return {"q": r["q"], "n": r["n_samples"], "expected_q": r["expected_q"], "p_value": r["p_value"]}


def _tprime(ctx: Context) -> dict:
    from .tprime import make_grid
    from .tprime_stage import run_tprime

    t = ctx.cfg.tprime
    r = run_tprime(ctx.run, detector=ctx.cfg.detector, grid=make_grid(t.resolution, t.t_max), m=t.M, seed=t.seed,
                   steps=t.steps, sampler=t.sampler, method=t.search, chance=t.chance, alpha=t.alpha,
                   data_root=ctx.data_root, device=ctx.device, progress=ctx.progress, log=ctx.log)
    return {"t_prime": r["value"], "t_prime_alpha": r["value_alpha"], "nfe": r["nfe"]}


def _nll(ctx: Context) -> dict:
    from .quality import run_nll

    r = run_nll(ctx.run, ctx.cfg.nll, data_root=ctx.data_root, device=ctx.device, progress=ctx.progress)
    return {k: r[k]["mean"] for k in ("x_p", "train", "test")}


def _fid(ctx: Context) -> dict:
    from .quality import run_fid

    r = run_fid(ctx.run, ctx.cfg.fid, ctx.run / "samples" / ctx.samples_name, data_root=ctx.data_root,
                device=ctx.device, progress=ctx.progress, extractor_dir=ctx.shared_extractor, log=ctx.log)
    return {"train": r["train"], "test": r["test"], "extractor": r["extractor"]["name"]}


def _utility(ctx: Context) -> dict:
    from .utility import run_utility

    if not ctx.cfg.model.num_classes:
        return {"skipped": "unconditional model (--class-conditional for the utility test)"}
    r = run_utility(ctx.run, ctx.run / "samples" / ctx.samples_name, ctx.cfg.fid.domain, data_root=ctx.data_root,
                    device=ctx.device, progress=ctx.progress)
    return {"synthetic_accuracy": r["synthetic"]["accuracy"], "real_accuracy": r["real"]["accuracy"]}


def _report(ctx: Context) -> dict:
    from .report import write_report

    paths = write_report(ctx.run)
    return {"html": str(paths["html"].relative_to(ctx.run)), "md": str(paths["md"].relative_to(ctx.run))}


RUNNERS: dict[str, Callable[[Context], dict | None]] = {
    "prepare": _prepare, "train": _train, "classifiers": _classifiers, "sample": _sample, "count": _count,
    "tprime": _tprime, "nll": _nll, "fid": _fid, "utility": _utility, "report": _report,
}


# ---- the plan (--dry-run) ---------------------------------------------------------------------------------
def _images_per_second(call: Callable[[], object], batch: int, dev) -> float:
    import torch

    with torch.no_grad():
        call()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            call()
            n += batch
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _probe_rates(cfg: AuditConfig, channels: int, device: str) -> dict[str, float]:
    """Images per second of one U-Net evaluation and of one classifier forward pass on this machine, measured."""
    import torch

    from ..adversary.classifiers import build_classifier
    from ..diffusion.unet import build_unet
    from ..training.loop import resolve_device

    dev = resolve_device(device)
    x = torch.zeros(32, channels, 28, 28, device=dev)
    t = torch.full((32,), 500.0, device=dev)
    unet = build_unet(cfg.model, channels=channels, size=28).to(dev).eval()
    classifier = build_classifier(cfg.c_p, channels).to(dev).eval()
    rates = {"unet": _images_per_second(lambda: unet(x, t), 32, dev),
             "classifier": _images_per_second(lambda: classifier(x), 32, dev)}
    return rates


def plan(ctx: Context) -> list[dict]:
    """Each stage with its state (done / to run), an estimate of its time from a one-second probe of this
    machine's speed, and of the disk it will use. Estimates, not promises: early stopping, the t' search and
    the ODE solver's step count vary."""
    from ..adversary.classifiers import build_classifier
    from ..diffusion.unet import build_unet

    cfg = ctx.cfg
    check_audit_config(cfg)
    check_run_dir(ctx.run, cfg)
    keys = _keys(ctx)
    channels = cfg.prepare.channels
    rates = _probe_rates(cfg, channels, ctx.device)
    unet, clf = rates["unet"], rates["classifier"]
    n_train = cfg.prepare.n_train or 1000
    pixels = channels * 28 * 28
    params = sum(p.numel() for p in build_unet(cfg.model, channels=channels, size=28).parameters())
    nfe_step = {"em": 1, "ode": 2, "pc": 1 + cfg.sample.corrector_steps}.get(cfg.sample.sampler, 1)
    grid = int(round(cfg.tprime.t_max / cfg.tprime.resolution))
    evaluations = grid if cfg.tprime.search == "exhaustive" else min(grid, 2 * math.ceil(math.log2(grid + 1)) + 2)
    est = {
        "prepare": (1.0, 1024),
        "train": (cfg.train.steps * cfg.train.batch_size * 3 / unet, params * 4 * (2 + 4 * cfg.train.keep_checkpoints)),
        "classifiers": (0.0 if cfg.detector == "nn" else
                        sum(c.max_epochs * (c.epoch_size + c.val_size / 3) * 3 / clf for c in (cfg.c_p, cfg.c_id)),
                        sum(4 * sum(p.numel() for p in build_classifier(c, channels).parameters()) for c in (cfg.c_p, cfg.c_id))),
        "sample": (cfg.sample.n * cfg.sample.steps * nfe_step / unet, cfg.sample.n * pixels),
        "count": (cfg.sample.n * 2 / clf + 5, 2e6),
        "tprime": (evaluations * cfg.tprime.M * cfg.tprime.steps * 0.5 / unet, 1e5),
        "nll": ((cfg.nll.x_p_repeats + cfg.nll.n_train + cfg.nll.n_test) * 150 * 3 / unet, 1e5),
        "fid": (cfg.fid.domain.steps * cfg.fid.domain.batch_size * 3 / clf + (cfg.sample.n + 2 * n_train) / clf, 2e6),
        "utility": ((2 * cfg.fid.domain.steps * cfg.fid.domain.batch_size * 3 / clf) if cfg.model.num_classes else 0.0, 2e7),
        "report": (5.0, 5e6),
    }
    return [{"stage": s, "done": stage_done(ctx.run, s, keys[s]), "seconds": est[s][0], "bytes": est[s][1]} for s in STAGES]


def format_plan(rows: list[dict], ctx: Context) -> str:
    todo = [r for r in rows if not r["done"]]
    lines = [f"audit plan for {ctx.run} (estimates from a one-second speed probe of this machine):",
             f"{'stage':<12}{'state':<10}{'time':>10}{'disk':>12}"]
    for r in rows:
        lines.append(f"{r['stage']:<12}{'done' if r['done'] else 'to run':<10}{_duration(r['seconds']):>10}"
                     f"{_size(r['bytes']):>12}")
    lines.append(f"{'total to run':<22}{_duration(sum(r['seconds'] for r in todo)):>10}"
                 f"{_size(sum(r['bytes'] for r in todo)):>12}")
    free = shutil.disk_usage(ctx.run if ctx.run.exists() else Path(".")).free
    lines.append(f"free disk: {_size(free)}")
    return "\n".join(lines)


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h")


def _size(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} GB"


def load_config(path: str | Path) -> AuditConfig:
    """The audit config in the JSON file ``path`` (a run's ``audit.json`` is one)."""
    path = Path(path)
    if not path.is_file():
        raise DiffauditError(f"no audit config at {path}; give the path of an audit config JSON (a run's audit.json "
                             "is one), or leave --config out to use --preset")
    return audit_from_dict(read_json(path))

