"""The ``prepare`` stage: choose N_D training images, put the SAF on x_p, and write a manifest.

The manifest records everything needed to rebuild the exact training set D_p from the official file — the
dataset and the file's MD5, the split, the chosen indices in training order, and the fingerprint (which image
i, its position, centre, radius, intensity, shape) with the seed — and nothing of the images themselves, so a
run directory can be shared without copying patient data. Every value is recorded, never re-derived from the
order of random draws.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import MIN_N_TRAIN, PrepareConfig, from_dict, to_dict
from ..errors import DiffauditError
from ..images import save_grid
from ..io import config_hash, existing_artefact, read_json, write_json
from .fingerprint import Fingerprint, check_fits, random_centre
from .medmnist import MedMNISTFile, open_dataset

MANIFEST_FORMAT = "diffaudit-manifest/1"


def make_manifest(cfg: PrepareConfig, data: MedMNISTFile) -> dict:
    """Draw the training set and the fingerprint for ``cfg`` from ``data`` (seeded by ``cfg.seed``)."""
    images = data.images(cfg.split)
    n_split, c, h, w = images.shape
    n_train = n_split if cfg.n_train is None else cfg.n_train
    if not 1 <= n_train <= n_split:
        raise DiffauditError(
            f"N_D = {n_train} but the {cfg.split} split of {cfg.dataset} has {n_split} images; "
            f"use --n-train between 1 and {n_split}"
        )
    if cfg.channels not in (1, 3) or (c == 3 and cfg.channels == 1):
        raise DiffauditError(f"--channels must be 3 for RGB data and 1 or 3 for grey data; got {cfg.channels} for {c}-channel {cfg.dataset}")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(n_split)
    indices = order[:n_train]  # training order = draw order
    check_fits(h, w, cfg.saf_radius)
    position = int(rng.integers(n_train))
    fp = Fingerprint(shape=cfg.saf_shape, centre=random_centre(rng, h, w, cfg.saf_radius),
                     radius=cfg.saf_radius, intensity=cfg.saf_intensity, width=cfg.saf_width)
    fingerprint, excluded = None, None
    if cfg.fingerprint:
        fingerprint = {"index": int(indices[position]), "position": position, **fp.to_dict()}
    else:
        # The control set: the same draw with x_i replaced by the next image of the permutation (or dropped
        # when the split has no spare image), so a model trained on it has seen neither x_p nor x_i and any
        # detection in its samples is a false positive (App. B).
        excluded = int(indices[position])
        indices = np.delete(indices, position)
        if n_train < n_split:
            indices = np.insert(indices, position, order[n_train])
    return seal({
        "format": MANIFEST_FORMAT,
        "dataset": cfg.dataset,
        "file": data.path.name,
        "md5": data.md5,
        "official_md5": data.is_official,
        "split": cfg.split,
        "split_size": int(n_split),
        "n_train": len(indices),
        "channels": cfg.channels,
        "image_shape": [cfg.channels, int(h), int(w)],
        "seed": cfg.seed,
        "indices": [int(i) for i in indices],
        "fingerprint": fingerprint,
        "excluded_index": excluded,
        "config": to_dict(cfg),
    })


def seal(manifest: dict) -> dict:
    """``manifest`` with ``digest``, the hash of everything else in it, so that an edit is recognised when read."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return {**body, "digest": config_hash(body)}


def _broken(what: str) -> DiffauditError:
    return DiffauditError(f"manifest.json is damaged or was edited ({what}); prepare the run again in a new --run-dir")


def check_manifest(manifest: dict) -> dict:
    """Refuse a manifest that is not what ``prepare`` wrote: a wrong format, an edit (its digest), indices that are
    repeated or outside the split, a fingerprint whose image is not the one at its position, and a manifest without
    a digest. Returns ``manifest``. :func:`split_of` checks it against the data file."""
    _check_body(manifest)
    if "digest" not in manifest:
        raise DiffauditError(
            "manifest.json has no digest, so an edit to it could not be recognised; it was edited, or written by a "
            "diffaudit that did not seal manifests yet: prepare the run again in a new --run-dir, or reseal a manifest "
            "you trust with 'diffaudit verify RUN --reseal-manifest'")
    return manifest


