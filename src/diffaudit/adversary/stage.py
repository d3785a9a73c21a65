"""The ``train-classifiers`` stage: c_p and c_id for a prepared run, and their measured error rates.

What each classifier sees (App. A leaves open which ratio belongs to which classifier; this is the choice):

* c_p trains on the images of the training split — D (with the clean x_i) and the split's images that were not
  drawn into D, since detecting a SAF is not about identities and a small D alone is too few backgrounds — with
  the SAF at a random location on 50% of the draws; it validates (early stopping) on the val split with SAFs on
  10%, closer to the rarity of SAFs among generated images.
* c_id trains on D: x_i in 10% of the draws against the other training images, and validates with x_i in 50%.

Both train to a stated criterion (``ClassifierConfig.criterion_recall``, ``criterion_fpr``) on data neither trains
on: c_p must flag the noise-free copies of x_p shifted by up to 1/28 of the side (all (2s + 1)^2 of them), c_id
those of x_p and of x_i (the identity with and without its SAF), and neither may flag more than the allowed share of
the val split's real images. ``c_p.criterion`` / ``c_id.criterion`` record the criterion, whether it was met, the
recall and false-positive rate measured and the training steps; a classifier that missed it at its cap makes the
audit's verdict inconclusive (:func:`.criterion.criterion_verdict`).

Writes ``<run>/classifiers/{c_p,c_id}/`` (model.safetensors + model.json), ``<run>/classifiers/metrics.json`` and
``<run>/classifiers/digests.json`` (the SHA-256 of those five files, see :mod:`diffaudit.audit.engine.verify`):

* ``c_p.test_accuracy`` — the test split, half of it with the SAF at a random location (Table 2 "SAF %");
* ``c_id.train_accuracy`` — the clean training images with x_i and x_p as positives (Table 2 "ID %");
* ``false_positive_rate.heldout_real`` — c_p, c_id and both on the test split, real images neither classifier
  nor the diffusion model saw: none carries the SAF, none is x_i;
* ``true_positive_rate.copies_of_x_p`` — copies of x_p shifted by up to 1/28 of the side (a pixel at 28 px) with
  Gaussian noise of several strengths, as a model that reproduces x_p returns them; the reference
  nearest-neighbour detector beside them.
"""

from __future__ import annotations

import enum
from pathlib import Path

import numpy as np

from ..digests import CLASSIFIER_FILES, record_digests
from ..config import ClassifierConfig
from ..data.dataset import open_data
from ..data.prepare import (
    as_channels,
    build_training_set,
    clean_original,
    fingerprint_of,
    heldout_split,
    load_manifest,
    split_images,
)
from ..device import resolve_device
from ..errors import DiffauditError
from ..io import config_hash, existing_artefact, write_json
from ..rng import derive_seed
from .classifiers import (
    ClassifierDetector,
    Heldout,
    check_config,
    classifier_record,
    fit,
    load_classifier,
    save_classifier,
)
from .detectors import NearestNeighbourDetector
from .examples import COPY_SHIFT, Task, jittered_copies, pixels, shifted_copies
from .roc import detector_curve

NAMES = ("c_p", "c_id")
COPY_NOISE = (0.0, 0.02, 0.05, 0.1)  # std of the noise on copies of x_p, in [0, 1] pixel units
ROC_NOISE = (0.0, 0.02, 0.05)  # the copies that are the ROC's positives: the range of generated copies' errors
N_COPIES = 200


