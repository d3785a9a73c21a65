"""c_id over the m candidates: one ResNet with m + 1 outputs (candidate 0 .. m − 1, then "none"), the alternative to
the per-candidate reference detectors of :mod:`.score`.

Training draws, afresh every step from a generator seeded by (seed, round, step): with probability
``positive_share`` a candidate chosen uniformly, x_p^(j) as it was trained on (with its SAF), labelled j; otherwise
an image labelled "none": one of the N_D base training images or of the training split's images that are neither in
D_p nor candidates (as c_p trains on the whole split). The base images alone are too few: with 64 candidates and 64
base images, "none" came to mean those 64 pictures, val images were taken for candidates with probability near 1, the
threshold rose above every copy's, and 40 rounds ended with no candidate found. Every draw goes through the c_id recipe of
:func:`~diffaudit.adversary.examples.augment`: shifts of up to 1/28 of the side, random SAF-shaped masks of a random
grey, AugMix (volumes: MONAI's affine and bias field) and Gaussian noise. The network is the adversary's ResNet
(:func:`~diffaudit.adversary.classifiers.build_classifier`, small stem below 64 px) with an (m + 1)-way head and
cross-entropy.

A sample is a copy of candidate j when j is its most probable class and p_j exceeds τ. τ is 0.5, raised where needed to
the least value that flags at most ``criterion_fpr`` of the val split's real images (the operating point of the binary
classifiers) unless that loses the copies (:func:`operating_point`). Training runs in rounds to the criterion, every
candidate's recall at least ``criterion_recall`` on its noise-free shifted copies at that τ, or to the cap, keeping
the round nearest the criterion. The test split, never
seen in training or in choosing τ, gives the false positives reported beside the counts.

Nothing here depends on which candidates were included: all m candidates and the same base images are trained on,
so the counts, like those of the reference detectors, are a function of the model's output alone (the one-run bound
needs it). The classifier is saved under ``<run>/canaries/identity/`` as ``model.safetensors`` and ``model.json``, and
reused while its config and data are the same.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ...adversary.classifiers import build_classifier, check_config, stem_for, volume_resnet
from ...adversary.examples import COPY_SHIFT, augment, pixels, shifted_copies
from ...config import CLASSIFIER_PRESETS, ClassifierConfig, from_dict, to_dict
from ...digests import record_digests
from ...data.fingerprint import Fingerprint
from ...errors import DiffauditError
from ...io import check_state_dict, existing_artefact, load_tensors, read_json, save_tensors, write_json
from ...rng import derive_seed

#: the cpu c_id recipe (ResNet10, masks, noise, 1/28 shifts) with half the draws on the candidates
IDENTITY_CONFIG = dataclasses.replace(CLASSIFIER_PRESETS["cpu"]["c_id"], positive_share=0.5, max_epochs=40,
                                      epoch_size=1024)
IDENTITY_FILES = ("model.safetensors", "model.json")
BATCH = {2: 256, 3: 8}  # images (volumes) per forward pass when scoring


class Stream(enum.IntEnum):
    """What a seed derived from the classifier's seed is for; the values never change."""

    INIT = 51  # the (m + 1)-way head's initial weights
    STEP = 52  # a training step's draws and augmentation


def _network(cfg: ClassifierConfig, channels: int, side: int, dims: int, classes: int) -> nn.Module:
    if dims == 3:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, Stream.INIT))
            return volume_resnet(cfg.arch, channels, outputs=classes)
    net = build_classifier(cfg, channels, side, dims)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, Stream.INIT))
        net.fc = nn.Linear(net.fc.in_features, classes)
    return net


