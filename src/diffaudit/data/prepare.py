"""The ``prepare`` stage: choose N_D training images, put the SAF on x_p, and write a manifest.

The manifest records everything needed to rebuild the exact training set D_p from the official file — the
dataset and the file's MD5, the split, the chosen indices in training order, and the fingerprint (which image
i, its position, centre, radius, intensity, shape) with the seed — and nothing of the images themselves, so a
run directory can be shared without copying patient data. Every value is recorded, never re-derived from the
order of random draws.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from ..config import MIN_N_TRAIN, PrepareConfig, from_dict, to_dict
from ..errors import DiffauditError
from ..images import orthogonal_slices, save_grid
from ..io import config_hash, existing_artefact, read_json, write_json
from .canaries import apply_canaries, check_canaries, draw_canaries, training_rows
from .dataset import (CACHE, data_digest, is_source, open_config_data, open_data, prepare_source, reuse_source,
                      scan_source)
from .fingerprint import Fingerprint, check_fits
from .medmnist import open_dataset
from .volumes.prepared import CACHE as VOLUME_CACHE
from .volumes.prepared import is_volume_config, link_volumes, prepare_volumes

MANIFEST_FORMAT = "diffaudit-manifest/1"


def _draw(cfg: PrepareConfig, n_split: int, rng: np.random.Generator, blocked_by) -> tuple[list[int], int, list[dict]]:
    """The training draw: a seeded permutation of the split whose first N_D images form D_p, and x_i's position.

    ``blocked_by(i)`` names the images that may not train beside x_i = image i (its pixel twins and its patient's
    other images, with the reason): each is replaced in place by the next image of the permutation that is not
    blocked, or dropped when none is left. Returns (indices in training order, x_i's position, what was removed).
    Without blocked images this is exactly the draw of earlier versions (same seed, same training set)."""
    order = rng.permutation(n_split)
    n_train = n_split if cfg.n_train is None else cfg.n_train
    if not 1 <= n_train <= n_split:
        raise DiffauditError(
            f"N_D = {n_train} but the {cfg.split} split of {cfg.data or cfg.dataset} has {n_split} images; "
            f"use --n-train between 1 and {n_split}"
        )
    position = int(rng.integers(n_train))
    x_i = int(order[position])
    blocked = {j: why for j, why in blocked_by(x_i).items() if j != x_i}
    spare = iter(int(j) for j in order[n_train:] if int(j) not in blocked)
    indices, removed = [], []
    for j in (int(j) for j in order[:n_train]):
        if j in blocked:
            removed.append({"index": j, "reason": blocked[j]})
            j = next(spare, None)
        if j is not None:
            indices.append(j)
    return indices, indices.index(x_i), removed


def _blocked(digests: list[str], patients: list[str | None]):
    """``blocked_by`` of :func:`_draw`: the images of the split that share x_i's pixels or patient."""
    def blocked_by(i: int) -> dict[int, str]:
        out = {j: "same pixels as x_i" for j, d in enumerate(digests) if d == digests[i]}
        if patients[i] is not None:
            out.update({j: f"same patient as x_i ({patients[i]})" for j, p in enumerate(patients) if p == patients[i]})
        return out
    return blocked_by


def _duplicates(digests: list[str], indices: list[int], heldout: list[str]) -> dict:
    """What the manifest says of identical images: groups inside D_p (they change what N_D means) and held-out
    images identical to a training image (they are no held-out image)."""
    from .sources import duplicate_groups

    inside = duplicate_groups([digests[i] for i in indices], ["train"] * len(indices)).get("train", [])
    trained = {digests[i] for i in indices}
    return {"groups_in_training_set": len(inside),
            "images_in_groups": sum(len(g) for g in inside),
            "example_positions": inside[:5],
            "heldout_identical_to_training": sum(d in trained for d in heldout)}


def make_manifest(cfg: PrepareConfig, data, *, source: dict | None = None,
                  digests: list[str] | None = None) -> dict:
    """Draw the training set and the fingerprint for ``cfg`` from ``data`` (a MedMNIST file, or a prepared source
    with ``source``, what the manifest records of it, and the pixel digest of every image); seeded by ``cfg.seed``."""
    from .sources import pixel_digest

    images = data.images(cfg.split)
    n_split, c, *sides = images.shape
    volume = len(sides) == 3
    if cfg.channels not in (1, 3) or (c == 3 and cfg.channels == 1) or (volume and cfg.channels != c):
        raise DiffauditError(f"--channels must be 3 for RGB data and 1 or 3 for grey data (a volume keeps its channels); "
                             f"got {cfg.channels} for {c}-channel {cfg.data or cfg.dataset}")
    first = 0 if source is None else data._slice(cfg.split).start
    split_digests = ([pixel_digest(x) for x in images] if digests is None else list(digests[first:first + n_split]))
    patients = data.patients(cfg.split) if hasattr(data, "patients") else [None] * n_split
    rng = np.random.default_rng(cfg.seed)
    radius, width = cfg.saf_pixels(min(sides) if volume else sides[-1])
    if cfg.fingerprint:
        check_fits(*sides[:2], radius, *sides[2:])
    blocked_by = _blocked(split_digests, patients)
    fingerprint, excluded, canaries = None, None, None
    if cfg.many_canaries:
        drawn = draw_canaries(cfg, images, rng, blocked_by, _placer(cfg, volume, radius, width))
        indices, removed, fingerprint, canaries = (drawn[k] for k in ("indices", "removed", "fingerprint", "canaries"))
    else:
        indices, position, removed = _draw(cfg, n_split, rng, blocked_by)
    if cfg.fingerprint and not cfg.many_canaries:
        fp, placement = _placer(cfg, volume, radius, width)(images[indices[position]], rng)
        fingerprint = {"index": indices[position], "position": position, **fp.to_dict(), "placement": placement}
    elif not cfg.fingerprint:
        # The control set: the same draw with x_i replaced by the next unused image of the permutation (or dropped
        # when the split has no spare image), so a model trained on it has seen neither x_p nor x_i and any
        # detection in its samples is a false positive (App. B).
        excluded = indices[position]
        used = set(indices) | set(blocked_by(excluded))
        spare = _next_spare(cfg, n_split, used)
        del indices[position]
        if spare is not None:
            indices.insert(position, spare)
    heldout = [] if source is None else [d for k, d in enumerate(digests) if not first <= k < first + n_split]
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": data.dataset,
        "file": data.path.name if source is None else None,
        "md5": data_digest(data) if source is None else None,
        "official_md5": data.is_official,
        "split": cfg.split,
        "split_size": int(n_split),
        "n_train": len(indices),
        "channels": cfg.channels,
        "image_shape": [cfg.channels, *(int(v) for v in sides)],
        "seed": cfg.seed,
        "indices": [int(i) for i in indices],
        "fingerprint": fingerprint,
        "excluded_index": excluded,
        "removed": removed,
        "duplicates": _duplicates(split_digests, indices, heldout),
        "config": to_dict(cfg),
    }
    if canaries is not None:
        manifest["canaries"] = canaries
    if source is not None:
        manifest.update(source)
    return seal(manifest)


