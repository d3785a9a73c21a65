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
from .cache import (VOLUME_EXTENSIONS, MedMNIST3D, array_sha256, check_sources, list_series_folders, list_volumes,
                    write_volume_cache)
from .patients import attributes_for, patient_half, patients_of, read_attributes, split_volumes
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
        """int64 [N, 1]: a MedMNIST 3D volume's class; -1 for volumes without one."""
        return np.array([[f.get("label", -1)] for f in self.files[self._slice(split)]], dtype=np.int64).reshape(-1, 1)

    def patients(self, split: str) -> list[str | None]:
        return [f["patient"] for f in self.files[self._slice(split)]]

    def paths(self, split: str) -> list[str]:
        return [f["file"] for f in self.files[self._slice(split)]]


def prepare_volumes(cfg: PrepareConfig, run: str | os.PathLike, *, progress: bool = True,
                    log: Callable[[str], None] = print) -> tuple[PreparedVolumes, dict, tuple[str, ...]]:
    """Split the NIfTI volumes of ``cfg.data`` by patient, preprocess them into ``<run>/data/volumes.npy`` in split
    order; returns the prepared set, what the manifest records of it, and the digest of every volume."""
    root = Path(cfg.data).resolve()
    arrays, listed = None, None
    if root.is_file() and root.suffix.lower() in (".json", ".csv"):
        listed, root = _datalist(root, cfg), root.parent
    elif root.is_file() and root.name.lower().endswith(".npz"):
        arrays = MedMNIST3D(root)
        if cfg.attributes is not None or cfg.patient_pattern is not None or cfg.half is not None:
            raise DiffauditError("a MedMNIST 3D file names no scans or patients; --attributes, --patient-pattern and "
                                 "--half apply to folders of NIfTI volumes or DICOM series")
    elif root.is_file():
        raise DiffauditError(f"{cfg.data} is a file; a volume audit takes the folder that holds the NIfTI volumes "
                             "(.nii, .nii.gz), a datalist (.json, .csv) naming them, or a MedMNIST 3D .npz file")
    elif not root.is_dir():
        raise DiffauditError(f"{cfg.data} is not a folder; a volume audit takes the folder that holds the NIfTI "
                             "volumes, one folder per DICOM series, or a MedMNIST 3D .npz file")
    attributes, left_out, patients = None, [], None
    if arrays is not None:  # MedMNIST's own splits, one patient per volume
        reader, named = "medmnist3d", arrays.names()
        names, splits = [n for n, _ in named], [s for _, s in named]
    elif listed is not None:  # the datalist's splits, patients and labels
        reader, names = "nifti", [r["file"] for r in listed]
        splits = [r["split"] for r in listed]
        patients = [r["patient"] or r["file"] for r in listed]
    else:
        reader, names = volume_items(root, cfg)
        patients = patients_of(names, cfg.patient_pattern) if cfg.patient_pattern else None
        if cfg.half is not None:  # first: the halves depend on the patients alone
            keep = patient_half(names, patients, cfg.half)
            log(f"the {cfg.half} half of the patients: {len(keep)} of {len(names)} volumes")
            names = [names[k] for k in keep]
            patients = None if patients is None else [patients[k] for k in keep]
        if cfg.attributes is not None:
            names, patients, attributes, left_out = _with_attributes(cfg, root, names, patients, log)
        splits = split_volumes(root, names, patients=patients, ratios=cfg.split_ratios, seed=cfg.seed)
    order = [i for s in SPLITS for i in range(len(names)) if splits[i] == s]
    steps = steps_of(cfg, reader)
    cache = Path(run) / CACHE
    cache.parent.mkdir(parents=True, exist_ok=True)
    log(f"preprocessing {len(names)} {'DICOM series' if reader == 'dicom' else 'volumes'} of {root} to {'x'.join(map(str, steps.size))} (MONAI: RAS, "
        f"{'spacing ' + ','.join(map(str, steps.spacing)) + ' mm, ' if steps.spacing else ''}{steps.fit}"
        f"{', percentiles 0.5-99.5' if reader != 'medmnist3d' else ''})")
    record = write_volume_cache(root, [names[i] for i in order], steps, cache, skip_unreadable=cfg.skip_unreadable,
                                progress=progress)
    by_name = {names[i]: i for i in order}
    files = [{**f, "split": splits[by_name[f["file"]]],
              "patient": patients[by_name[f["file"]]] if patients else f["file"],
              **({"label": arrays.label(f["file"])} if arrays is not None else {}),
              **({"label": listed[by_name[f["file"]]]["code"]} if listed is not None else {}),
              **({"attributes": attributes[by_name[f["file"]]]} if attributes else {})} for f in record["files"]]
    for s in ("train",):
        if not any(f["split"] == s for f in files):
            raise DiffauditError(f"no volume of {root} could be read into the {s} split; fix the files or add volumes")
    if record["skipped"]:
        log(f"warning: {len(record['skipped'])} volumes could not be read and were left out "
            f"({record['skipped'][0]['file']}: {record['skipped'][0]['reason']}); recorded in manifest.json")
    source = {"kind": KIND, "root": str(root), "patient_pattern": cfg.patient_pattern, "half": cfg.half, "files": files,
              "skipped": record["skipped"] + left_out, "layout": record["layout"]}
    if cfg.attributes is not None:
        source["attributes"] = _attributes_record(cfg, root)
    manifest = {"source": source,
                "cache": {"file": CACHE.as_posix(), "sha256": record["sha256"], "shape": record["shape"]},
                "preprocessing": {"steps": record["steps"], "size": list(steps.size),
                                  "spacing": None if steps.spacing is None else list(steps.spacing),
                                  "fit": steps.fit, "volume_index": steps.volume_index, "reader": reader,
                                  "series": steps.series}}
    data = PreparedVolumes(cache, source, name=f"{KIND}:{root.name}", digest=record["sha256"])
    return data, manifest, tuple(_digests(data._images))


