"""The ``sample`` stage: N images in uint8 shards, resumable, each image reproducible from (seed, index).

``<out>/config.json`` records the sampling config; shard k, ``shard_00000.npz``, holds ``images`` uint8
[n_k, C, H, W] and ``indices`` for images k*S ... (k+1)*S - 1 (S = shard size); ``<out>/digests.json`` the shards'
SHA-256 once the folder is finished. A shard is written atomically, so a killed run restarts at the first missing
shard. Raising N (or changing the batch size) later keeps the
finished shards: image i does not depend on N. Every network call runs a full batch of ``batch_size`` images (the
last batch of a run is padded with the following indices, computed and dropped; a batch never spans two shards, so
it is min(batch_size, shard_size)), so the kernels always see one
shape: on a CPU, oneDNN picks its algorithm by shape, and a smaller last batch could round a pixel of image i one
uint8 level differently (measured at 64 px). Another batch size may do so too; it is recorded in ``config.json``.

The network's numerics beyond ``precision`` (its memory format, and whether it is compiled) are settled once per
folder (:func:`folder_numerics`; ``auto`` by :func:`~diffaudit.diffusion.precision.resolve_numerics`), recorded in
``config.json`` and kept when the folder is continued, so one folder never mixes images of two modes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import SampleConfig, to_dict
from .data.prepare import load_manifest, number_of_classes
from .diffusion.conditioning import as_condition
from .diffusion.generative import Generative
from .diffusion.precision import prepared, resolve_numerics
from .errors import DiffauditError
from .images import save_grid
from .io import check_name, existing_artefact, save_npz, write_json
from .models.load import run_model
from .parallel import processes


def shard_path(out: Path, k: int) -> Path:
    return out / f"shard_{k:05d}.npz"


def read_shard(path: str | Path, *, labels: bool = False) -> dict[str, np.ndarray]:
    """Shard ``path`` as written by :func:`generate_shards`: ``indices`` (1-d integers) and ``images`` (uint8
    [n, C, H, W], n = len(indices)), and ``labels`` too with ``labels``. A file that is not such an ``.npz`` (damaged,
    replaced, pickled object arrays, which are never loaded) is refused with one line naming it."""
    path = Path(path)
    fix = "delete it (or its samples folder) and sample again"
    keys = ("indices", "images", *(("labels",) if labels else ()))
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                raise ValueError("not an .npz archive")
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing == ["labels"]:
                raise DiffauditError(f"{path} holds no class labels: the model was not class-conditional")
            if missing:
                raise DiffauditError(f"sample shard {path} has no '{missing[0]}' array; {fix}")
            out = {k: f[k] for k in keys}
    except DiffauditError:
        raise
    except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile, zlib.error) as err:  # MemoryError: a
        why = " ".join(str(err).split()) or type(err).__name__  # header claiming more than the machine holds
        raise DiffauditError(f"sample shard {path} is not a readable .npz file ({why}); {fix}") from None
    idx, images = out["indices"], out["images"]
    if (idx.ndim != 1 or idx.dtype.kind not in "iu" or images.dtype != np.uint8 or images.ndim not in (4, 5)
            or len(images) != len(idx) or (labels and len(out["labels"]) != len(idx))):
        raise DiffauditError(f"sample shard {path} holds indices {idx.dtype}{list(idx.shape)} and images "
                             f"{images.dtype}{list(images.shape)}, not n integer indices and n uint8 [C, H, W] "
                             f"images (or [C, D, H, W] volumes); {fix}")
    return out


def _check_config(cfg: SampleConfig, model: Generative) -> None:
    model.check_sampler(cfg.sampler)
    for name in ("n", "steps", "batch_size", "shard_size"):
        if getattr(cfg, name) < 1:
            raise DiffauditError(f"sampling needs {name} >= 1, got {getattr(cfg, name)}")
    model.nfe(cfg.sampler, cfg.steps, corrector_steps=cfg.corrector_steps)  # the steps against the model's schedule


def batch_shapes(cfg: SampleConfig) -> int:
    """How many batch sizes a run of ``cfg`` draws (a compiled network is compiled once for each): one, since every
    call runs a full batch of min(batch_size, shard_size) images."""
    return 1


def _recorded_sample(out: Path) -> dict | None:
    try:
        sample = json.loads((Path(out) / "config.json").read_text()).get("sample")
    except (OSError, ValueError, AttributeError):
        return None  # no folder yet; a damaged file is refused by claim_folder
    return sample if isinstance(sample, dict) else None


def folder_numerics(out: Path, model: Generative, cfg: SampleConfig) -> SampleConfig:
    """``cfg`` with its compile mode and memory format settled: those given, else (``auto``) those the folder was
    drawn in (a folder from before these settings: uncompiled, contiguous), else those
    :func:`~diffaudit.diffusion.precision.resolve_numerics` picks for a run of ``cfg.n`` images on the model's
    device."""
    compile, memory_format = cfg.compile, cfg.memory_format
    recorded = _recorded_sample(out)
    if recorded is not None:
        compile = recorded.get("compile", "none") if compile == "auto" else compile
        memory_format = recorded.get("memory_format", "contiguous") if memory_format == "auto" else memory_format
    evaluations = cfg.n * model.nfe(cfg.sampler, cfg.steps, corrector_steps=cfg.corrector_steps)
    compile, memory_format = resolve_numerics(str(compile), str(memory_format), model=model, evaluations=evaluations,
                                              shapes=batch_shapes(cfg))
    return dataclasses.replace(cfg, compile=compile, memory_format=memory_format)


def _sample_record(cfg: SampleConfig) -> dict:
    """The settled sampling config as config.json records it; uncompiled and contiguous (the numerics of folders
    drawn before these settings existed) are left out, so those folders are continued as they were drawn."""
    record = to_dict(cfg)
    for key, old in (("compile", "none"), ("memory_format", "contiguous")):
        if record.get(key) == old:
            del record[key]
    record.pop("condition", None)  # the folder's conditions record says how its images were conditioned
    return record


def default_conditions(model: Generative) -> tuple[np.ndarray, dict] | None:
    """What a conditional model samples with when no table is given: every class in turn (image i of class i mod C);
    None for an unconditional model. A model with covariates needs a table (:func:`run_conditions`)."""
    if getattr(model, "covariates", 0):
        raise DiffauditError("a model conditioned on attributes samples with a table of them; sample it with "
                             "'diffaudit sample', which reads them from the run")
    if not model.num_classes:
        return None
    return np.arange(model.num_classes, dtype=np.int64), {"labels": f"index mod {model.num_classes}"}


def run_conditions(manifest: dict, model: Generative, mode: str, data_root=None) -> tuple[np.ndarray, dict] | None:
    """The conditions a sampling run of ``model`` on the run of ``manifest`` draws with (``SampleConfig.condition``,
    :func:`diffaudit.data.conditions.condition_table`); None for an unconditional model."""
    from .data.conditions import condition_table
    from .data.prepare import training_labels

    table, record = condition_table(manifest, model.num_classes, getattr(model, "covariates", 0), mode,
                                    labels=lambda: training_labels(manifest, data_root=data_root))
    return None if table is None else (table, record)


def claim_folder(out: Path, model: Generative, cfg: SampleConfig, *, write: bool = True,
                 conditions: tuple[np.ndarray, dict] | None = None) -> SampleConfig:
    """Check ``cfg`` and that ``out`` holds no samples of another model or sampling config (refused), then record
    them in ``<out>/config.json``. N and the batch size change no image, so they may differ between runs. Returns
    ``cfg`` with its numerics settled (:func:`folder_numerics`). ``conditions``: the table a conditional model samples
    with (default: :func:`default_conditions`)."""
    _check_config(cfg, model)
    cfg = folder_numerics(out, model, cfg)
    shape = model.image_shape
    if conditions is None:
        conditions = default_conditions(model)
    record = json.loads(json.dumps(  # tuples -> lists, as read back from config.json
        {"sample": _sample_record(cfg), **model.record(), "image_shape": list(shape), "model": model.model_id,
         **(conditions[1] if conditions is not None else {})}))
    existing_artefact(Path(out) / "config.json", record, what="samples", ignore=("sample.n", "sample.batch_size"),
                      fix="choose another --name")
    if write:
        write_json(Path(out) / "config.json", record)
    return cfg


def _compile_failed(out: Path, model: Generative, cfg: SampleConfig, err: Exception, *, rank: int,
                    conditions: tuple[np.ndarray, dict] | None = None) -> SampleConfig:
    """torch.compile failed at the run's first call: sample uncompiled (one warning line) when the folder holds no
    compiled images yet, else refuse (a folder is drawn in one mode)."""
    why = " ".join(str(err).split())[:200] or type(err).__name__
    if any(Path(out).glob("shard_*.npz")):
        raise DiffauditError(f"{out} holds samples drawn with torch.compile ({cfg.compile}), which fails here ({why}); "
                             "sample into another --name, or make torch.compile work (a C++ compiler on a CPU)") from err
    tqdm.write(f"warning: torch.compile failed ({why}); sampling without it", file=sys.stderr)
    cfg = dataclasses.replace(cfg, compile="none")
    if rank == 0:
        (Path(out) / "config.json").unlink(missing_ok=True)  # it named the compiled mode; no image was drawn in it
        claim_folder(out, model, cfg, conditions=conditions)
    return cfg


def generate_shards(
    out_dir: str | Path,
    model: Generative,
    cfg: SampleConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
    conditions: tuple[np.ndarray, dict] | None = None,
) -> Path:
    """Sample ``cfg.n`` images into shards under ``out_dir``; finished shards are kept. Returns ``out_dir``.

    With ``world`` > 1 processes (``accelerate launch``), process ``rank`` makes the shards k with
    k % world == rank: no two processes write the same shard, and every image is the one a single process would
    have made, since it depends only on (seed, index). The caller then waits for all processes and calls
    :func:`finish_shards` once.

    A conditional model draws image i with row i mod K of the ``conditions`` table (default: every class in turn, i mod
    num_classes; :func:`run_conditions` reads the others from the run), so image i is still a function of i alone; its
    shards also hold the ``labels`` (class labels, or condition rows) each image was drawn with. ``config.json`` records the model's digest and what its
    samples depend on (its SDE, or its scheduler)."""
    if not 0 <= rank < world:
        raise DiffauditError(f"process rank {rank} is outside a world of {world} processes")
    out = Path(out_dir)
    if conditions is None:
        conditions = default_conditions(model)
    # checked first; config.json is written once sampling can start
    cfg = claim_folder(out, model, cfg, write=False, conditions=conditions)
    table = None if conditions is None else np.asarray(conditions[0])
    options = {"snr": cfg.snr, "corrector_steps": cfg.corrector_steps} if cfg.sampler == "pc" else {}

    n_shards = -(-cfg.n // cfg.shard_size)
    todo = []
    for k in range(rank, n_shards, world):
        expected = np.arange(k * cfg.shard_size, min((k + 1) * cfg.shard_size, cfg.n))
        path = shard_path(out, k)
        if path.exists() and np.array_equal(read_shard(path)["indices"], expected):
            continue
        todo.append((k, expected))
    nfe = model.nfe(cfg.sampler, cfg.steps, corrector_steps=cfg.corrector_steps)
    network = prepared(model, cfg.compile, cfg.memory_format) if todo else model
    if rank == 0:
        claim_folder(out, model, cfg, conditions=conditions)
    first = cfg.compile != "none"  # a compile that fails does so at the first call
    bar = tqdm(total=sum(len(e) for _, e in todo), disable=not progress or not todo, unit="img",
               desc=f"sample ({cfg.sampler}, {nfe} NFE)", dynamic_ncols=True)
    batch = min(cfg.batch_size, cfg.shard_size)  # the one batch shape: every shard is split alike
    for k, expected in todo:
        chunks = []
        for lo in range(0, len(expected), batch):
            keep = len(expected[lo:lo + batch])
            # every call runs a full batch (a short last batch is padded with the following indices, then dropped):
            # the kernels see one batch shape, so image i is the same bits whatever N is
            idx = list(range(int(expected[lo]), int(expected[lo]) + batch))
            y = None if table is None else as_condition(table[np.asarray(idx) % len(table)], device)
            draw = dict(indices=idx, seed=cfg.seed, sampler=cfg.sampler, steps=cfg.steps, eps=cfg.eps, class_labels=y,
                        device=device, precision=cfg.precision, **options)
            try:
                chunks.append(network.generate(**draw)[:keep])
            except DiffauditError:
                raise
            except Exception as err:  # noqa: BLE001 - whatever torch.compile raised
                if not first:
                    raise
                cfg = _compile_failed(out, model, cfg, err, rank=rank, conditions=conditions)
                network = prepared(model, cfg.compile, cfg.memory_format)
                chunks.append(network.generate(**draw)[:keep])
            first = False
            bar.update(keep)
        labels = {} if table is None else {"labels": table[expected % len(table)]}
        save_npz(shard_path(out, k), images=np.concatenate(chunks), indices=expected, **labels)
    bar.close()
    if world == 1:
        finish_shards(out, cfg)
    return out


def finish_shards(out: Path, cfg: SampleConfig) -> None:
    """After every shard is written: drop shards beyond a lowered N, record the shards' SHA-256 in ``digests.json``
    (:mod:`diffaudit.audit.engine.verify`) and draw the grid of the first images."""
    from .digests import record_shard_digests

    n_shards = -(-cfg.n // cfg.shard_size)
    for stale in sorted(Path(out).glob("shard_*.npz"))[n_shards:]:
        stale.unlink()  # shards beyond a lowered N
    record_shard_digests(out)
    first = next(iter_shards(out))[1][:64]
    save_grid(Path(out) / "grid.png", first)


def iter_shards(out_dir: str | Path, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices, uint8 images) shard by shard, in index order: constant memory for any N. With ``limit``, only
    images 0 .. limit-1 (where a sequential count stopped)."""
    out = Path(out_dir)
    shards = sorted(out.glob("shard_*.npz"))
    if not shards:
        raise DiffauditError(f"{out} holds no sample shards; run 'diffaudit sample' first")
    for path in shards:
        shard = read_shard(path)
        indices, images = shard["indices"], shard["images"]
        if limit is not None:
            keep = indices < limit
            if not keep.any():
                break
            indices, images = indices[keep], images[keep]
        yield indices, images


