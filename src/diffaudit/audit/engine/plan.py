"""``diffaudit audit --dry-run``: each stage with its state (done / to run), an estimate of its time from a
one-second probe of this machine's speed, and of the disk it will use."""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from ...adversary.classifiers import build_classifier
from ...config import STAGES, AuditConfig
from ...device import resolve_device
from ...diffusion.samplers import nfe_per_step
from ...diffusion.networks import build_network
from ...io import read_json
from .pipeline import check_run_dir, stage_done, stage_keys_of
from .stages import Context, check_audit_config


def _images_per_second(call: Callable[[], object], batch: int, dev) -> float:
    with torch.no_grad():
        call()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            call()
            n += batch
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _image_shape(ctx: Context) -> tuple[int, ...]:
    """The shape of the run's images: the prepared manifest's, the MedMNIST file's (28, or ``--size``), or for a
    ``--data`` source not prepared yet ``--size`` (else 64, a guess: the source is scanned by the prepare stage); a
    volume's [C, D, H, W]."""
    manifest = ctx.run / "manifest.json"
    if manifest.is_file():
        return tuple(int(v) for v in read_json(manifest)["image_shape"])
    size = ctx.cfg.prepare.size or (28 if ctx.cfg.prepare.data is None else 64)
    sides = size if isinstance(size, tuple) else (size, size)
    return (ctx.cfg.prepare.channels, *sides)


def _source_files(cfg: AuditConfig) -> int:
    """How many files a ``--data`` folder holds (0 for a MedMNIST file)."""
    if cfg.prepare.data is None:
        return 0
    root = Path(cfg.prepare.data)
    return sum(len(files) for _, _, files in os.walk(root)) if root.is_dir() else 1


def _probe_rates(cfg: AuditConfig, shape: tuple[int, ...], device: str) -> dict[str, float]:
    """Images per second of one U-Net evaluation and of one classifier forward pass on this machine, measured."""
    dev = resolve_device(device)
    x = torch.zeros(32, *shape, device=dev)
    t = torch.full((32,), 500.0, device=dev)
    unet = build_network(cfg.model, shape).to(dev).eval()
    classifier = build_classifier(cfg.c_p, shape[0], min(shape[1:]), len(shape) - 1).to(dev).eval()
    rates = {"unet": _images_per_second(lambda: unet(x, t), 32, dev),
             "classifier": _images_per_second(lambda: classifier(x), 32, dev)}
    return rates