@torch.no_grad()
def _probabilities(net: nn.Module, images: np.ndarray, device) -> np.ndarray:
    """softmax [len(images), m + 1] of uint8 images."""
    net.eval()
    out, batch = [], BATCH[images.ndim - 2]
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).to(device).float() / 127.5 - 1.0
        out.append(torch.softmax(net(x).float(), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


class IdentityDetector:
    """The trained (m + 1)-way classifier as the canaries' detector (the interface of :class:`.score.
    CandidateDetectors`): ``flags`` [B, m], at most one candidate per image."""

    kind = "c_id over the candidates (one ResNet, m + 1 classes)"

    def __init__(self, net: nn.Module, *, m: int, threshold: float, shape: tuple[int, ...], shift: int,
                 device="cpu", record: dict | None = None) -> None:
        self.net, self.m, self.threshold, self.shape, self.shift = net, m, float(threshold), tuple(shape), shift
        self.device, self.record = device, record or {}
        self.thresholds = np.full(m, self.threshold)

    def flags(self, images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != self.shape:
            raise DiffauditError(f"images of shape {tuple(images.shape[1:])} given to a classifier of {self.shape}")
        p = _probabilities(self.net, images, self.device)
        out = np.zeros((len(images), self.m), dtype=bool)
        if len(images):
            best = p.argmax(1)
            hit = (best < self.m) & (p[np.arange(len(p)), np.minimum(best, p.shape[1] - 1)] > self.threshold)
            out[np.flatnonzero(hit), best[hit]] = True
        return out

    def own_flags(self, images: np.ndarray, j: int) -> np.ndarray:
        return self.flags(images)[:, j]

    def count(self, batches: Iterable[np.ndarray]) -> tuple[np.ndarray, int]:
        counts, n = np.zeros(self.m, dtype=np.int64), 0
        for images in batches:
            counts += self.flags(images).sum(0)
            n += len(images)
        return counts, n

    def describe(self) -> dict:
        crit = self.record.get("criterion", {})
        return {"kind": self.kind, "threshold": self.threshold, "shift_px": self.shift, "arch": self.record.get("arch"),
                "criterion_met": crit.get("met"), "rounds": crit.get("round"), "steps": crit.get("steps")}


def operating_point(p_val: np.ndarray, p_copies: np.ndarray, owner: np.ndarray,
                    cfg: ClassifierConfig) -> tuple[float, np.ndarray, float, float]:
    """(τ, every candidate's recall on its copies at τ, the val images' flagged share at τ, the shortfall from the
    criterion): τ is the threshold nearest the criterion among 0.5 and the val images' candidate probabilities
    above it, the least such τ on ties. Where the criterion can be met this is the least τ that flags at most
    ``criterion_fpr`` of the val images and finds the copies; where it cannot (a val image the classifier takes for a
    candidate as surely as that candidate's own copies), raising τ above that image would lose every copy, and the
    nearer point is kept, its shortfall recorded."""
    m = p_copies.shape[1] - 1
    val_best = p_val[:, :m].max(1)
    own = np.where(p_copies.argmax(1) == owner, p_copies[np.arange(len(owner)), owner], 0.0)
    best = None
    for tau in sorted({cfg.threshold, *val_best[val_best > cfg.threshold].tolist()}):
        recall = np.array([(own[owner == j] > tau).mean() for j in range(m)])
        fpr = float((val_best > tau).mean())
        short = max(0.0, cfg.criterion_recall - float(recall.min())) + max(0.0, fpr - cfg.criterion_fpr)
        if best is None or short < best[3]:
            best = (float(tau), recall, fpr, short)
    return best


def _record(cfg: ClassifierConfig, targets: np.ndarray, base: np.ndarray, val: np.ndarray) -> dict:
    digest = hashlib.sha256(targets.tobytes() + base.tobytes() + val.tobytes()).hexdigest()[:16]
    return {"name": "c_id over the canary candidates", "config": to_dict(cfg), "m": int(len(targets)),
            "image_shape": list(targets.shape[1:]), "data": digest}


def train_identity(folder: Path, targets: np.ndarray, base: np.ndarray, val: np.ndarray, like: Fingerprint, *,
                   cfg: ClassifierConfig = IDENTITY_CONFIG, device="cpu", progress: bool = True) -> IdentityDetector:
    """Train (or load, when ``folder`` holds one of the same config and data) the classifier of the module docstring;
    ``targets`` the m candidates, ``base`` the images of "none", ``val`` the real images τ is chosen on."""
    check_config(cfg)
    folder = Path(folder)
    m, dims = len(targets), targets.ndim - 2
    side = min(targets.shape[2:])
    shift = max(1, pixels(COPY_SHIFT, side))
    record = _record(cfg, targets, base, val)
    if existing_artefact(folder / "model.json", record, what="a canary classifier",
                         fix="remove the folder to train it again") is not None:
        return load_identity(folder, device=device)
    net = _network(cfg, targets.shape[1], side, dims, m + 1).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    copies = np.concatenate([shifted_copies(t, shift) for t in targets])
    owner = np.repeat(np.arange(m), len(copies) // m)
    steps = max(1, math.ceil(cfg.epoch_size / cfg.batch_size))
    history, kept, state, best = [], None, None, math.inf
    bar = tqdm(range(cfg.max_epochs), disable=not progress, desc=f"c_id over {m} candidates", unit="round")
    for epoch in bar:
        net.train()
        running = 0.0
        for step in range(steps):
            seed = derive_seed(cfg.seed, epoch, step, Stream.STEP)
            rng = np.random.default_rng(seed)
            labels = np.where(rng.random(cfg.batch_size) < cfg.positive_share,
                              rng.integers(0, m, cfg.batch_size), m)
            images = np.where((labels < m).reshape(-1, *[1] * (targets.ndim - 1)),
                              targets[np.minimum(labels, m - 1)], base[rng.integers(0, len(base), cfg.batch_size)])
            x = augment(images, cfg, like, derive_seed(seed, 1)).to(device)  # its masks drawn apart from the labels
            loss = nn.functional.cross_entropy(net(x), torch.from_numpy(labels).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
        threshold, recall, fpr, short = operating_point(_probabilities(net, val, device), _probabilities(net, copies, device),
                                                        owner, cfg)
        entry = {"epoch": epoch + 1, "steps": (epoch + 1) * steps, "train_loss": running / steps,
                 "recall_min": float(recall.min()), "recall_mean": float(recall.mean()), "fpr": fpr,
                 "threshold": threshold, "met": short == 0}
        history.append(entry)
        bar.set_postfix(recall_min=f"{recall.min():.3f}", recall_mean=f"{recall.mean():.3f}", fpr=f"{fpr:.3f}",
                        tau=f"{threshold:.3g}", loss=f"{running / steps:.3f}")
        if short <= best:  # ties: the later, longer-trained round
            best, kept, state = short, entry, copy.deepcopy(net.state_dict())
        if entry["met"]:
            break
    bar.close()
    net.load_state_dict(state)
    record.update(history=history, threshold=kept["threshold"], shift=shift, arch=cfg.arch,
                  stem=stem_for(cfg, side) if dims == 2 else "3^3 convolution, stride 2 (MONAI ResNet)",
                  criterion={"recall": cfg.criterion_recall, "fpr": cfg.criterion_fpr, "met": kept["met"],
                             "round": kept["epoch"], "steps": kept["steps"], "recall_min": kept["recall_min"],
                             "fpr_val": kept["fpr"], "n_val": int(len(val))})
    save_tensors(folder / "model.safetensors", net.state_dict())
    write_json(folder / "model.json", record)  # a folder with model.json holds a finished classifier
    record_digests(folder, IDENTITY_FILES)  # what verify holds the weights and the threshold to
    return IdentityDetector(net.eval(), m=m, threshold=kept["threshold"], shape=targets.shape[1:], shift=shift,
                            device=device, record=record)


def load_identity(folder: Path, *, device="cpu") -> IdentityDetector:
    meta = read_json(Path(folder) / "model.json")
    cfg = from_dict(ClassifierConfig, meta["config"])
    shape = tuple(meta["image_shape"])
    net = _network(cfg, shape[0], min(shape[1:]), len(shape) - 1, meta["m"] + 1)
    weights = load_tensors(Path(folder) / "model.safetensors")
    check_state_dict(net, weights, Path(folder) / "model.safetensors")
    net.load_state_dict(weights)
    t = meta.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
        raise DiffauditError(f"{Path(folder) / 'model.json'} threshold {t!r} is not in (0, 1): the file was edited or "
                             "damaged; remove the folder to train the classifier again")
    return IdentityDetector(net.to(device).eval(), m=meta["m"], threshold=t, shape=shape, shift=meta["shift"],
                            device=device, record=meta)