def _placer(cfg: PrepareConfig, volume: bool, radius: float, width: float):
    """``place(x, rng)`` of :func:`draw_canaries`: the SAF of ``cfg`` placed on image (volume) x by the rule of one
    canary; returns (Fingerprint, placement dict)."""
    if volume:
        from .volumes.fingerprint import place_saf
    else:
        from .placement import place_saf
    shape = cfg.volume_saf_shape() if volume else cfg.saf_shape

    def place(x: np.ndarray, rng: np.random.Generator):
        placed = place_saf(np.asarray(as_channels({"channels": cfg.channels}, x)), rng, shape=shape, radius=radius,
                           width=width, intensity=cfg.saf_intensity, min_contrast=cfg.saf_contrast)
        fp = Fingerprint(shape=shape, centre=placed.centre, radius=radius, intensity=placed.intensity, width=width)
        return fp, placed.to_dict()
    return place


def _next_spare(cfg: PrepareConfig, n_split: int, used: set[int]) -> int | None:
    """The control set's replacement for x_i: the next image of the seed's permutation not drawn yet."""
    if cfg.n_train is None:
        return None
    order = np.random.default_rng(cfg.seed).permutation(n_split)
    return next((int(j) for j in order if int(j) not in used), None)


def seal(manifest: dict) -> dict:
    """``manifest`` with ``digest``, the hash of everything else in it, so that an edit is recognised when read."""
    body = {k: v for k, v in manifest.items() if k != "digest" and not k.startswith("_")}
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
    check_canaries(manifest, _broken)
    return manifest


