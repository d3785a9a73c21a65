"""The ``export`` stage: a prepared training set D_p (x_p with its SAF, x_i left out) in a form other trainers read.

Formats:

* ``imagefolder``: one PNG per image, ``<label>/<position>.png`` (class subfolders, torchvision's and 🤗 datasets'
  ImageFolder layout) or ``images/<position>.png`` for datasets without single labels, and ``metadata.jsonl``
  (``file_name``, ``label``) for 🤗 datasets' ``imagefolder`` loader.
* ``npz``: a MedMNIST-style ``train.npz`` with ``train_images`` uint8 [N, H, W] or [N, H, W, 3] and ``train_labels``
  [N, 1]; of volumes, MedMNIST 3D's uint8 [N, D, H, W].
* ``nifti`` (volumes only): one ``volumes/<position>.nii.gz`` per volume, uint8 in RAS+ with the prepared voxel
  spacing (the file's own where ``--spacing`` was not given: then the affine is the identity), and ``metadata.jsonl``.
  Volumes are exported as prepared; ``--size`` and ``--channels`` apply to images.

``--channels 3`` repeats grey to RGB (as the paper did) and ``--size S`` resizes with PIL's bicubic filter
(:func:`diffaudit.images.resize_uint8`, the same function the audit later applies to x_p). Which image is x_p is
**not** written into the export: the set looks like any training set, so nothing in it leads a trainer (or whoever
receives the files) to treat the canary differently; the manifest alone records it.

``export.json`` in the export folder records the format, size, channels and resize, the manifest's digest, and the
SHA-256 of every file with one digest over them all; a copy goes to ``<run>/export/<digest>.json``. A training script
that copies ``export.json`` beside the model it saves (``examples/train_diffusers.py`` does) lets the audit confirm that
the model was trained on exactly this set.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DiffauditError
from ..images import resize_uint8
from ..io import atomic_dir, config_hash, read_json, write_json
from .prepare import build_training_set, load_manifest, training_labels

EXPORT_FORMATS = ("imagefolder", "npz", "nifti")
EXPORT_RECORD = "export.json"
RESIZE = "PIL bicubic"


def _labels(manifest: dict, data_root) -> np.ndarray | None:
    try:
        return training_labels(manifest, data_root=data_root)
    except DiffauditError:  # a multi-label dataset: no class folders
        return None


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def export_run(run: str | Path, *, fmt: str = "imagefolder", out: str | Path | None = None, channels: int | None = None,
               size: int | None = None, data_root=None) -> dict:
    """Write the training set of ``run`` to ``out`` (default ``<run>/export/<fmt>-<C>c-<S>px``); returns the record."""
    run = Path(run)
    if fmt not in EXPORT_FORMATS:
        raise DiffauditError(f"unknown export format '{fmt}'; choose one of {', '.join(EXPORT_FORMATS)}")
    manifest = load_manifest(run)
    images = build_training_set(manifest, data_root=data_root)
    if images.ndim == 5:
        return _export_volumes(run, manifest, images, fmt=fmt, out=out, channels=channels, size=size)
    if fmt == "nifti":
        raise DiffauditError("--format nifti writes volumes; this run's training set is 2D images: use imagefolder or npz")
    c, h, w = images.shape[1:]
    channels = c if channels is None else channels
    size = h if size is None else size
    if channels not in (c, 3):
        raise DiffauditError(f"--channels {channels} does not fit {c}-channel images; use {c}" + (" or 3" if c == 1 else ""))
    if size < h or h != w:
        raise DiffauditError(f"--size {size} is below the images' {h}x{w}; export at {h} or larger")
    if size > 1024:
        raise DiffauditError(f"--size {size} is larger than any model diffaudit audits; use at most 1024")
    out = Path(out) if out is not None else run / "export" / f"{fmt}-{channels}c-{size}px"
    if out.exists() and not out.is_dir():
        raise DiffauditError(f"--out {out} is a file; give a folder")
    above = next((a for a in out.parents if a.exists() or a.is_symlink()), None)
    if above is not None and not above.is_dir():
        raise DiffauditError(f"--out {out} lies inside {above}, which is a file, not a folder; give a folder path")
    shaped = np.stack([resize_uint8(im, size=size, channels=channels) for im in images])
    labels = _labels(manifest, data_root)
    files: dict[str, bytes] = {}
    if fmt == "imagefolder":
        rows = []
        for pos, im in enumerate(shaped):
            name = f"{labels[pos]}/{pos:05d}.png" if labels is not None else f"images/{pos:05d}.png"
            files[name] = _png(im)
            rows.append({"file_name": name, **({"label": int(labels[pos])} if labels is not None else {})})
        files["metadata.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    else:
        buf = io.BytesIO()
        arrays = {"train_images": shaped[:, 0] if channels == 1 else shaped.transpose(0, 2, 3, 1)}
        if labels is not None:
            arrays["train_labels"] = labels.reshape(-1, 1).astype(np.uint8)
        np.savez_compressed(buf, **arrays)
        files["train.npz"] = buf.getvalue()
    record = {"format": fmt, "n_images": int(len(shaped)), "channels": channels, "size": size,
              "resize": RESIZE if size != h else None, "source_shape": [int(c), int(h), int(w)],
              "labels": labels is not None, "manifest_digest": manifest.get("digest"), "dataset": manifest["dataset"]}
    return _write(run, out, files, record)


def _export_volumes(run: Path, manifest: dict, volumes: np.ndarray, *, fmt: str, out, channels, size) -> dict:
    """The volume training set as MedMNIST 3D's ``train.npz`` or one NIfTI file per volume (module docstring)."""
    if fmt == "imagefolder":
        raise DiffauditError("this run's training set is volumes: export it with --format nifti or npz")
    if channels not in (None, volumes.shape[1]) or (size is not None and not isinstance(size, tuple)):
        raise DiffauditError("--channels and --size resize images; volumes are exported as prepared (leave them out)")
    if volumes.shape[1] != 1:
        raise DiffauditError(f"volumes of {volumes.shape[1]} channels cannot be exported as one-channel NIfTI or npz")
    out = Path(out) if out is not None else run / "export" / f"{fmt}-volumes"
    if out.exists() and not out.is_dir():
        raise DiffauditError(f"--out {out} is a file; give a folder")
    files: dict[str, bytes] = {}
    if fmt == "npz":
        buf = io.BytesIO()
        np.savez_compressed(buf, train_images=volumes[:, 0])
        files["train.npz"] = buf.getvalue()
    else:
        import gzip

        import nibabel as nib

        spacing = manifest["preprocessing"].get("spacing") or [1.0, 1.0, 1.0]
        affine = np.diag([*map(float, spacing), 1.0])
        rows = []
        for pos, v in enumerate(volumes):
            name = f"volumes/{pos:05d}.nii.gz"
            image = nib.Nifti1Image(np.ascontiguousarray(v[0]), affine)
            image.header.set_xyzt_units("mm")
            files[name] = gzip.compress(image.to_bytes(), mtime=0)  # mtime 0: the same bytes on every export
            rows.append({"file_name": name})
        files["metadata.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    record = {"format": fmt, "n_images": int(len(volumes)), "channels": 1, "size": list(volumes.shape[2:]),
              "resize": None, "source_shape": list(volumes.shape[1:]), "labels": False, "layout": "RAS+",
              "spacing_mm": manifest["preprocessing"].get("spacing"), "manifest_digest": manifest.get("digest"),
              "dataset": manifest["dataset"]}
    return _write(run, out, files, record)