class AuditData:
    """What the adversary knows about a prepared run: D_p, the clean set D, x_i, x_p, the SAF, and the dataset's
    other images (the unused part of the training split, the val and test splits)."""

    def __init__(self, manifest: dict, data_root=None) -> None:
        if manifest.get("fingerprint") is None:
            raise DiffauditError("this run was prepared without a fingerprint (a control run); train the classifiers "
                                 "in the fingerprinted run and pass this run's samples as --control-samples to count")
        data = open_data(manifest, data_root=data_root)
        self.manifest = manifest
        self.fingerprint = fingerprint_of(manifest)
        self.d_p = build_training_set(manifest, data=data)
        self.position = manifest["fingerprint"]["position"]
        self.x_p = self.d_p[self.position]
        self.x_i = clean_original(manifest, data=data)
        distinct = self.d_p[:len(manifest["indices"])]  # a duplicated canary's copies follow the distinct rows
        self.others = np.delete(distinct, self.position, axis=0)  # D without x_i (and x_p)
        clean = self.others
        if manifest.get("canaries"):  # the other canaries as their clean originals: c_p's backgrounds carry no SAF
            originals = as_channels(manifest, np.array(data.images(manifest["split"])[np.asarray(manifest["indices"])]))
            clean = np.delete(originals, self.position, axis=0)
        self.clean = np.concatenate([clean, self.x_i[None]])
        self.unused = split_images(manifest, manifest["split"], data=data, unused_only=True)
        self.val = split_images(manifest, heldout_split(manifest, "val"), data=data)
        self.test = split_images(manifest, heldout_split(manifest, "test"), data=data)
        self.image_shape = tuple(self.d_p.shape[1:])
        self.shift = pixels(COPY_SHIFT, min(self.image_shape[1:]))  # the copies' largest shift, in pixels

    def tasks(self, name: str) -> tuple[Task, Task]:
        """(training task, validation task) of classifier ``name``."""
        if name == "c_p":
            backgrounds = np.concatenate([self.clean, self.unused])
            return Task(backgrounds, stamp=self.fingerprint), Task(self.val, stamp=self.fingerprint)
        if len(self.others) < 1:
            raise DiffauditError("c_id needs at least one training image besides x_p; prepare with --n-train >= 2")
        task = Task(self.others, positives=self.x_i[None])
        return task, task

    def heldout(self, name: str) -> Heldout:
        """What classifier ``name``'s criterion is measured on: every noise-free copy of x_p shifted by up to
        ``shift`` pixels (c_id: and of x_i), against the val split's real images."""
        copies = shifted_copies(self.x_p, self.shift)
        what = f"noise-free copies of x_p shifted by up to {self.shift} px"
        if name == "c_id":
            copies = np.concatenate([copies, shifted_copies(self.x_i, self.shift)])
            what = f"noise-free copies of x_p and of x_i shifted by up to {self.shift} px"
        return Heldout(copies, self.val, {"positives": what, "negatives": "held-out real images of the val split"})


def train_classifiers(run: Path, configs: dict[str, ClassifierConfig], *, data_root=None, device: str = "auto",
                      progress: bool = True, log=print) -> dict:
    """Train (or keep) c_p and c_id of run directory ``run`` and measure their error rates; returns the metrics."""
    for cfg in configs.values():
        check_config(cfg)
    manifest = load_manifest(run)
    audit = AuditData(manifest, data_root)
    dev = resolve_device(device)
    data_id = config_hash(manifest)
    detectors: dict[str, ClassifierDetector] = {}
    for name in NAMES:
        folder = run / "classifiers" / name
        record = classifier_record(name, configs[name], audit.image_shape, data_id)
        if existing_artefact(folder / "model.json", record, what="a classifier",
                             fix="delete it or use another --run-dir") is not None:
            log(f"{folder} already trained with this config; kept")
            detectors[name] = load_classifier(folder, device=dev)
            continue
        task, val_task = audit.tasks(name)
        net, training = fit(task, val_task, configs[name], like=audit.fingerprint, channels=audit.image_shape[0],
                            device=dev, heldout=audit.heldout(name), progress=progress,
                            desc=f"train {name} ({configs[name].arch})")
        save_classifier(folder, net, {**record, **training})
        c = training["criterion"]
        log(f"{name}: criterion {'met' if c['met'] else 'NOT met'} after {c['steps']} of at most {c['cap_steps']} steps "
            f"({c['seconds']:.0f} s): recall {c['measured']['recall']:.3f} (>= {c['recall']:g}) on "
            f"{c['measured']['n_positives']} copies, false positives {c['measured']['fpr']:.3f} (<= {c['fpr']:g}) on "
            f"{c['measured']['n_negatives']} val images, at threshold {c['threshold']:.3g}")
        detectors[name] = load_classifier(folder, device=dev)
    metrics = measure(audit, detectors, seed=configs["c_p"].seed)
    write_json(run / "classifiers" / "metrics.json", metrics)
    record_digests(run / "classifiers", CLASSIFIER_FILES)  # what diffaudit verify checks the detectors against
    return metrics


class Stream(enum.IntEnum):
    """What a seed derived from this stage's seed is for (``derive_seed(seed, ..., Stream.X)``). The values are part
    of every run's numbers, so they never change; streams of other stages may share a value, since each stage derives
    from its own seed."""

    TEST_DRAW = 21  # which test images carry the SAF when c_p's accuracy is measured
    COPIES = 22  # the jittered, noisy copies of x_p


def _positives(flags: np.ndarray) -> dict:
    return {"positives": int(flags.sum()), "n": int(len(flags)), "rate": float(flags.mean()) if len(flags) else None}


def copies_of(audit: AuditData, std: float, seed: int) -> np.ndarray:
    """The N_COPIES jittered, noisy copies of x_p of noise ``std`` that the classifiers' error rates are measured on."""
    return jittered_copies(audit.x_p, N_COPIES, std, np.random.default_rng(derive_seed(seed, Stream.COPIES, int(std * 1000))))


def scores(detectors: dict[str, ClassifierDetector], images: np.ndarray) -> dict[str, np.ndarray]:
    """Each classifier's probability and q's score, the smaller of the two (q fires when both do)."""
    out = {name: detectors[name].probabilities(images) for name in NAMES}
    out["q"] = np.minimum(out["c_p"], out["c_id"])
    return out