def sample_run(run: str | Path, name: str, cfg: SampleConfig, *, device: str = "auto", progress: bool = True,
               model: str | None = None, scheduler: str | None = None, prediction_type: str | None = None,
               data_root=None, net: Generative | None = None) -> Path:
    """Sample from the run's model (its own trained one, or ``model``, see :func:`diffaudit.models.load.run_model`; or
    ``net``, already loaded) into ``<run>/samples/<name>/``, across all processes when launched with several (see
    :mod:`diffaudit.parallel`)."""
    check_name(name)
    procs = processes(device)
    run = Path(run)
    manifest = load_manifest(run)
    out = run / "samples" / name
    if net is None:
        classes = number_of_classes(manifest["dataset"], data_root=data_root) if model is not None else None
        net = run_model(run, manifest=manifest, model=model, scheduler=scheduler, prediction_type=prediction_type,
                        num_classes=classes, device=str(procs.device),
                        # checked before a model given is registered
                        check=lambda m: claim_folder(out, m, cfg, write=False,
                                                     conditions=run_conditions(manifest, m, cfg.condition, data_root)))
    conditions = run_conditions(manifest, net, cfg.condition, data_root)
    generate_shards(out, net, cfg, device=procs.device, progress=progress and procs.main, rank=procs.rank,
                    world=procs.world, conditions=conditions)
    if procs.world > 1:
        procs.barrier()
        if procs.main:
            finish_shards(out, cfg)
        procs.barrier()
    return out


def iter_labelled_shards(out_dir: str | Path) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (indices, uint8 images, class labels) of a class-conditional model's shards."""
    out = Path(out_dir)
    for path in sorted(out.glob("shard_*.npz")):
        shard = read_shard(path, labels=True)
        yield shard["indices"], shard["images"], shard["labels"]