def split_of(manifest: dict, data) -> np.ndarray:
    """The manifest's split of ``data`` (uint8 [N, C, H, W]), refused when the data is not what it was made from
    (the MedMNIST file's MD5, the prepared source's SHA-256) or the split's size differs."""
    if is_source(manifest) != (data.__class__.__name__ in ("PreparedSet", "PreparedVolumes")):
        raise DiffauditError(f"the manifest was made from {manifest['dataset']}, not from {data.dataset}")
    want = manifest["cache"]["sha256"] if is_source(manifest) else manifest["md5"]
    if data_digest(data) != want:
        kind = "SHA-256" if is_source(manifest) else "MD5"
        raise DiffauditError(f"{data.path} has {kind} {data_digest(data)} but the manifest was made from {kind} {want}; "
                             + ("delete it so that it is rebuilt from the source" if is_source(manifest)
                                else "point --data-root at the original file"))
    images = data.images(manifest["split"])
    if len(images) != manifest["split_size"]:
        raise _broken(f"the {manifest['split']} split has {len(images)} images, not {manifest['split_size']}")
    return images


def load_manifest(run: str | os.PathLike) -> dict:
    """``<run>/manifest.json``, checked (:func:`check_manifest`, without the data); it remembers its run (``_run``,
    outside the sealed content) so that a source's prepared images are found there."""
    path = Path(run) / "manifest.json"
    if not path.is_file():
        raise DiffauditError(f"{run} has no manifest.json; run 'diffaudit prepare --run-dir {run}' first")
    return {**check_manifest(read_json(path)), "_run": str(run)}


def fingerprint_of(manifest: dict) -> Fingerprint | None:
    fp = manifest.get("fingerprint")
    return None if fp is None else Fingerprint.from_dict(fp)


def as_channels(manifest: dict, images: np.ndarray) -> np.ndarray:
    """Grey images [..., 1, H, W] repeated to the manifest's 3 channels when it asks for RGB (a volume keeps its
    channels: ``make_manifest`` refuses other channels for volumes)."""
    spatial = len(manifest.get("image_shape", ())) - 1 if "image_shape" in manifest else 2
    axis = -1 - spatial
    return np.repeat(images, 3, axis=axis) if manifest["channels"] == 3 and images.shape[axis] == 1 else images


def build_training_set(manifest: dict, *, data_root: str | os.PathLike | None = None,
                       data=None) -> np.ndarray:
    """Rebuild D_p as uint8 [N_D, C, H, W]: the chosen images, with x_i replaced by x_p (Eq. 10).

    Refuses a damaged or edited manifest, and a file whose MD5 differs from the one the manifest was made from."""
    check_manifest(manifest)
    if data is None:
        data = open_data(manifest, data_root=data_root)
    images = as_channels(manifest, split_of(manifest, data)[np.asarray(manifest["indices"], dtype=np.int64)])
    fp = fingerprint_of(manifest)
    if fp is not None:
        k = manifest["fingerprint"]["position"]
        images[k] = fp.apply(images[k])
    return np.ascontiguousarray(apply_canaries(manifest, images))


def training_labels(manifest: dict, *, data_root: str | os.PathLike | None = None,
                    data=None) -> np.ndarray:
    """Class labels of D_p in training order (x_p keeps the label of x_i), int64 [N_D]; single-label datasets only."""
    if data is None:
        data = open_data(manifest, data_root=data_root)
    labels = np.asarray(data.labels(manifest["split"]))
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DiffauditError(f"{manifest['dataset']} has {labels.shape[1]} labels per image (multi-label); class "
                             "conditioning needs one class per image")
    return labels.reshape(len(labels))[row_indices(manifest)].astype(np.int64)


def row_indices(manifest: dict) -> np.ndarray:
    """The split index of every row of D_p, in training order (a duplicated canary's index once per copy)."""
    return np.asarray(manifest["indices"], dtype=np.int64)[training_rows(manifest)]


def _classes(data, what: str) -> int:
    n = int(np.asarray(data.labels("train")).max()) + 1
    if n < 1:
        raise DiffauditError(f"{what} has no class labels; give them by class subfolders, --labels FILE.csv or a "
                             "datalist's label column, or audit without --class-conditional")
    return n


def number_of_classes(dataset: str, *, data_root: str | os.PathLike | None = None, size: int | None = None) -> int:
    """The number of classes of a MedMNIST dataset (from its training split's labels)."""
    return _classes(open_dataset(dataset, data_root=data_root, size=size), dataset)


