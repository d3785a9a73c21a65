"""``diffaudit census``: how many of the training images a trained model gives back, with or without a canary.

Every generated image is matched to its nearest and second-nearest training image in the census's space
(:mod:`.space`); it is a copy when the nearest is closer than the threshold fitted on held-out real images
(:mod:`.calibrate`). Copies are counted as a share of the samples (with its 95% interval) and as the distinct
training images, groups of near-duplicates and patients they copy (:mod:`.groups`). A ratio rule (nearest much closer
than the second) is not applied: a copy of an image that has a near-duplicate in the training set is as close to
both, and the held-out calibration already bounds the false alarms; the second distance is recorded with each pair.

Writes ``results.json`` ``census``, ``census/<samples>/pairs.json`` (every flagged sample: its index, nearest
training image, distances, group and patient) and ``gallery.png`` (the closest pairs: sample, training image, their
difference), and trains the embedding into ``census/embedding/`` (reused by later censuses of the run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from ...data.dataset import open_data
from ...config import SPLITS
from ...data.prepare import build_training_set, load_manifest, split_images
from ...errors import DiffauditError
from ...generate import iter_shards
from ...images import save_grid
from ...io import config_hash, run_relative, write_json
from ..count.stage import find_samples, samples_model
from ..count.stats import clopper_pearson
from ..results import update_results
from .calibrate import LEAK_FACTOR, split_duplicates, check_fpr, check_threshold, fit_threshold
from .embedding import encoder_space, load_user_encoder, train_embedding
from .groups import duplicate_groups
from .space import PixelSpace, Space, close_pairs, nearest_two
from .verdict import census_verdict

SPACES = ("pixel", "embedding")
GALLERY = 8  # closest pairs drawn in the report


def training_patients(manifest: dict, data) -> list[str | None]:
    """The patient of each image of D_p (None where the data names none: each image its own)."""
    patients = getattr(data, "patients", None)
    if patients is None:
        return [None] * manifest["n_train"]
    split = patients(manifest["split"])
    return [split[i] for i in manifest["indices"]]


def make_space(run: Path, kind: str, *, train: np.ndarray, others: np.ndarray, manifest: dict,
               embedding: str | None = None, embedding_size: int | None = None, steps: int = 300,
               seed: int = 0, progress: bool = True) -> Space:
    """The census's space: pixels, the contrastive embedding trained on the run's real images (``train`` and
    ``others``), or the user's encoder ``embedding`` at ``embedding_size``."""
    if kind not in SPACES:
        raise DiffauditError(f"unknown census space '{kind}'; choose one of {', '.join(SPACES)}")
    if embedding is not None:
        side = embedding_size or int(train.shape[-1])
        net, described = load_user_encoder(embedding, side=side, channels=int(train.shape[1]), dims=train.ndim - 2)
        return encoder_space(net, side=side, name="embedding (user)", described=described)
    if embedding_size is not None:
        raise DiffauditError("--embedding-size is the input side of an encoder given with --embedding")
    if kind == "pixel":
        return PixelSpace(shift=1)
    images = np.concatenate([train, others])
    folder = run / "census" / "embedding"
    net = train_embedding(folder, images, steps=steps, seed=seed, progress=progress,
                          data_id=config_hash(manifest), batch_size=64 if train.ndim == 4 else 16)
    return encoder_space(net, side=None, name="embedding", described={
        "kind": "SimCLR (NT-Xent) ResNet10 trained on the run's own real images", "steps": steps,
        "trained_on": int(len(images)), "path": run_relative(run, folder)})


