"""The engine of ``diffaudit audit``: every stage of the audit into one run directory, resumable.

Stages, in order: prepare, train, classifiers, sample, control (a control model trained and sampled with the same
settings on the control set, or given for a model trained elsewhere; ``--no-control`` leaves it out), count, tprime, nll, fid, utility (class-conditional models only),
report. The whole audit's config
(:class:`AuditConfig`) is written to ``<run>/audit.json`` first; a run directory holds one audit, and another
config is refused with the sections that differ. Each finished stage writes ``<run>/audit/stages/<stage>.json``
(its config hash, the hashes of the stages it depends on, its wall time, and under ``files`` the SHA-256 of the
artefacts it wrote, which ``diffaudit verify`` checks: :mod:`diffaudit.audit.engine.verify`) last, atomically: a stage whose
record matches is skipped, so a killed audit continues at the stage it was in. Training resumes from its last
checkpoint and sampling from its first missing shard; the other stages restart. Every stage is seeded, so
results.json of a resumed audit equals that of an uninterrupted one (wall times live in the stage records and
in ``<run>/audit/audit.log``, never in results.json).

This module is the engine alone: stage keys, dependencies, records and resume. What each stage runs is the table in
:mod:`diffaudit.audit.engine.stages`; the dry run is :mod:`diffaudit.audit.engine.plan`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

from ...config import STAGES, AuditConfig, to_dict
from ...data.dataset import open_config_data
from ...data.prepare import load_manifest
from ...digests import record_model_digests
from ...errors import DiffauditError
from ...io import config_differences, config_hash, read_json, write_json
from ...models.load import EXTERNAL, run_model
from ...parallel import Processes, processes
from ...runlock import run_lock
from .stages import RUNNERS, Context, check_audit_config, check_audit_data
from .verify import stage_files

PARALLEL_STAGES = ("train", "sample")  # data-parallel under accelerate; the others run in the main process
DEPENDS = {"prepare": (), "train": ("prepare",), "classifiers": ("prepare",), "sample": ("train",),
           "control": ("prepare",), "count": ("sample", "classifiers", "control"), "census": ("sample",),
           "canaries": ("sample",), "tprime": ("train", "classifiers", "count"),
           "nll": ("train",), "fid": ("sample",), "utility": ("sample",),
           "report": ("count", "census", "canaries", "tprime", "nll", "fid", "utility")}


# ---- the run ----------------------------------------------------------------------------------------------
def stage_config(cfg: AuditConfig, stage: str) -> dict:
    """The part of the audit config a stage's artefact depends on (besides the stages before it)."""
    c = json.loads(json.dumps(to_dict(cfg)))
    return {"prepare": {"prepare": c["prepare"]},
            "train": ({"external": c["external"]} if c.get("external") else
                      {"model": c["model"], "train": c["train"], "sde": c["sde"], "dp": c["dp"], "pretrained": c["pretrained"]}),
            "classifiers": {"c_p": c["c_p"], "c_id": c["c_id"]},
            "sample": {"sample": c["sample"]},
            "control": (({"control": True, "control_model": c["control_model"], "sample": c["sample"]}
                         if c.get("control_model") else
                         {"control": True, "model": c["model"], "train": c["train"], "sde": c["sde"], "dp": c["dp"],
                          "pretrained": c["pretrained"], "sample": c["sample"]}) if cfg.with_control else {"control": False}),
            "count": {"detector": c["detector"], **({"sequential": c["sequential"]} if c.get("sequential") else {})},
            "census": {"census": c.get("census")},
            "canaries": {},
            "tprime": {"tprime": c["tprime"], "detector": c["detector"]},
            "nll": {"nll": c["nll"]},
            "fid": {"fid": c["fid"]},
            "utility": {"classifier": c["fid"]["domain"], **({"utility": c["utility"]} if c.get("utility") else {})},
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


def check_run_dir(run: Path, cfg: AuditConfig) -> None:
    """Refuse a run directory that holds another audit, naming what differs."""
    path = run / "audit.json"
    if not path.exists():
        if (run / "manifest.json").exists():
            # a run prepared stage by stage (prepare, export, training elsewhere) is audited when the audit's data is
            # the one prepared: the prepare stage then keeps the manifest
            prepared = read_json(run / "manifest.json").get("config")
            differs = config_differences(prepared, json.loads(json.dumps(to_dict(cfg.prepare))))
            if differs:
                raise DiffauditError(f"{run} was prepared with other settings ({'; '.join(differs[:3])}); give the "
                                     "same --dataset, --n-train and --seed, or use another --run-dir")
        return
    new = json.loads(json.dumps(to_dict(cfg)))
    differs = config_differences(read_json(path), new)
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
    if cfg.prepare.data is None:  # a --data source is checked when the prepare stage scans it
        check_audit_data(cfg, open_config_data(cfg.prepare, data_root=ctx.data_root))
    procs = processes(ctx.device)
    if cfg.dp is not None and procs.world > 1:
        raise DiffauditError("a DP-SGD audit runs in one process (its sampling, noise and accountant are not split "
                             "across ranks); start it without accelerate launch/torchrun")
    check_run_dir(run, cfg)
    fresh = not run.exists() or all(p.name == ".lock" for p in run.iterdir())
    with run_lock(run):  # one process per run directory (re-entrant: the CLI may hold it already)
        if cfg.external is not None and (run / "train" / EXTERNAL).is_file():
            # finished stages are kept only while the model they audited is unchanged (its digest is checked on load)
            run_model(run, manifest=load_manifest(run), device="cpu")
        try:
            return _run_stages(ctx, procs, stop_after)
        except DiffauditError:
            if fresh and procs.main and not (run / "manifest.json").exists():
                _forget(run)  # refused data in a new run directory: no audit record of an audit that never began
            raise


def _forget(run: Path) -> None:
    """Remove what the audit wrote into a new run directory before its prepare stage refused the data."""
    (run / "audit.json").unlink(missing_ok=True)
    shutil.rmtree(run / "audit", ignore_errors=True)
    if all(p.name == ".lock" for p in run.iterdir()):
        shutil.rmtree(run, ignore_errors=True)


def _run_stages(ctx: Context, procs: Processes, stop_after: str | None) -> dict:
    run, cfg = ctx.run, ctx.cfg
    procs.barrier()
    if procs.main:
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
                if stage in ("train", "control"):  # the training loop records no digest of the weights it writes
                    record_model_digests(run / ("train" if stage == "train" else "control/train"))
                write_json(_record_path(run, stage), {"stage": stage, "key": keys[stage], "seconds": round(seconds, 2),
                                                      "config": stage_config(cfg, stage), "summary": summary,
                                                      "files": stage_files(run, stage, ctx.samples_name)})
            log(f"[{stage}] finished in {seconds:.1f} s" + (f": {_brief(summary)}" if summary else ""))
        procs.barrier()
        if stage == stop_after:
            break
    return read_json(run / "results.json") if (run / "results.json").exists() else {}


def _brief(summary: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
