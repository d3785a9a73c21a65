"""The ``nll`` and ``fid`` stages of an audit (Table 2): results.json ``nll_bpd`` and ``fid``.

``nll_bpd``: bits/dim (see :mod:`diffaudit.audit.quality.likelihood`) of x_p (several dequantisation and Hutchinson
draws of the one image), of training images other than x_p, and of test images; a training NLL clearly below
the test NLL is the memorisation gap. ``fid``: FID of the generated images against the training set and
against as many test images (see :mod:`diffaudit.audit.quality.fid`), with the extractor named, a bootstrap interval for
each, the paired test of FID_test > FID_train, and whether the reference sets are large enough for the FID to hold.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from ...data.conditions import heldout_conditions, training_conditions
from ...data.dataset import open_data
from ...data.prepare import (
    build_training_set,
    heldout_split,
    load_manifest,
    classes_of,
    split_images,
    training_labels,
)
from ...device import resolve_device
from ...diffusion.generative import is_conditional
from ...errors import DiffauditError
from ...generate import iter_shards
from ...io import config_hash, read_json, run_relative, write_json
from ...models.load import provenance, run_model
from ...rng import derive_seed
from ..count.stage import samples_model
from ..results import update_results
from .fid import BOOTSTRAP_RESAMPLES, Frechet, fid_uncertainty, find_inception_weights, reliability, train_extractor
from .likelihood import DEQUANTISATION_BITS, bits_per_dim, summarise


class Stream(enum.IntEnum):
    """What a seed derived from this stage's seed is for (``derive_seed(seed, ..., Stream.X)``). The values are part
    of every run's numbers, so they never change; streams of other stages may share a value, since each stage derives
    from its own seed."""

    TRAIN = 1  # the NLL's training images and their draws; FID's training reference
    TEST = 2  # the NLL's test images and their draws; FID's test reference
    XP = 3  # the NLL's draws of x_p
    BOOTSTRAP = 4  # FID's bootstrap resamples


def _choose(n_total: int, n: int, seed: int, purpose: int) -> np.ndarray:
    rng = np.random.default_rng(derive_seed(seed, purpose))
    return np.sort(rng.permutation(n_total)[:min(n, n_total)])


def run_nll(run: Path, cfg, *, data_root=None, device: str = "auto", progress: bool = True,
            model: str | None = None, scheduler: str | None = None, prediction_type: str | None = None,
            net=None) -> dict:
    """Bits/dim of x_p, training and test images under the run's model; writes nll/nll.json and results.json.

    A discrete-time model's likelihood is that of the VP SDE interpolating its schedule, from its first training
    timestep (:mod:`diffaudit.diffusion.discrete`), in the pixel space it was trained in; a latent model's is not
    computed (the ODE would give the density of latents, not of images), and the section says so."""
    manifest = load_manifest(run)
    if net is None:
        classes = labelled_classes(manifest, data_root=data_root) if model is not None else None
        net = run_model(run, manifest=manifest, model=model, scheduler=scheduler, prediction_type=prediction_type,
                        num_classes=classes, device=device)
    dev = resolve_device(device)
    if getattr(net, "codec", None) is not None:
        section = {"unit": "bits/dim", "skipped": "latent model: the probability-flow ODE of its latents gives no "
                                                  "likelihood of images", "model": provenance(net, run),
                   "x_p": None, "train": None, "test": None}
        write_json(run / "nll" / "nll.json", section)
        update_results(run, manifest, nll_bpd=section)
        return section
    d_p = build_training_set(manifest, data_root=data_root)
    fp = manifest.get("fingerprint")
    position = fp["position"] if fp else None
    others = np.delete(np.arange(len(d_p)), position) if position is not None else np.arange(len(d_p))
    train_pos = others[_choose(len(others), cfg.n_train, cfg.seed, Stream.TRAIN)]
    test = split_images(manifest, heldout_split(manifest, "test"), data_root=data_root)
    test_idx = _choose(len(test), cfg.n_test, cfg.seed, Stream.TEST)
    sets = {"train": (d_p[train_pos], train_pos, derive_seed(cfg.seed, Stream.TRAIN)),
            "test": (test[test_idx], test_idx, derive_seed(cfg.seed, Stream.TEST))}
    if position is not None:
        sets["x_p"] = (np.repeat(d_p[position][None], cfg.x_p_repeats, 0), np.arange(cfg.x_p_repeats),
                       derive_seed(cfg.seed, Stream.XP))
    labels = {}
    if is_conditional(net):  # -log p(x | y) with each image's class or attributes
        y_train = training_conditions(manifest, lambda: training_labels(manifest, data_root=data_root))
        split = heldout_split(manifest, "test")
        y_test = heldout_conditions(manifest, split, lambda: np.asarray(open_data(manifest, data_root=data_root)
                                                                       .labels(split)).reshape(-1))
        labels = {"train": y_train[train_pos], "test": y_test[test_idx]}
        if position is not None:
            labels["x_p"] = np.repeat(y_train[position][None], cfg.x_p_repeats, 0)
    eps = cfg.eps if net.continuous else max(cfg.eps, 1.0 / net.n_train)  # a discrete model's first timestep
    solver = {"rtol": cfg.rtol, "atol": cfg.atol, "eps": eps}
    total = sum(len(v[0]) for v in sets.values())
    unit = "bits/voxel" if len(manifest["image_shape"]) == 4 else "bits/dim"
    section: dict = {"unit": unit, "conditional": bool(labels), "dequantisation": f"uniform, +log2(127.5) = {DEQUANTISATION_BITS:.4f} bits",
                     "solver": {"method": "RK45 (scipy)", **solver, "divergence": "Hutchinson, Rademacher"},
                     "model": provenance(net, run)}
    if not net.continuous:
        section["computed"] = ("probability-flow ODE of the VP SDE interpolating the model's discrete schedule, from "
                               f"its first training timestep t = 1/{net.n_train}, score = -eps/sigma_t "
                               f"({net.prediction_type} prediction converted to eps), in its "
                               f"{'x'.join(map(str, net.pixel_shape))} pixel space")
    score = net.score()
    def pixels(images: np.ndarray) -> np.ndarray:  # the images as the model was trained on them (an export's resize)
        to_pixels = getattr(net, "to_pixels", None)
        return images if to_pixels is None else np.stack([to_pixels(im) for im in images])

    with tqdm(total=total, disable=not progress, desc="NLL (probability-flow ODE)", unit="img", dynamic_ncols=True) as bar:
        for name in ("x_p", "train", "test"):
            if name not in sets:
                section[name] = None
                continue
            images, idx, seed = sets[name]
            values, nfe = bits_per_dim(score, net.sde, pixels(images), indices=idx.tolist(), seed=seed,
                                       labels=labels.get(name), batch_size=cfg.batch_size, device=dev,
                                       progress=bar.update, **solver)
            section[name] = {**summarise(values), "nfe": nfe,
                             ("positions" if name != "test" else "test_indices"): [int(i) for i in idx]}
    if section.get("x_p") is not None:
        section["x_p"]["note"] = f"{cfg.x_p_repeats} dequantisation/Hutchinson draws of the one image x_p"
    write_json(run / "nll" / "nll.json", section)
    update_results(run, manifest, nll_bpd=section)
    return section


class _NoLabels(DiffauditError):
    """The domain extractor cannot be trained: the data has no class labels."""


def _extractor(cfg, manifest: dict, folder: Path, *, data_root, device, progress, log) -> tuple[object, dict]:
    if cfg.extractor not in ("auto", "inception", "domain"):
        raise DiffauditError(f"the FID extractor must be auto, inception or domain, got '{cfg.extractor}'")
    if len(manifest["image_shape"]) == 4:
        return _volume_extractor(cfg, manifest, folder, data_root=data_root, device=device, progress=progress, log=log)
    weights = find_inception_weights(cfg.inception_weights) if cfg.extractor != "domain" else None
    if cfg.extractor == "inception" or weights is not None:
        note = "standard FID: Inception-v3 pool features (torch-fidelity weights)"
        if weights is None:
            log("no Inception weights found locally; torchmetrics will download them (needs internet)")
        return "inception", {"name": "inception-v3", "weights": str(weights) if weights else "downloaded", "note": note}
    if cfg.extractor == "auto":
        log("no Inception weights found (--inception-weights, $DIFFAUDIT_INCEPTION or torch's hub cache): FID uses "
            f"the domain feature extractor trained on {manifest['dataset']}'s labels; its values are not Inception FIDs")
    data = open_data(manifest, data_root=data_root)
    if int(np.asarray(data.labels("train")).max()) < 0:
        raise _NoLabels(f"no Inception weights were found and {manifest['dataset']} has no class labels to train the "
                        "domain feature extractor on; give --inception-weights (torch-fidelity's pt_inception "
                        "weights) or labels (class subfolders, --labels FILE.csv)")
    images = split_images(manifest, "train", data=data, unused_only=False)
    val = (split_images(manifest, "val", data=data), data.labels("val"))
    net = train_extractor(folder, images, data.labels("train"), name=f"{manifest['dataset']}-labels", val=val,
                          cfg=cfg.domain, device=device, progress=progress)
    meta = read_json(folder / "model.json")
    return net, {"name": f"domain-resnet10-{manifest['dataset']}-labels", "features": cfg.domain.features,
                 "folder": str(folder), "weights_id": config_hash(meta), "metrics": meta.get("metrics", {}),
                 "note": f"domain feature extractor (ResNet10 trained on {manifest['dataset']}'s class labels, "
                         f"{cfg.domain.features}-d bottleneck); not comparable with Inception FIDs"}


def _volume_extractor(cfg, manifest: dict, folder: Path, *, data_root, device, progress, log) -> tuple[object, dict]:
    """The extractor of volumes (:mod:`~diffaudit.audit.quality.volume_features`): Inception takes 2D pictures."""
    from .volume_features import train_volume_extractor

    if cfg.extractor == "inception":
        raise DiffauditError("the Inception FID takes 2D images, not volumes; leave --fid-extractor at auto (or domain) "
                             "for the 3D orientation extractor")
    log("FID of volumes: features of a 3D ResNet10 trained here to name a volume's orientation (no pretrained 3D "
        "network offline); its values are not Inception FIDs")
    data = open_data(manifest, data_root=data_root)
    volumes = split_images(manifest, "train", data=data, unused_only=False)
    net = train_volume_extractor(folder, volumes, name=f"{manifest['dataset']}-orientation",
                                 val=split_images(manifest, "val", data=data), cfg=cfg.domain, device=device,
                                 progress=progress)
    meta = read_json(folder / "model.json")
    return net, {"name": f"domain-3d-resnet10-{manifest['dataset']}-orientation", "features": cfg.domain.features,
                 "folder": str(folder), "weights_id": config_hash(meta), "metrics": meta.get("metrics", {}),
                 "note": "3D feature extractor (MONAI ResNet10 trained on the run's training split to name each "
                         f"volume's orientation, 8 classes, {cfg.domain.features}-d bottleneck); not comparable with "
                         "Inception FIDs"}


def run_fid(run: Path, cfg, samples: Path, *, data_root=None, device: str = "auto", progress: bool = True,
            extractor_dir: Path | None = None, log: Callable[[str], None] = print,
            resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """FID of the run's samples against the training set and against as many test images, each with a 95% bootstrap
    interval of ``resamples`` replicates (:func:`~diffaudit.audit.quality.fid.fid_uncertainty`), the paired test of
    FID_test > FID_train, and the reliability flag (:func:`~diffaudit.audit.quality.fid.reliability`)."""
    manifest = load_manifest(run)
    dev = resolve_device(device)
    try:
        extractor, described = _extractor(cfg, manifest, Path(extractor_dir or run / "fid" / "extractor"),
                                          data_root=data_root, device=dev, progress=progress, log=log)
    except _NoLabels as why:
        log(f"FID skipped: {why}")
        section = {"train": None, "test": None, "skipped": str(why), "reliable": False, "unreliable_reason": str(why),
                   "model": samples_model(Path(samples)), "samples": run_relative(run, Path(samples))}
        write_json(run / "fid" / "fid.json", section)
        update_results(run, manifest, fid=section)
        return section
    if "folder" in described:
        described["folder"] = run_relative(run, Path(described["folder"]))
    train = build_training_set(manifest, data_root=data_root)
    test = split_images(manifest, heldout_split(manifest, "test"), data_root=data_root)
    n_ref = min(len(train), len(test))
    train_ref = train[_choose(len(train), n_ref, cfg.seed, Stream.TRAIN)]
    test_ref = test[_choose(len(test), n_ref, cfg.seed, Stream.TEST)]
    metric = Frechet(extractor, weights=find_inception_weights(cfg.inception_weights) if extractor == "inception" else None,
                     device=dev)
    batches = (images for _, images in tqdm(iter_shards(samples), disable=not progress, desc="FID", unit="shard"))
    out, feats = metric.distances_and_features(batches, {"train": train_ref, "test": test_ref})
    point = {name: out[name]["value"] for name in ("train", "test")}
    spread = fid_uncertainty(feats["generated"], {"train": feats["train"], "test": feats["test"]}, point=point,
                             resamples=resamples, seed=derive_seed(cfg.seed, Stream.BOOTSTRAP))
    n_features = feats["generated"].shape[1]
    reliable, why = reliability(n_generated=out["train"]["n_generated"], n_reference=n_ref, n_features=n_features)
    if not reliable:
        log(f"FID is unreliable: {why}")
    section = {"train": point["train"], "test": point["test"], **spread, "reliable": reliable,
               "unreliable_reason": why, "n_features": n_features, "extractor": described,
               "model": samples_model(Path(samples)), "samples": run_relative(run, Path(samples)),
               "n_generated": out["train"]["n_generated"], "n_reference": n_ref,
               "reference": "train: the training set D_p; test: an equally large random draw of the test split"}
    write_json(run / "fid" / "fid.json", section)
    update_results(run, manifest, fid=section)
    return section