def _datalist(path: Path, cfg: PrepareConfig) -> list[dict]:
    """The NIfTI volumes a datalist names (MONAI's Decathlon JSON, or a CSV ``file,split[,label][,patient]``), each
    with its split, patient and class code (-1 without a label)."""
    from ..sources.annotate import encode_labels
    from ..sources.datalist import datalist_rows

    if cfg.attributes is not None or cfg.patient_pattern is not None or cfg.half is not None:
        raise DiffauditError("a datalist names each volume's split and patient itself; --attributes, "
                             "--patient-pattern and --half apply to folders of volumes")
    rows, _ = datalist_rows(path)
    other = [r["file"] for r in rows if not r["file"].lower().endswith(VOLUME_EXTENSIONS)]
    if other:
        raise DiffauditError(f"{path} names {other[0]}, which is not a NIfTI volume (.nii, .nii.gz); a volume datalist "
                             "names NIfTI files")
    if not any(r["split"] == "train" for r in rows):
        raise DiffauditError(f"{path} names no training volume; give it a 'training' list (or split train)")
    codes, _ = encode_labels(r["label"] for r in rows)
    return [{**r, "code": -1 if c is None else int(c)} for r, c in zip(rows, codes)]


def _with_attributes(cfg: PrepareConfig, root: Path, names: list[str], patients: list[str] | None,
                     log: Callable[[str], None]) -> tuple[list[str], list[str] | None, list[dict], list[dict]]:
    """(the volumes kept, their patients, each one's row of ``--attributes``, the volumes left out): with
    ``--condition-on``, a volume without a value in a condition column is left out (and listed); without, every volume is
    kept, with its row where it has one."""
    from ..conditions import attributes_path, column_of

    path = attributes_path(cfg.attributes, root)
    table = read_attributes(path)
    columns = [column_of(c) for c in cfg.condition]
    known = set(next(iter(table.values()), {}))
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise DiffauditError(f"--condition-on {unknown[0]}: {path.name} has no such column; it has "
                             f"{', '.join(sorted(known))}")
    rows, _ = attributes_for(names, table, patients)
    keep = [i for i, row in enumerate(rows) if not columns or (row is not None and
                                                               all(row.get(c, "") != "" for c in columns))]
    kept = set(keep)
    left_out = [{"file": names[i], "reason": f"no {'/'.join(columns)} in {path.name}"}
                for i in range(len(names)) if i not in kept]
    if not keep:
        raise DiffauditError(f"no volume of {root} has a row with {'/'.join(columns) or 'values'} in {path}: its "
                             "first column must name each scan (the file name up to the first '_', the name without "
                             "extension, or the patient)")
    if left_out:
        log(f"warning: {len(left_out)} volumes have no {'/'.join(columns)} in {path.name} and are left out "
            f"({left_out[0]['file']}, ...); recorded in manifest.json")
    return ([names[i] for i in keep], None if patients is None else [patients[i] for i in keep],
            [rows[i] for i in keep], left_out)


def _attributes_record(cfg: PrepareConfig, root: Path) -> dict:
    """What the manifest records of ``--attributes``: the file, its SHA-256, the condition columns and their encoding
    (:mod:`diffaudit.data.conditions`)."""
    from ..conditions import attributes_path, encoding

    path = attributes_path(cfg.attributes, root)
    table = read_attributes(path)
    return {"file": str(path), "sha256": _sha256_file(path), "condition": list(cfg.condition),
            "encoding": encoding(table, cfg.condition, path=path.name) if cfg.condition else []}


def _sha256_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


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
