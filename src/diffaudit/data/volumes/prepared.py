"""A folder of NIfTI volumes prepared into a run: split by patient, preprocessed once into ``data/volumes.npy``
(uint8 [N, 1, D, H, W], RAS+, in split order train, val, test), and recorded in the manifest so that the cache can be
rebuilt from the files and checked against its SHA-256.

:class:`PreparedVolumes` offers the interface of a prepared 2D source (``images(split)``, ``labels``, ``patients``,
``paths``, ``digest``, ``name``), so the manifest, the training set D_p, x_i and the held-out volumes are made by the
same code as for images. What the manifest records (``source``):

* ``kind`` "volumes", the data ``root``, and per volume (in the cache's order) its ``file`` relative to the root,
  SHA-256, what was read from it (shape, spacing, orientation), ``split`` and ``patient``;
* the files that could not be read, with their reasons (``--skip-unreadable``);
* ``preprocessing``: every MONAI transform with its arguments, as run (:mod:`.steps`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from ...config import SPLITS, PrepareConfig
from ...errors import DiffauditError
from ...io import atomic_path
from ..split_cache import SplitCache
from .cache import (VOLUME_EXTENSIONS, array_sha256, check_sources, list_series_folders, list_volumes,
                    write_volume_cache)
from .patients import patients_of, split_volumes
from .steps import VolumeSteps

KIND = "volumes"
CACHE = Path("data") / "volumes.npy"  # relative to the run directory


def is_volume_config(cfg: PrepareConfig) -> bool:
    """Whether ``cfg`` prepares volumes: a ``--data`` source with a size of three sides (D, H, W)."""
    return cfg.data is not None and isinstance(cfg.size, tuple)


def is_volume_manifest(manifest: dict) -> bool:
    return (manifest.get("source") or {}).get("kind") == KIND


def steps_of(cfg: PrepareConfig, reader: str = "nifti") -> VolumeSteps:
    """The preprocessing ``cfg`` asks for: its size, spacing, fit (crop: crop or pad each axis; resize), the volume
    of a 4D file, and for DICOM folders the series to take."""
    return VolumeSteps(size=tuple(cfg.size), spacing=None if cfg.spacing is None else tuple(cfg.spacing),
                       fit="resize" if cfg.fit == "resize" else "crop-pad", volume_index=cfg.volume_index,
                       reader=reader, series=cfg.series)


def volume_items(root: Path, cfg: PrepareConfig) -> tuple[str, list[str]]:
    """(reader, the volumes' names under ``root``): its NIfTI files, or, with ``--data-format dicom`` or no NIfTI file
    but DICOM files, its folders of DICOM files (one series each)."""
    nifti = [p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(VOLUME_EXTENSIONS)]
    if cfg.data_format == "dicom" or (not nifti and cfg.data_format is None and _has_dicom(root)):
        return "dicom", list_series_folders(root)
    if cfg.data_format not in (None, "nifti"):
        raise DiffauditError(f"--data-format {cfg.data_format} reads images; volumes (--size D,H,W) come from NIfTI "
                             "files or DICOM series (--data-format nifti or dicom)")
    return "nifti", list_volumes(root)


def _has_dicom(root: Path) -> bool:
    from ..sources.dicom import EXTENSIONS

    return any(p.is_file() and p.name.lower().endswith(EXTENSIONS) for p in root.rglob("*"))


class PreparedVolumes(SplitCache):
    """Volumes prepared into a run: the memory-mapped cache (uint8 [N, 1, D, H, W]) and the manifest's record of each
    volume."""

    def __init__(self, cache: Path, source: dict, *, name: str, digest: str) -> None:
        super().__init__(cache, [f["split"] for f in source["files"]], name=name, digest=digest, rows="volumes")
        self.files = source["files"]

    def labels(self, split: str) -> np.ndarray:
        """int64 [N, 1]: -1, volumes carry no class label."""
        return np.full((len(self.files[self._slice(split)]), 1), -1, dtype=np.int64)

    def patients(self, split: str) -> list[str | None]:
        return [f["patient"] for f in self.files[self._slice(split)]]

    def paths(self, split: str) -> list[str]:
        return [f["file"] for f in self.files[self._slice(split)]]


def prepare_volumes(cfg: PrepareConfig, run: str | os.PathLike, *, progress: bool = True,
                    log: Callable[[str], None] = print) -> tuple[PreparedVolumes, dict, tuple[str, ...]]:
    """Split the NIfTI volumes of ``cfg.data`` by patient, preprocess them into ``<run>/data/volumes.npy`` in split
    order; returns the prepared set, what the manifest records of it, and the digest of every volume."""
    root = Path(cfg.data).resolve()
    if root.is_file():
        raise DiffauditError(f"{cfg.data} is a file; a volume audit takes the folder that holds the NIfTI volumes "
                             "(.nii, .nii.gz)")
    if not root.is_dir():
        raise DiffauditError(f"{cfg.data} is not a folder; a volume audit takes the folder that holds the NIfTI "
                             "volumes, or one folder per DICOM series")
    reader, names = volume_items(root, cfg)
    patients = patients_of(names, cfg.patient_pattern) if cfg.patient_pattern else None
    splits = split_volumes(root, names, patients=patients, ratios=cfg.split_ratios, seed=cfg.seed)
    order = [i for s in SPLITS for i in range(len(names)) if splits[i] == s]
    steps = steps_of(cfg, reader)
    cache = Path(run) / CACHE
    cache.parent.mkdir(parents=True, exist_ok=True)
    log(f"preprocessing {len(names)} {'DICOM series' if reader == 'dicom' else 'volumes'} of {root} to {'x'.join(map(str, steps.size))} (MONAI: RAS, "
        f"{'spacing ' + ','.join(map(str, steps.spacing)) + ' mm, ' if steps.spacing else ''}{steps.fit}, "
        "percentiles 0.5-99.5)")
    record = write_volume_cache(root, [names[i] for i in order], steps, cache, skip_unreadable=cfg.skip_unreadable,
                                progress=progress)
    by_name = {names[i]: i for i in order}
    files = [{**f, "split": splits[by_name[f["file"]]],
              "patient": patients[by_name[f["file"]]] if patients else f["file"]} for f in record["files"]]
    for s in ("train",):
        if not any(f["split"] == s for f in files):
            raise DiffauditError(f"no volume of {root} could be read into the {s} split; fix the files or add volumes")
    if record["skipped"]:
        log(f"warning: {len(record['skipped'])} volumes could not be read and were left out "
            f"({record['skipped'][0]['file']}: {record['skipped'][0]['reason']}); recorded in manifest.json")
    source = {"kind": KIND, "root": str(root), "patient_pattern": cfg.patient_pattern, "files": files,
              "skipped": record["skipped"], "layout": record["layout"]}
    manifest = {"source": source,
                "cache": {"file": CACHE.as_posix(), "sha256": record["sha256"], "shape": record["shape"]},
                "preprocessing": {"steps": record["steps"], "size": list(steps.size),
                                  "spacing": None if steps.spacing is None else list(steps.spacing),
                                  "fit": steps.fit, "volume_index": steps.volume_index, "reader": reader,
                                  "series": steps.series}}
    data = PreparedVolumes(cache, source, name=f"{KIND}:{root.name}", digest=record["sha256"])
    return data, manifest, tuple(_digests(data._images))


def _digests(images: np.ndarray) -> list[str]:
    """A digest of each volume's voxels (identical volumes share one), as the 2D pixel digests."""
    import hashlib

    return [hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for v in images]


def open_volumes(manifest: dict, run: str | os.PathLike, *, progress: bool = False,
                 log: Callable[[str], None] = print) -> PreparedVolumes:
    """The run's prepared volumes; a missing cache is rebuilt from the recorded files (each SHA-256 checked), and a
    cache whose SHA-256 is not the manifest's is refused."""
    info, source = manifest["cache"], manifest["source"]
    cache = Path(run) / info["file"]
    if not cache.is_file():
        log(f"{cache} is missing; rebuilding it from the {len(source['files'])} recorded volumes of {source['root']}")
        check_sources(source["root"], {"files": source["files"]})
        pre = manifest["preprocessing"]
        steps = VolumeSteps(size=tuple(pre["size"]), spacing=None if pre["spacing"] is None else tuple(pre["spacing"]),
                            fit=pre["fit"], volume_index=pre["volume_index"], reader=pre.get("reader", "nifti"),
                            series=pre.get("series"))
        write_volume_cache(source["root"], [f["file"] for f in source["files"]], steps, cache, progress=progress)
    digest = _sha256(cache)
    if digest != info["sha256"]:
        raise DiffauditError(f"{cache} has SHA-256 {digest[:12]}... but the manifest recorded {info['sha256'][:12]}...; "
                             "it was changed: delete it so that it is rebuilt from the source")
    return PreparedVolumes(cache, source, name=manifest["dataset"], digest=digest)


_VERIFIED: dict[tuple, str] = {}


def _sha256(path: Path) -> str:
    """The SHA-256 of the cache's array (as the cache record states it), once per process per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = array_sha256(np.load(path, mmap_mode="r"))
    return _VERIFIED[key]


def remember(cache: Path, digest: str) -> None:
    """Record that ``cache`` (just written) has ``digest``, so that it is not hashed again in this process."""
    st = cache.stat()
    _VERIFIED[(str(cache.resolve()), st.st_size, st.st_mtime_ns)] = digest


def link_volumes(parent: dict, parent_run: str | os.PathLike, run: str | os.PathLike) -> tuple[PreparedVolumes, dict,
                                                                                            tuple[str, ...]]:
    """The prepared volumes of ``parent`` (a manifest of ``parent_run``) for another run of the same data (the
    control set): the cache linked (or copied) into ``run`` and checked, nothing preprocessed again."""
    import shutil

    src, dst = Path(parent_run) / parent["cache"]["file"], Path(run) / CACHE
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    data = open_volumes(parent, run)
    return data, {k: parent[k] for k in ("source", "cache", "preprocessing")}, tuple(_digests(data._images))