def _write(run: Path, out: Path, files: dict[str, bytes], record: dict) -> dict:
    """``files`` and ``export.json`` written to ``out`` at once (a temporary folder renamed), and the record's copy
    in the run; an identical export already there is kept, any other non-empty folder refused."""
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    record = {**record, "files": digests, "digest": config_hash(digests)}
    if out.is_dir() and any(out.iterdir()):
        if _same_export(out, record):
            return record
        raise DiffauditError(f"{out} is not empty; give an empty or new --out folder")
    with atomic_dir(out) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        write_json(tmp / EXPORT_RECORD, record)
    write_json(run / "export" / f"{record['digest']}.json", {**record, "folder": str(out.resolve())})
    return record


def _same_export(out: Path, record: dict) -> bool:
    """Whether ``out`` holds this very export already (its ``export.json`` equal to ``record`` and every file with
    its recorded SHA-256): then it is kept."""
    path = out / EXPORT_RECORD
    if not path.is_file():
        return False
    old = read_json(path, expect=dict, fix=f"give an empty or new --out folder (or delete {out} to export there again)")
    if old != json.loads(json.dumps(record)):
        return False
    for name, want in record["files"].items():
        target = out / name
        if not target.is_file() or hashlib.sha256(target.read_bytes()).hexdigest() != want:
            return False
    return True


def check_training_record(folder: Path, manifest: dict) -> dict:
    """What a model folder says about its training data: ``export.json`` copied there by the training script. Refuses
    a model trained on another run's set; returns {"confirmed": bool, ...} for the provenance."""
    path = folder / EXPORT_RECORD
    if not path.is_file():
        return {"confirmed": False, "note": f"no {EXPORT_RECORD} beside the model: the audit cannot confirm which set "
                                            "it was trained on"}
    record = read_json(path, expect=dict, fix=f"copy the {EXPORT_RECORD} of the export the model was trained on beside it")
    if record.get("manifest_digest") != manifest.get("digest"):
        raise DiffauditError(f"{folder} was trained on an export of another training set (manifest "
                             f"{record.get('manifest_digest')}, this run's {manifest.get('digest')}); audit it in the "
                             "run it was exported from")
    return {"confirmed": True, "export_digest": record.get("digest"), "format": record.get("format"),
            "channels": record.get("channels"), "size": record.get("size"), "resize": record.get("resize")}
