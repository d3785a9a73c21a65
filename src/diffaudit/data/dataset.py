"""The images a manifest is made from: a MedMNIST file, or the user's own source prepared into the run.

Both offer one interface — ``images(split)`` (uint8 [N, C, H, W]), ``labels(split)``, ``patients(split)``,
``digest`` (what the manifest records of the file) and ``name`` — so that every later stage reads D_p, x_i and the
held-out images the same way whichever the data.

A source (``PrepareConfig.data``: a folder of PNG/JPEG/TIFF/BMP, DICOM or NIfTI, or a datalist) is scanned once
(:func:`diffaudit.data.sources.open_source`: every file decoded and hashed), split (patients kept together), put in
split order (train, val, test) and written as one memory-mappable ``data/images.npy`` inside the run
(:func:`diffaudit.data.sources.prepare_cache`), so each split is a contiguous, zero-copy slice and no later stage
decodes a DICOM again. The manifest carries every record (path relative to the data root, SHA-256, split, label,
patient, frame) and the cache's SHA-256: a missing cache is rebuilt from the recorded files, each checked against
its SHA-256, and a cache whose digest differs is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import SPLITS, PrepareConfig
from ..errors import DiffauditError
from .medmnist import MedMNISTFile, open_dataset
from .sources import Source, assign_splits, check_sources, open_source, prepare_cache, split_indices
from .sources.files import file_sha256
from .sources.records import Record
from .split_cache import SplitCache
from .volumes.prepared import is_volume_manifest, open_volumes

CACHE = Path("data") / "images.npy"  # the prepared source, relative to the run directory
MAX_DEFAULT_SIZE = 256  # the default --size is the most common input side, at most this


class PreparedSet(SplitCache):
    """A source prepared into a run: the memory-mapped cache (uint8 [N, C, S, S]) and its records, in split order."""

    def __init__(self, cache: Path, records: list[Record], *, name: str, digest: str) -> None:
        super().__init__(cache, [r.split for r in records], name=name, digest=digest, rows="images")
        self.records = records

    def labels(self, split: str) -> np.ndarray:
        """int64 [N, 1], -1 where the source gave no label."""
        rec = self.records[self._slice(split)]
        return np.asarray([[-1 if r.label is None else r.label] for r in rec], dtype=np.int64).reshape(len(rec), 1)

    def patients(self, split: str) -> list[str | None]:
        return [r.patient for r in self.records[self._slice(split)]]

    def paths(self, split: str) -> list[str]:
        return [r.path if r.frame is None else f"{r.path}#{r.frame}" for r in self.records[self._slice(split)]]


def is_source(manifest: dict) -> bool:
    """Whether the manifest was made from a source (``--data``) rather than a MedMNIST file."""
    return manifest.get("source") is not None


def data_digest(data) -> str:
    """What a manifest records to recognise its data: the MedMNIST file's MD5, or the prepared cache's SHA-256."""
    return data.digest if isinstance(data, SplitCache) else data.md5


def open_prepared(manifest: dict, run: str | os.PathLike, *, progress: bool = False,
                  log: Callable[[str], None] = print) -> PreparedSet:
    """The run's prepared source; a missing cache is rebuilt from the recorded files (each SHA-256 checked)."""
    info = manifest["cache"]
    cache = Path(run) / info["file"]
    source = Source.from_dict(manifest["source"])
    if not cache.is_file():
        log(f"{cache} is missing; rebuilding it from the {len(source)} recorded images of {source.root}")
        check_sources(source)
        pre = manifest["preprocessing"]
        prepare_cache(source, cache, size=pre["size"], channels=pre["channels"], fit=pre["fit"], progress=progress,
                      log=lambda _: None)
    digest = _cached_sha256(cache)
    if digest != info["sha256"]:
        raise DiffauditError(f"{cache} has SHA-256 {digest[:12]}... but the manifest recorded {info['sha256'][:12]}...; "
                             "it was changed: delete it so that it is rebuilt from the source")
    return PreparedSet(cache, list(source.records), name=manifest["dataset"], digest=digest)


_VERIFIED: dict[tuple, str] = {}