def roc_of(detectors: dict[str, ClassifierDetector], negatives: np.ndarray, audit: AuditData, *, seed: int,
           copy_scores: dict[float, dict[str, np.ndarray]] | None = None) -> dict:
    """ROC entries of c_p, c_id and q: ``negatives`` against the copies of x_p of noise std in ROC_NOISE (their
    :func:`scores` by noise std, when already computed)."""
    neg = scores(detectors, negatives)
    copy_scores = copy_scores or {std: scores(detectors, copies_of(audit, std, seed)) for std in ROC_NOISE}
    pos = {name: np.concatenate([copy_scores[std][name] for std in ROC_NOISE]) for name in neg}
    thresholds = {"c_p": detectors["c_p"].threshold, "c_id": detectors["c_id"].threshold,
                  "q": max(detectors["c_p"].threshold, detectors["c_id"].threshold)}
    return {name: detector_curve(neg[name], pos[name], threshold=thresholds[name]) for name in ("c_p", "c_id", "q")}


def measure(audit: AuditData, detectors: dict[str, ClassifierDetector], *, seed: int = 0) -> dict:
    """Accuracies and error rates of c_p, c_id and both together (see the module docstring)."""
    c_p, c_id = detectors["c_p"], detectors["c_id"]
    rng = np.random.default_rng(derive_seed(seed, Stream.TEST_DRAW))
    test_images, test_labels = Task(audit.test, stamp=audit.fingerprint).draw(len(audit.test), 0.5, rng, exact=True)
    id_images = np.concatenate([audit.others, audit.x_i[None], audit.x_p[None]])
    id_labels = np.r_[np.zeros(len(audit.others), dtype=bool), True, True]
    id_flags = c_id(id_images)

    p_real, id_real = c_p(audit.test), c_id(audit.test)
    nn = NearestNeighbourDetector(audit.x_p, audit.others, shift=audit.shift) if len(audit.others) >= 1 else None
    copies, copy_scores = {}, {}
    for std in COPY_NOISE:
        x = copies_of(audit, std, seed)
        copy_scores[std] = s = scores(detectors, x)  # each copy scored once, for the rates and for the ROC
        fp, fid = s["c_p"] > c_p.threshold, s["c_id"] > c_id.threshold
        copies[f"{std:g}"] = {"c_p": _positives(fp), "c_id": _positives(fid), "q": _positives(fp & fid),
                              "nearest_neighbour": _positives(nn(x)) if nn else None}
    roc = roc_of(detectors, audit.test, audit, seed=seed, copy_scores=copy_scores)
    trained = {name: {"best_epoch": d.meta.get("best_epoch"), "arch": d.meta["config"]["arch"],
                      "stem": d.meta.get("stem"), "criterion": d.meta.get("criterion")} for name, d in detectors.items()}
    return {
        "c_p": {"test_accuracy": float((c_p(test_images) == test_labels).mean()), "n_test": int(len(test_labels)),
                **trained["c_p"]},
        "c_id": {"train_accuracy": float((id_flags == id_labels).mean()), "n_train": int(len(id_labels)),
                 "detects_x_i": bool(id_flags[-2]), "detects_x_p": bool(id_flags[-1]),
                 "false_positives_in_training_set": int(id_flags[:-2].sum()), **trained["c_id"]},
        "false_positive_rate": {"heldout_real": {"c_p": _positives(p_real), "c_id": _positives(id_real), "q": _positives(p_real & id_real),
                                                 "nearest_neighbour": _positives(nn(audit.test)) if nn else None}},
        "true_positive_rate": {"copies_of_x_p": copies, "n_copies": N_COPIES, "shift_px": audit.shift},
        "nearest_neighbour": nn.describe() if nn else None,
        "roc": {**roc, "negatives": "held-out real test images",
                "positives": f"copies of x_p (±{audit.shift} px, noise std {', '.join(f'{s:g}' for s in ROC_NOISE)})"},
        "device": str(next(c_p.net.parameters()).device),
    }


def load_detectors(run: Path, *, device: str = "auto") -> dict[str, ClassifierDetector]:
    dev = resolve_device(device)
    return {name: load_classifier(run / "classifiers" / name, device=dev) for name in NAMES}


DETECTORS = ("classifiers", "nn")


def make_detectors(run: Path, audit: AuditData, kind: str, *, device: str = "auto") -> dict:
    """The detectors of an audit: 'classifiers' (c_p and c_id; q = both positive) or 'nn' (the reference
    nearest-neighbour detector for x_p, standing in for c_id alone)."""
    if kind == "classifiers":
        return load_detectors(run, device=device)
    if kind == "nn":
        return {"c_id": NearestNeighbourDetector(audit.x_p, audit.others, shift=audit.shift)}
    raise DiffauditError(f"unknown detector '{kind}'; choose one of {', '.join(DETECTORS)}")