def number_of_classes_for(cfg: PrepareConfig, *, data_root: str | os.PathLike | None = None) -> int:
    """The number of classes of the data ``cfg`` names: a MedMNIST file, or a ``--data`` source (scanned for its
    labels only; nothing is decoded twice later, the prepare stage scans it again)."""
    if cfg.data is None:
        return number_of_classes(cfg.dataset, data_root=data_root, size=cfg.size)
    labels = [r.label for r in scan_source(cfg, log=lambda _: None) if r.split == "train"]
    known = [x for x in labels if x is not None]
    if not known:
        raise DiffauditError(f"{cfg.data} has no class labels; give them by class subfolders, --labels FILE.csv or a "
                             "datalist's label column, or audit without --class-conditional")
    return max(known) + 1


def classes_of(manifest: dict, *, data_root: str | os.PathLike | None = None) -> int:
    """The number of classes of the data a manifest was made from."""
    return _classes(open_data(manifest, data_root=data_root), manifest["dataset"])


def labelled_classes(manifest: dict, *, data_root: str | os.PathLike | None = None) -> int:
    """The number of classes of the data a manifest was made from, 0 when it has no labels (volumes, an unlabelled
    folder): what a model given with --model must be conditioned on."""
    data = open_data(manifest, data_root=data_root)
    return max(0, int(np.asarray(data.labels("train"), dtype=np.int64).max(initial=-1)) + 1)


def heldout_split(manifest: dict, purpose: str) -> str:
    """The split the classifiers validate ('val') or are tested ('test') on: never the training split."""
    if manifest["split"] != purpose:
        return purpose
    return "val" if purpose == "test" else "test"


def split_images(manifest: dict, split: str, *, data_root: str | os.PathLike | None = None,
                 data=None, unused_only: bool = True) -> np.ndarray:
    """The images of another ``split`` of the manifest's dataset (uint8, with the manifest's channels); for
    the manifest's own split, only the images not drawn into the training set when ``unused_only``."""
    if data is None:
        data = open_data(manifest, data_root=data_root)
    images = data.images(split)
    if split == manifest["split"] and unused_only:
        images = np.delete(images, np.asarray(manifest["indices"], dtype=np.int64), axis=0)
    return np.array(as_channels(manifest, images), order="C")  # a writable copy, never the memory map


def clean_original(manifest: dict, *, data_root: str | os.PathLike | None = None,
                   data=None) -> np.ndarray:
    """x_i, the clean image behind x_p (absent from D_p), as uint8 [C, H, W]."""
    fp = manifest["fingerprint"]
    if fp is None:
        raise DiffauditError("this training set has no fingerprint (prepared with --no-fingerprint)")
    if data is None:
        data = open_data(manifest, data_root=data_root)
    return np.array(as_channels(manifest, data.images(manifest["split"])[fp["index"]]))


def prepare_run(run: str | os.PathLike, cfg: PrepareConfig, *, data_root=None, download: bool = False, log=print,
                progress: bool = True, same_data: str | os.PathLike | None = None) -> dict:
    """Write ``<run>/manifest.json`` for ``cfg`` (and a picture of x_i, x_p and the foreground the SAF lies on); a
    ``--data`` source is first scanned and prepared into ``<run>/data/images.npy``. Keeps an existing manifest of the
    same config and refuses one of another; a refused source leaves no cache behind. ``same_data``: a run prepared
    from the same source whose cache is reused (the control set's), so nothing is decoded twice. Returns the
    manifest."""
    run = Path(run)
    path = run / "manifest.json"
    previous = existing_artefact(path, {"config": to_dict(cfg)}, what="a training set",
                                 fix="use another --run-dir, or repeat its options")
    if previous is not None:
        log(f"{path} already prepared with these options; kept")
        return {**previous, "_run": str(run)}
    if cfg.data is None and isinstance(cfg.size, tuple):
        raise DiffauditError(f"a size of three sides ({','.join(map(str, cfg.size))}) audits volumes: give the folder of "
                             "NIfTI volumes with --data (e.g. --data ../shared/data/ixi-t1)")
    if cfg.data is None:
        data = open_config_data(cfg, data_root=data_root, download=download, log=log)
        manifest = make_manifest(cfg, data)
        if data.is_official is False:
            log(f"warning: {data.path} has MD5 {data.md5}, not the official {data.official_md5}")
    else:
        cache = VOLUME_CACHE if is_volume_config(cfg) else CACHE
        made, before = not run.exists(), _stat(run / cache)
        try:
            parent = _same_source(cfg, same_data)
            if is_volume_config(cfg):
                data, record, digests = (prepare_volumes(cfg, run, progress=progress, log=log) if parent is None
                                         else link_volumes(parent, same_data, run))
            else:
                data, record, digests = (prepare_source(cfg, run, progress=progress, log=log) if parent is None
                                         else reuse_source(parent, same_data, run))
            manifest = make_manifest(cfg, data, source=record, digests=digests)
        except BaseException:
            _remove_cache(run, made, before, cache)
            raise
    _say_duplicates(manifest, log)
    images = build_training_set(manifest, data=data)
    fp = fingerprint_of(manifest)
    if fp is not None:
        x_i = clean_original(manifest, data=data)
        x_p = images[manifest["fingerprint"]["position"]]
        _picture(run / "prepare" / "x_i_and_x_p.png", x_i, x_p, fp)
    write_json(path, manifest)
    noun, unit = ("volume", "voxels") if len(manifest["image_shape"]) == 4 else ("image", "px")
    where = (f"x_p = {noun} {manifest['fingerprint']['index']} of {cfg.split} with a {fp.shape} of radius "
             f"{fp.radius:.3g} {unit} and grey {fp.intensity:g} at {list(fp.centre)}, contrast "
             f"{manifest['fingerprint']['placement']['contrast']:.3f}") if fp else "no fingerprint"
    c = manifest.get("canaries")
    if c is not None:
        copies = sorted({k["duplicates"] for k in c["candidates"] if k["included"]})
        where += (f"; {c['m']} canary candidates, {c['n_included']} included (copies {', '.join(map(str, copies))}), "
                  f"{len(training_rows(manifest))} training rows")
    log(f"prepared {manifest['n_train']} {noun}s of {manifest['dataset']} ({where}) -> {path}")
    return {**manifest, "_run": str(run)}


