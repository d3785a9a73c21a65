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
import os
import time
from pathlib import Path

from ..adversary.classifiers import ARCHS
from ..config import STAGES, AuditConfig, audit_from_dict, to_dict
from ..data.fingerprint import SHAPES
from ..diffusion.samplers import get_sampler
from ..diffusion.sde import make_sde
from ..errors import DiffauditError
from ..extras import require
from ..io import config_hash, read_json, write_json
from ..parallel import processes
from .fid import find_inception_weights
from .stages import RUNNERS, Context

PARALLEL_STAGES = ("train", "sample")  # data-parallel under accelerate; the others run in the main process
DEPENDS = {"prepare": (), "train": ("prepare",), "classifiers": ("prepare",), "sample": ("train",),
           "count": ("sample", "classifiers"), "tprime": ("train", "classifiers", "count"),
           "nll": ("train",), "fid": ("sample",), "utility": ("sample",),
           "report": ("count", "tprime", "nll", "fid", "utility")}


def check_audit_config(cfg: AuditConfig) -> None:
    """Refuse a config whose names or paths cannot work, before any stage runs (``--dry-run`` included). Types and
    ranges were checked when the config was built (:class:`~diffaudit.config.Checked`); this checks what the
    registries, the installed extras and the file system decide: samplers, the SDE, classifier architectures, the
    SAF shape, the Inception weights and a pretrained model."""
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


def stage_keys_of(run: Path, cfg: AuditConfig, shared_extractor: Path | None = None) -> dict[str, str]:
    """Stage keys of the audit in ``run``; a sweep's shared FID extractor is part of the fid stage's key."""
    keys = stage_keys(cfg)
    if shared_extractor is not None:
        where = os.path.relpath(Path(shared_extractor).resolve(), run.resolve())
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
    keys = stage_keys_of(run, cfg, ctx.shared_extractor)
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


def load_config(path: str | Path) -> AuditConfig:
    """The audit config in the JSON file ``path`` (a run's ``audit.json`` is one)."""
    path = Path(path)
    if not path.is_file():
        raise DiffauditError(f"no audit config at {path}; give the path of an audit config JSON (a run's audit.json "
                             "is one), or leave --config out to use --preset")
    return audit_from_dict(read_json(path))