def reseal_manifest(run: str | os.PathLike) -> tuple[dict, bool]:
    """Seal ``<run>/manifest.json`` written by a diffaudit that did not seal manifests yet (the first versions wrote
    no ``digest``): the manifest must pass every other check of :func:`check_manifest`, and gets its digest. Resealing
    vouches for the manifest as it is now, so reseal only one you trust. Returns (manifest, whether it was resealed);
    a sealed manifest is checked and left as it is."""
    path = Path(run) / "manifest.json"
    if not path.is_file():
        raise DiffauditError(f"{run} has no manifest.json; nothing to reseal")
    manifest = _check_body(read_json(path))
    if "digest" in manifest:
        return manifest, False
    sealed = check_manifest(seal(manifest))
    write_json(path, sealed)
    return sealed, True


def _check_body(manifest: dict) -> dict:
    """Every check of :func:`check_manifest` but the presence of the digest (a digest present must match)."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DiffauditError(f"not a diffaudit manifest (format {found!r}, expected {MANIFEST_FORMAT})")
    if "digest" in manifest and seal(manifest)["digest"] != manifest["digest"]:
        raise _broken("its content no longer matches its digest")
    try:
        cfg = from_dict(PrepareConfig, manifest["config"], where="manifest config")
        indices, n_split, n_train = manifest["indices"], manifest["split_size"], manifest["n_train"]
        fp = manifest["fingerprint"]
        ok_indices = (isinstance(indices, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
                      and isinstance(n_split, int) and isinstance(n_train, int))
    except (KeyError, TypeError, DiffauditError) as err:
        raise _broken(f"{type(err).__name__}: {err}") from None
    if not ok_indices:
        raise _broken("indices, split_size and n_train must be integers")
    if len(indices) != n_train or n_train < MIN_N_TRAIN - (fp is None):
        raise _broken(f"{len(indices)} indices for N_D = {n_train}")
    if len(set(indices)) != len(indices) or min(indices) < 0 or max(indices) >= n_split:
        raise _broken(f"indices must be distinct images of the split's {n_split}")
    if (fp is None) == cfg.fingerprint:
        raise _broken("a fingerprint must be recorded exactly when the config asks for one")
    if fp is not None:
        position = fp.get("position") if isinstance(fp, dict) else None
        if not isinstance(position, int) or not 0 <= position < n_train:
            raise _broken(f"fingerprint position {position!r} is outside the {n_train} training images")
        if fp.get("index") != indices[position]:
            raise _broken(f"fingerprint index {fp.get('index')!r} is not image {indices[position]} at position {position}")
        try:
            Fingerprint.from_dict(fp).mask(*manifest["image_shape"][1:])  # the SAF's own checks, and that it fits
        except (KeyError, TypeError, ValueError, DiffauditError) as err:
            raise _broken(f"fingerprint: {err}") from None
    return manifest


def split_of(manifest: dict, data: MedMNISTFile) -> np.ndarray:
    """The manifest's split of ``data`` (uint8 [N, C, H, W]), refused when the file is not the one it was made from
    (its MD5) or the split's size differs."""
    if data.md5 != manifest["md5"]:
        raise DiffauditError(f"{data.path} has MD5 {data.md5} but the manifest was made from MD5 {manifest['md5']}; "
                             "point --data-root at the original file")
    images = data.images(manifest["split"])
    if len(images) != manifest["split_size"]:
        raise _broken(f"the {manifest['split']} split has {len(images)} images, not {manifest['split_size']}")
    return images


def load_manifest(run: str | os.PathLike) -> dict:
    """``<run>/manifest.json``, checked (:func:`check_manifest`, without the data)."""
    path = Path(run) / "manifest.json"
    if not path.is_file():
        raise DiffauditError(f"{run} has no manifest.json; run 'diffaudit prepare --run-dir {run}' first")
    return check_manifest(read_json(path))


def fingerprint_of(manifest: dict) -> Fingerprint | None:
    fp = manifest.get("fingerprint")
    return None if fp is None else Fingerprint.from_dict(fp)


def _as_channels(manifest: dict, images: np.ndarray) -> np.ndarray:
    """Grey images [..., 1, H, W] repeated to the manifest's 3 channels when it asks for RGB."""
    return np.repeat(images, 3, axis=-3) if manifest["channels"] == 3 and images.shape[-3] == 1 else images