def _picture(path: Path, x_i: np.ndarray, x_p: np.ndarray, fp: Fingerprint) -> None:
    """x_i, x_p and the foreground the SAF lies on (the SAF outlined in grey); a volume as its three orthogonal slices
    through the SAF's centre."""
    if fp.dims == 3:
        from .volumes.fingerprint import footprint, foreground_mask
    else:
        from .placement import footprint, foreground_mask

    mask = np.where(foreground_mask(x_i, saf=footprint(fp.shape, fp.radius, fp.width))[0], 255, 0).astype(np.uint8)
    outline = np.where(fp.mask(*x_i.shape[1:]), 128, mask)[None].repeat(x_i.shape[0], axis=0)
    panels = [x_i, x_p, outline]
    if fp.dims == 3:
        panels = [orthogonal_slices(v, fp.centre) for v in panels]
    save_grid(path, np.stack(panels), ncol=1 if fp.dims == 3 else None, scale=max(1, 168 // panels[0].shape[-2]))


def _same_source(cfg: PrepareConfig, run) -> dict | None:
    """The manifest of ``run`` when it was prepared from the same source with the same options as ``cfg``."""
    if run is None or not (Path(run) / "manifest.json").is_file():
        return None
    parent = load_manifest(run)
    prepared = from_dict(PrepareConfig, parent["config"], where="manifest config")
    return parent if is_source(parent) and dataclasses.replace(prepared, fingerprint=cfg.fingerprint) == cfg else None


def _say_duplicates(manifest: dict, log) -> None:
    d, removed = manifest["duplicates"], manifest["removed"]
    if removed:
        log(f"{len(removed)} images kept out of the training set beside x_i ({removed[0]['reason']}, ...): "
            "recorded in manifest.json 'removed'")
    if d["groups_in_training_set"]:
        log(f"warning: the training set holds {d['groups_in_training_set']} groups of identical images "
            f"({d['images_in_groups']} images), so it has fewer than N_D = {manifest['n_train']} distinct images")
    if d["heldout_identical_to_training"]:
        log(f"warning: {d['heldout_identical_to_training']} held-out images are identical to a training image")


def _stat(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of ``path``, None when absent: whether a refused prepare wrote it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _remove_cache(run: Path, made: bool, before: tuple[int, int] | None = None, cache: Path = CACHE) -> None:
    """Undo what a refused prepare wrote: the cache (a cache it found, ``before``, is left as it was), its folder,
    and the run folder when this prepare made it."""
    if _stat(run / cache) != before:
        (run / cache).unlink(missing_ok=True)
    for folder in ((run / cache).parent, run) if made else ((run / cache).parent,):
        try:
            folder.rmdir()
        except OSError:
            pass