def run_census(run: Path, *, samples: str | None = None, space: str = "pixel", fpr: float = 0.001,
               embedding: str | None = None, embedding_size: int | None = None, embedding_steps: int = 300,
               data_root=None, progress: bool = True, log: Callable[[str], None] = print, write: bool = True) -> dict:
    """The census of the samples ``samples`` (module docstring); returns results.json's ``census`` section, written
    with its pairs and gallery unless ``write`` is False (``verify`` recomputes it so)."""
    fpr = check_fpr(fpr)
    run = Path(run)
    manifest = load_manifest(run)
    data = open_data(manifest, data_root=data_root)
    train = build_training_set(manifest, data=data)[:len(manifest["indices"])]  # a duplicated canary's rows once
    if len(train) < 2:
        raise DiffauditError(f"the census matches samples against the training set, which holds {len(train)} image; "
                             "it needs at least 2 to tell a copy from a resemblance")
    eval_split, test_split = [s for s in SPLITS if s != manifest["split"]]  # never the training split, never one
    held_eval = split_images(manifest, eval_split, data=data)
    held_test = split_images(manifest, test_split, data=data)
    if len(held_eval) < 1 or len(held_test) < 1:
        raise DiffauditError(f"the census fits its threshold on held-out real images of the {eval_split} split and "
                             f"checks it on the {test_split} split; this run has {len(held_eval)} and {len(held_test)}: "
                             "prepare the data with both (--split-ratios, e.g. 0.8,0.1,0.1)")
    folder = find_samples(run, samples)
    generated = [x for _, x in iter_shards(folder)]
    if not generated:
        raise DiffauditError(f"{folder} holds no samples; run 'diffaudit sample' first")
    images = np.concatenate(generated)
    if images.shape[1:] != train.shape[1:]:
        raise DiffauditError(f"{folder}'s samples are {list(images.shape[1:])} but the run's images are "
                             f"{list(train.shape[1:])}; give samples of this run's model")
    sp = make_space(run, space, train=train, others=held_eval, manifest=manifest, embedding=embedding,
                    embedding_size=embedding_size, steps=embedding_steps, progress=progress)
    log(f"census of {len(images)} samples against {len(train)} training images in {sp.describe()['space']} space")
    with tqdm(total=len(images) + len(held_eval) + len(held_test), disable=not progress, desc="census",
              unit="img") as bar:
        d_eval = nearest_two(sp, held_eval, train, progress=bar.update).distance
        d_test = nearest_two(sp, held_test, train, progress=bar.update).distance
        found = nearest_two(sp, images, train, progress=bar.update)
    twins = {eval_split: split_duplicates(d_eval), test_split: split_duplicates(d_test)}
    cal = fit_threshold(d_eval[~twins[eval_split]], fpr)
    check = check_threshold(d_test[~twins[test_split]], cal["threshold"])
    cal["split_duplicates"] = {
        "rule": f"a held-out image closer to a training image than {LEAK_FACTOR:g} x the median held-out distance "
                "(the same picture in two splits) is left out of the calibration",
        **{name: {"n": int(mask.sum()), "positions": np.flatnonzero(mask).tolist(),
                  "distances": [float(v) for v in d[mask]]}
           for (name, mask), d in zip(twins.items(), (d_eval, d_test), strict=True)},
        "test_with_them": check_threshold(d_test, cal["threshold"])}  # the promise, had they stayed in
    for name, mask in twins.items():
        if mask.any():
            log(f"warning: {int(mask.sum())} held-out image(s) of the {name} split are duplicates of training images "
                f"(closer than {LEAK_FACTOR:g} x the median held-out distance); left out of the calibration")
    tau = cal["threshold"]
    patients = training_patients(manifest, data)
    groups = duplicate_groups(len(train), close_pairs(sp, train, tau), patients)
    if tau <= 0:
        log(f"warning: held-out images of the {eval_split} split are exact copies of training images (distance 0), so "
            "no sample can be flagged; the data holds duplicates across its splits: remove them and prepare again")
        cal["note"] = (f"{cal.get('note', '')} " if cal.get("note") else "") + (
            "The threshold is 0: held-out images are exact copies of training images, so nothing can be flagged")
    flagged = np.flatnonzero(found.distance < tau)
    copied = sorted(set(found.index[flagged].tolist()))
    lo, hi = clopper_pearson(len(flagged), len(images))
    fp = manifest.get("fingerprint")
    x_p = None if fp is None else int(fp["position"])
    section = {
        "samples": run_relative(run, folder), "model": samples_model(folder), "n_samples": int(len(images)),
        "n_train": int(len(train)), "space": sp.describe(),
        "threshold": tau, "calibration": {**cal, **check, "eval_split": eval_split, "test_split": test_split},
        "copies": int(len(flagged)), "share": len(flagged) / len(images), "share_ci95": [lo, hi],
        "n_copied": len(copied), "n_groups": int(len(set(groups.tolist()))),
        "n_copied_groups": len({int(groups[j]) for j in copied}),
        "n_copied_patients": len({patients[j] if patients[j] is not None else f"#{j}" for j in copied}),
        "copied": [{"position": j, "index": int(manifest["indices"][j]), "group": int(groups[j]),
                    "patient": patients[j], "samples": int((found.index[flagged] == j).sum())}
                   for j in copied],
        "x_p": None if x_p is None else {"position": x_p, "copied": x_p in copied,
                                          "samples": int((found.index[flagged] == x_p).sum())},
    }
    out = run / "census" / folder.name
    section["pairs"] = run_relative(run, out / "pairs.json")
    section["gallery"] = run_relative(run, out / "gallery.png")
    section["verdict"] = census_verdict(section)
    if not write:
        return section
    pairs = [{"sample": int(i), "nearest": int(found.index[i]), "distance": float(found.distance[i]),
              "second": int(found.second[i]), "second_distance": float(found.second_distance[i]),
              "group": int(groups[found.index[i]]), "patient": patients[found.index[i]]} for i in flagged]
    write_json(out / "pairs.json", {"threshold": tau, "space": sp.describe(), "pairs": pairs})
    _gallery(out / "gallery.png", images, train, found, run)
    update_results(run, manifest, census=section)
    return section


def _gallery(path: Path, images: np.ndarray, train: np.ndarray, found, run: Path) -> str:
    """The closest pair of each of the (up to :data:`GALLERY`) most closely copied training images, one row each: the
    sample, its nearest training image, their absolute difference."""
    order, seen = [], set()
    for i in np.argsort(found.distance, kind="stable"):
        if int(found.index[i]) not in seen:
            seen.add(int(found.index[i]))
            order.append(i)
        if len(order) == GALLERY:
            break
    rows = []
    for i in order:
        a, b = images[i], train[found.index[i]]
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.uint8)
        rows += [a, b, diff]
    save_grid(path, np.stack(rows), ncol=3)
    return run_relative(run, path)