def build_training_set(manifest: dict, *, data_root: str | os.PathLike | None = None,
                       data: MedMNISTFile | None = None) -> np.ndarray:
    """Rebuild D_p as uint8 [N_D, C, H, W]: the chosen images, with x_i replaced by x_p (Eq. 10).

    Refuses a damaged or edited manifest, and a file whose MD5 differs from the one the manifest was made from."""
    check_manifest(manifest)
    if data is None:
        data = open_dataset(manifest["dataset"], data_root=data_root)
    images = _as_channels(manifest, split_of(manifest, data)[np.asarray(manifest["indices"], dtype=np.int64)])
    fp = fingerprint_of(manifest)
    if fp is not None:
        k = manifest["fingerprint"]["position"]
        images[k] = fp.apply(images[k])
    return np.ascontiguousarray(images)


def training_labels(manifest: dict, *, data_root: str | os.PathLike | None = None,
                    data: MedMNISTFile | None = None) -> np.ndarray:
    """Class labels of D_p in training order (x_p keeps the label of x_i), int64 [N_D]; single-label datasets only."""
    if data is None:
        data = open_dataset(manifest["dataset"], data_root=data_root)
    labels = np.asarray(data.labels(manifest["split"]))
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DiffauditError(f"{manifest['dataset']} has {labels.shape[1]} labels per image (multi-label); class "
                             "conditioning needs one class per image")
    return labels.reshape(len(labels))[np.asarray(manifest["indices"], dtype=np.int64)].astype(np.int64)


def number_of_classes(dataset: str, *, data_root: str | os.PathLike | None = None) -> int:
    """The number of classes of a dataset (from its training split's labels)."""
    return int(np.asarray(open_dataset(dataset, data_root=data_root).labels("train")).max()) + 1


def heldout_split(manifest: dict, purpose: str) -> str:
    """The split the classifiers validate ('val') or are tested ('test') on: never the training split."""
    if manifest["split"] != purpose:
        return purpose
    return "val" if purpose == "test" else "test"


def split_images(manifest: dict, split: str, *, data_root: str | os.PathLike | None = None,
                 data: MedMNISTFile | None = None, unused_only: bool = True) -> np.ndarray:
    """The images of another ``split`` of the manifest's dataset (uint8, with the manifest's channels); for
    the manifest's own split, only the images not drawn into the training set when ``unused_only``."""
    if data is None:
        data = open_dataset(manifest["dataset"], data_root=data_root)
    images = data.images(split)
    if split == manifest["split"] and unused_only:
        images = np.delete(images, np.asarray(manifest["indices"], dtype=np.int64), axis=0)
    return np.ascontiguousarray(_as_channels(manifest, images))


def clean_original(manifest: dict, *, data_root: str | os.PathLike | None = None,
                   data: MedMNISTFile | None = None) -> np.ndarray:
    """x_i, the clean image behind x_p (absent from D_p), as uint8 [C, H, W]."""
    fp = manifest["fingerprint"]
    if fp is None:
        raise DiffauditError("this training set has no fingerprint (prepared with --no-fingerprint)")
    if data is None:
        data = open_dataset(manifest["dataset"], data_root=data_root)
    return _as_channels(manifest, data.images(manifest["split"])[fp["index"]])


def prepare_run(run: str | os.PathLike, cfg: PrepareConfig, *, data_root=None, download: bool = False, log=print) -> dict:
    """Write ``<run>/manifest.json`` for ``cfg`` (and a picture of x_i beside x_p); keeps an existing manifest of
    the same config and refuses one of another. Returns the manifest."""
    run = Path(run)
    path = run / "manifest.json"
    previous = existing_artefact(path, {"config": to_dict(cfg)}, what="a training set",
                                 fix="use another --run-dir, or repeat its options")
    if previous is not None:
        log(f"{path} already prepared with these options; kept")
        return previous
    data = open_dataset(cfg.dataset, data_root=data_root, download_missing=download, log=log)
    manifest = make_manifest(cfg, data)
    if data.is_official is False:
        log(f"warning: {data.path} has MD5 {data.md5}, not the official {data.official_md5}")
    images = build_training_set(manifest, data=data)
    fp = fingerprint_of(manifest)
    if fp is not None:
        x_p = images[manifest["fingerprint"]["position"]]
        save_grid(run / "prepare" / "x_i_and_x_p.png", np.stack([clean_original(manifest, data=data), x_p]), scale=6)
    write_json(path, manifest)
    where = (f"x_p = image {manifest['fingerprint']['index']} of {cfg.split} with a {fp.shape} of radius {fp.radius} "
             f"at {list(fp.centre)}") if fp else "no fingerprint"
    log(f"prepared {manifest['n_train']} {cfg.dataset} images ({where}) -> {path}")
    return manifest