def _cached_sha256(path: Path) -> str:
    """The file's SHA-256, hashed once per process for a given (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = file_sha256(path)
    return _VERIFIED[key]


def open_data(manifest: dict, *, data_root: str | os.PathLike | None = None, run: str | os.PathLike | None = None,
              download: bool = False, log: Callable[[str], None] = print):
    """The data ``manifest`` was made from: its MedMNIST file (``data_root``), or its prepared source in ``run``
    (default: the run the manifest was loaded from)."""
    if is_source(manifest):
        run = run if run is not None else manifest.get("_run")
        if run is None:
            raise DiffauditError("this manifest was made from a --data source, whose images live in its run "
                                 "directory; load it with load_manifest(run)")
        if is_volume_manifest(manifest):
            return open_volumes(manifest, run, log=log)
        return open_prepared(manifest, run, log=log)
    cfg = manifest.get("config", {})
    return open_dataset(manifest["dataset"], data_root=data_root, size=cfg.get("size"), download_missing=download,
                        log=log)


def open_config_data(cfg: PrepareConfig, *, data_root=None, download: bool = False,
                     log: Callable[[str], None] = print) -> MedMNISTFile:
    """The MedMNIST file ``cfg`` names (a ``--data`` source has no file to open before ``prepare`` scans it)."""
    if cfg.data is not None:
        raise DiffauditError("a --data source is opened by the prepare stage; there is no MedMNIST file to open")
    return open_dataset(cfg.dataset, data_root=data_root, size=cfg.size, download_missing=download, log=log)


def scan_source(cfg: PrepareConfig, *, log: Callable[[str], None] = print) -> Source:
    """``cfg.data`` scanned, split (given splits kept, else drawn by ``split_ratios`` and ``seed``, patients kept
    together) and put in split order: train, val, test."""
    source = open_source(cfg.data, format=cfg.data_format, labels=cfg.labels, skip_unreadable=cfg.skip_unreadable,
                         frames=cfg.frames, slice=cfg.slice, window=None if cfg.window is None else tuple(cfg.window),
                         log=log)
    source = assign_splits(source, ratios=cfg.split_ratios, seed=cfg.seed)
    order = np.concatenate([split_indices(source, s) for s in SPLITS])
    return source.select(order)


def default_size(source: Source) -> int:
    """The most common input side (the shorter side of non-square images), at most :data:`MAX_DEFAULT_SIZE`."""
    from collections import Counter

    sides = Counter(min(r.shape[-2], r.shape[-1]) for r in source)
    return min(sides.most_common(1)[0][0], MAX_DEFAULT_SIZE)


def prepare_source(cfg: PrepareConfig, run: str | os.PathLike, *, progress: bool = True,
                   log: Callable[[str], None] = print) -> tuple[PreparedSet, dict, tuple[str, ...]]:
    """Scan ``cfg.data`` and write its cache into ``run``; returns the prepared set, what the manifest records of
    it (``source``, ``cache``, ``preprocessing``) and the pixel digest of every image (for duplicates)."""
    source = scan_source(cfg, log=log)
    size = cfg.size or default_size(source)
    if cfg.size is None:
        log(f"images resized to {size}x{size} (the most common input side, at most {MAX_DEFAULT_SIZE}; --size sets it)")
    cache = Path(run) / CACHE
    cache.parent.mkdir(parents=True, exist_ok=True)
    prepared = prepare_cache(source, cache, size=size, channels=cfg.channels, fit=cfg.fit, progress=progress, log=log)
    _VERIFIED[(str(cache.resolve()), cache.stat().st_size, cache.stat().st_mtime_ns)] = prepared.sha256
    root = Path(cfg.data).resolve()
    recorded = Source.from_dict({**source.to_dict(), "root": str(root)})
    record = {"source": recorded.to_dict(),
              "cache": {"file": CACHE.as_posix(), "sha256": prepared.sha256, "shape": list(prepared.shape)},
              "preprocessing": prepared.preprocessing}
    name = f"{source.kind}:{root.name}"
    return PreparedSet(cache, list(recorded.records), name=name, digest=prepared.sha256), record, prepared.pixel_digests


def reuse_source(parent: dict, parent_run: str | os.PathLike, run: str | os.PathLike) -> tuple[PreparedSet, dict, tuple[str, ...]]:
    """The prepared source of ``parent`` (a manifest of ``parent_run``) for another run of the same data (the
    control set): its cache linked (or copied) into ``run``, checked against its SHA-256, nothing decoded again."""
    import shutil

    from ..io import atomic_path
    from .sources import pixel_digest

    src, dst = Path(parent_run) / parent["cache"]["file"], Path(run) / CACHE
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    data = open_prepared(parent, run)
    digests = tuple(pixel_digest(x) for x in data._images)
    return data, {k: parent[k] for k in ("source", "cache", "preprocessing")}, digests