def plan(ctx: Context) -> list[dict]:
    """Each stage with its state (done / to run), an estimate of its time from a one-second probe of this
    machine's speed, and of the disk it will use. Estimates, not promises: early stopping, the t' search and
    the ODE solver's step count vary."""
    cfg = ctx.cfg
    check_audit_config(cfg)
    check_run_dir(ctx.run, cfg)
    keys = stage_keys_of(ctx.run, ctx.cfg, ctx.shared_extractor)
    shape = _image_shape(ctx)
    channels = shape[0]
    rates = _probe_rates(cfg, shape, ctx.device)
    unet, clf = rates["unet"], rates["classifier"]
    n_train = cfg.prepare.n_train or 1000
    twice = 2 if cfg.external is None and (cfg.model.num_classes or cfg.prepare.condition) else 1
    pixels = math.prod(shape)
    params = sum(p.numel() for p in build_network(cfg.model, shape).parameters())
    files = _source_files(cfg)
    external = cfg.external is not None  # timed with the preset's U-Net: a model trained elsewhere runs at its own speed
    nfe_step = 1 if external else nfe_per_step(cfg.sample.sampler, corrector_steps=cfg.sample.corrector_steps)
    grid = int(round(cfg.tprime.t_max / cfg.tprime.resolution))
    evaluations = grid if cfg.tprime.search == "exhaustive" else min(grid, 2 * math.ceil(math.log2(grid + 1)) + 2)
    est = {
        # a source is read twice (the scan, then the cache) at about 100 files a second on 2 cores (benchmarks/sources.py)
        "prepare": (1.0 + files / 50, 1024 + files * (pixels + 400)),
        "train": (0.0, 1e3) if external else
                 (cfg.train.steps * cfg.train.batch_size * 3 / unet, params * 4 * (2 + 4 * cfg.train.keep_checkpoints)),
        "classifiers": (0.0 if cfg.detector == "nn" else
                        sum(c.max_epochs * (c.epoch_size + c.val_size / 3) * 3 / clf for c in (cfg.c_p, cfg.c_id)),
                        sum(4 * sum(p.numel() for p in build_classifier(c, channels, min(shape[1:]), len(shape) - 1)
                                    .parameters()) for c in (cfg.c_p, cfg.c_id))),
        # a conditional model is sampled twice: with the training set's conditions and with x_p's own
        "sample": (0.0, 1e3) if cfg.sequential else (twice * cfg.sample.n * cfg.sample.steps * nfe_step / unet,
                                                     twice * cfg.sample.n * pixels),
        # a sequential count draws its samples itself: at most sample.n (the estimate is that most)
        "count": (cfg.sample.n * 2 / clf + 5 + (cfg.sample.n * cfg.sample.steps * nfe_step / unet if cfg.sequential else 0),
                  2e6 + (cfg.sample.n * pixels if cfg.sequential else 0)),
        # the census: its distances (9 shifts of N x N_D pixels at about 2e10 a second), or the embedding's training
        "census": (0.0 if cfg.census is None else
                   (9 * cfg.sample.n * n_train * pixels / 2e10 + 5 if cfg.census.space == "pixel" else
                    cfg.census.embedding_steps * 128 * 3 / clf), 1e3 if cfg.census is None else cfg.sample.n * pixels),
        # the many canaries: 9 shifts of N x m pixel distances, plus their held-out rates
        "canaries": ((9 * cfg.sample.n * cfg.prepare.canaries * pixels / 2e10 + 2) if cfg.prepare.many_canaries else 0.0,
                     1e6),
        "tprime": (evaluations * cfg.tprime.M * cfg.tprime.steps * 0.5 / unet, 1e5),
        "control": ((cfg.train.steps * cfg.train.batch_size * 3 / unet + cfg.sample.n * cfg.sample.steps * nfe_step / unet)
                    if cfg.with_control else 0.0, params * 4 * 2 + cfg.sample.n * pixels if cfg.with_control else 1e3),
        "nll": ((cfg.nll.x_p_repeats + cfg.nll.n_train + cfg.nll.n_test) * 150 * 3 / unet, 1e5),
        "fid": (cfg.fid.domain.steps * cfg.fid.domain.batch_size * 3 / clf + (cfg.sample.n + 2 * n_train) / clf, 2e6),
        "utility": (((2 * cfg.fid.domain.steps * cfg.fid.domain.batch_size * 3 / clf) if cfg.model.num_classes else 0.0)
                    # the DP regimes: per seed 2 + 3 per finite epsilon + 2 at infinity, DP-SGD about 3x a plain step
                    + (0.0 if cfg.utility is None else cfg.utility.seeds * cfg.utility.steps * cfg.utility.batch_size
                       * 9 / clf * (2 + 3 * sum(e is not None for e in cfg.utility.epsilons)
                                    + 2 * (None in cfg.utility.epsilons))), 2e7),
        "report": (5.0, 5e6),
    }
    # stages that stop early: their estimate is the cap (classifiers at their criterion, a sequential count when decided)
    capped = {"classifiers"} | ({"count"} if cfg.sequential else set())
    return [{"stage": s, "done": stage_done(ctx.run, s, keys[s]), "seconds": est[s][0], "bytes": est[s][1],
             "at_most": s in capped} for s in STAGES]


def format_plan(rows: list[dict], ctx: Context) -> str:
    todo = [r for r in rows if not r["done"]]
    lines = [f"audit plan for {ctx.run} (estimates from a one-second speed probe of this machine):",
             f"{'stage':<12}{'state':<10}{'time':>10}{'disk':>12}"]
    for r in rows:
        time = ("<= " if r.get("at_most") else "") + _duration(r["seconds"])
        lines.append(f"{r['stage']:<12}{'done' if r['done'] else 'to run':<10}{time:>10}{_size(r['bytes']):>12}")
    total = ("<= " if any(r.get("at_most") and r["seconds"] for r in todo) else "") + _duration(
        sum(r["seconds"] for r in todo))
    lines.append(f"{'total to run':<22}{total:>10}{_size(sum(r['bytes'] for r in todo)):>12}")
    if any(r.get("at_most") for r in todo):
        lines.append("<=: a cap; the stage stops earlier when its criterion is met (the classifiers often in seconds)")
    free = shutil.disk_usage(ctx.run if ctx.run.exists() else Path(".")).free
    lines.append(f"free disk: {_size(free)}")
    if ctx.cfg.external is not None:
        lines.append(f"model: {ctx.cfg.external.path} (trained elsewhere; times assume the preset's U-Net)")
    return "\n".join(lines)


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h")


def _size(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} GB"


