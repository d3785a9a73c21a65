"""c_p and c_id as torchvision ResNets trained from scratch, their training loop, and their checkpoints.

The paper used randomly initialised ResNet50s (Sec. 5.2). torchvision's stem (7x7 stride-2 convolution, then a
max-pool) shrinks a 28x28 image to 7x7 before the first residual block; the small stem swaps the convolution for a
3x3 stride-1 one so the residual blocks see 14x14 (a radius-3 SAF stays several feature-map pixels wide). The stem
follows the image side (``stem_for``): the small one below ``STANDARD_FROM`` = 64 px, torchvision's from there up,
where it leaves the residual blocks 16x16 or more; ``ClassifierConfig.small_input`` forces either.
``resnet10`` is torchvision's ``ResNet(BasicBlock, [1, 1, 1, 1])``, the CPU preset.

Volumes get MONAI's 3D ``ResNet`` of the same blocks and depths (basic blocks [1, 1, 1, 1] for resnet10, up to
bottlenecks [3, 4, 6, 3] for resnet50), built for single-channel medical volumes (``spatial_dims=3``,
``n_input_channels``). torchvision's video ResNets are not used: their stem is made for RGB clips (a 3 x 7 x 7
kernel, time left at full length), not for isotropic volumes. The widths are a quarter of the 2D ones (16, 32, 64,
128), as a 3 x 3 x 3 convolution costs three times a 3 x 3 one over many more positions; the stem is a 3^3
convolution of stride 2 with no max-pool, so a 32^3 volume enters the residual blocks at 16^3 (a ball of radius 3.4
voxels stays 3 positions wide there). A training step of the 3D ResNet18 on 64 volumes of 32^3 took 1.8-4.3 s on 2 CPU
cores shared with other work, the 3D augmentation of the batch 1.4 s of it.

Training runs in rounds of ``epoch_size`` draws. Given held-out data (:class:`Heldout`), each round ends with the
criterion: the recall on held-out copies of x_p and the false-positive rate on held-out real images at the decision
threshold. The threshold is the config's (0.5), raised where needed to the least value that flags at most
``criterion_fpr`` of the held-out real images (:func:`operating_threshold`: an operating point chosen on the val
split; the test split's false positives are the independent check). Training stops once the recall at that threshold
is at least ``criterion_recall``, or at the cap (``max_epochs`` rounds, ``max_steps`` steps), and keeps the round
nearest the criterion (:func:`shortfall`); model.json records its threshold, which the detector then uses.

A classifier is saved as ``model.safetensors`` (weights, BatchNorm statistics) and ``model.json`` (its config,
image shape, training history and the data it was trained for); no pickled code.
"""

from __future__ import annotations

import copy
import enum
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.resnet import BasicBlock, ResNet
from tqdm.auto import tqdm

from ..config import ClassifierConfig, from_dict, to_dict
from ..data.fingerprint import Fingerprint
from ..errors import DiffauditError
from ..extras import require
from ..io import check_state_dict, load_tensors, read_json, save_tensors, write_json
from ..rng import derive_seed
from .examples import Task, augment

ARCHS: dict[str, Callable[[], ResNet]] = {
    "resnet10": lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1),
    "resnet18": lambda: resnet18(weights=None, num_classes=1),
    "resnet34": lambda: resnet34(weights=None, num_classes=1),
    "resnet50": lambda: resnet50(weights=None, num_classes=1),
}


STANDARD_FROM = 64  # images this wide or wider get torchvision's stem
#: MONAI's 3D ResNet of each architecture: (block, layers)
VOLUME_ARCHS = {"resnet10": ("basic", [1, 1, 1, 1]), "resnet18": ("basic", [2, 2, 2, 2]),
                "resnet34": ("basic", [3, 4, 6, 3]), "resnet50": ("bottleneck", [3, 4, 6, 3])}
VOLUME_WIDTHS = [16, 32, 64, 128]


class Stream(enum.IntEnum):
    """What a seed derived from this stage's seed is for (``derive_seed(seed, ..., Stream.X)``). The values are part
    of every run's numbers, so they never change; streams of other stages may share a value, since each stage derives
    from its own seed."""

    INIT = 11  # initial weights
    STEP = 12  # a training step's examples and augmentation
    VAL = 13  # the validation set


def stem_for(cfg: ClassifierConfig, side: int) -> str:
    """"small" (3x3 stride-1 convolution, then torchvision's max-pool) or "standard" (torchvision's 7x7 stride-2
    convolution and max-pool) for images of ``side`` pixels: as ``cfg.small_input`` says, else by the side."""
    if cfg.small_input is not None:
        return "small" if cfg.small_input else "standard"
    return "small" if side < STANDARD_FROM else "standard"


def build_classifier(cfg: ClassifierConfig, channels: int, side: int = 28, dims: int = 2) -> nn.Module:
    """A randomly initialised binary ResNet (one logit) for ``channels``-channel images of ``side`` pixels
    (``dims`` 3: volumes, MONAI's 3D ResNet)."""
    if cfg.arch not in ARCHS:
        raise DiffauditError(f"unknown classifier architecture '{cfg.arch}'; choose one of {', '.join(ARCHS)}")
    with torch.random.fork_rng(devices=[]):  # torchvision and MONAI initialise from the global RNG
        torch.manual_seed(derive_seed(cfg.seed, Stream.INIT))
        if dims == 3:
            return volume_resnet(cfg.arch, channels)
        net = ARCHS[cfg.arch]()
        if stem_for(cfg, side) == "small":
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def volume_resnet(arch: str, channels: int, outputs: int = 1) -> nn.Module:
    """MONAI's 3D ResNet of ``arch`` for ``channels``-channel volumes, with ``outputs`` logits (module docstring)."""
    require("monai", "3D ResNets (MONAI)")
    from monai.networks.nets import ResNet as MonaiResNet

    block, layers = VOLUME_ARCHS[arch]
    return MonaiResNet(block=block, layers=layers, block_inplanes=VOLUME_WIDTHS, spatial_dims=3,
                       n_input_channels=channels, conv1_t_size=3, conv1_t_stride=2, no_max_pool=True,
                       num_classes=outputs)


def check_config(cfg: ClassifierConfig) -> None:
    for name in ("batch_size", "epoch_size", "max_epochs", "patience", "val_size"):
        if getattr(cfg, name) < 1:
            raise DiffauditError(f"classifier {name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise DiffauditError(f"classifier max_steps must be >= 1 or unset, got {cfg.max_steps}")
    if not 0 < cfg.criterion_recall <= 1 or not 0 <= cfg.criterion_fpr < 1:
        raise DiffauditError(f"the classifier criterion needs a recall in (0, 1] and a false-positive rate in [0, 1), "
                             f"got {cfg.criterion_recall} and {cfg.criterion_fpr}")
    for name in ("positive_share", "val_positive_share"):
        if not 0 < getattr(cfg, name) < 1:
            raise DiffauditError(f"classifier {name} must be in (0, 1), got {getattr(cfg, name)}")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise DiffauditError(f"the classifier learning-rate schedule must be constant or cosine, got '{cfg.lr_schedule}'")
    if not 0 < cfg.threshold < 1:
        raise DiffauditError(f"the decision threshold must be in (0, 1), got {cfg.threshold}")


@dataclass
class Heldout:
    """What a classifier's criterion is measured on, never trained on: ``positives``, uint8 [P, C, H, W] images it must
    flag (noise-free shifted copies of x_p), and ``negatives``, real images [N, C, H, W] of another split it must not
    flag; ``describe`` says what they are for the record."""

    positives: np.ndarray
    negatives: np.ndarray
    describe: dict

    def __post_init__(self) -> None:
        if len(self.positives) < 1 or len(self.negatives) < 1:
            raise DiffauditError("the classifier criterion needs at least one held-out copy of x_p and one held-out real "
                                 "image; prepare a run whose val split holds images")


def shortfall(entry: dict, cfg: ClassifierConfig) -> float:
    """How far a round's (recall, fpr) lies from the criterion: 0 when met."""
    return max(0.0, cfg.criterion_recall - entry["recall"]) + max(0.0, entry["fpr"] - cfg.criterion_fpr)


@torch.no_grad()
def _probabilities(net: nn.Module, images: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    net.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).to(device).float() / 127.5 - 1.0
        out.append(torch.sigmoid(net(x).squeeze(1)).cpu())
    return torch.cat(out).numpy()


def operating_threshold(negatives: np.ndarray, cfg: ClassifierConfig) -> float:
    """The decision threshold: ``cfg.threshold``, raised where needed to the least value that flags at most
    ``criterion_fpr`` of the held-out real images (their probabilities ``negatives``; an image is flagged when its
    probability exceeds the threshold). The operating point is chosen on the val split; the test split's false
    positives, reported in metrics.json, are measured at it and are the independent check."""
    allowed = int(math.floor(cfg.criterion_fpr * len(negatives) + 1e-9))
    ranked = np.sort(negatives)[::-1]
    if allowed >= len(ranked):
        return cfg.threshold
    return float(max(cfg.threshold, ranked[allowed]))


def criterion_record(cfg: ClassifierConfig, history: list[dict], kept: dict, heldout: Heldout, *, cap: int,
                     seconds: float) -> dict:
    """model.json's (and metrics.json's) ``criterion`` of a classifier trained with held-out data."""
    return {"recall": cfg.criterion_recall, "fpr": cfg.criterion_fpr, "met": bool(kept["met"]),
            "measured": {"recall": kept["recall"], "fpr": kept["fpr"],
                         "n_positives": int(len(heldout.positives)), "n_negatives": int(len(heldout.negatives))},
            "round": kept["epoch"], "steps": kept["steps"], "steps_trained": history[-1]["steps"], "cap_steps": cap,
            "seconds": round(seconds, 1), "threshold": kept["threshold"], **heldout.describe}


@torch.no_grad()
def _evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, threshold: float) -> tuple[float, float]:
    net.eval()
    logits = torch.cat([net(x[i:i + batch]).squeeze(1) for i in range(0, len(x), batch)])
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y).item()
    acc = ((torch.sigmoid(logits) > threshold) == y.bool()).float().mean().item()
    return loss, acc


def fit(task: Task, val_task: Task, cfg: ClassifierConfig, *, like: Fingerprint, channels: int,
        device: torch.device, heldout: Heldout | None = None, progress: bool = True,
        desc: str = "classifier") -> tuple[ResNet, dict]:
    """Train one classifier in rounds: to its criterion on ``heldout`` or its cap, keeping the round nearest the
    criterion; without ``heldout``, with early stopping on the validation loss, keeping the best round. Returns the
    model (eval mode) and its training record: ``history`` (one entry per round), ``best_epoch`` (the round kept),
    ``stem``, ``steps`` and, with ``heldout``, ``criterion`` (:func:`criterion_record`)."""
    check_config(cfg)
    started = time.monotonic()
    side, dims = min(task.negatives.shape[2:]), task.negatives.ndim - 2
    net = build_classifier(cfg, channels, side, dims).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(derive_seed(cfg.seed, Stream.VAL))
    val_images, val_labels = val_task.draw(cfg.val_size, cfg.val_positive_share, rng, exact=True)
    x_val = augment(val_images, cfg, like, derive_seed(cfg.seed, Stream.VAL, 1)).to(device)
    y_val = torch.from_numpy(val_labels).float().to(device)
    steps = max(1, math.ceil(cfg.epoch_size / cfg.batch_size))
    total = cfg.max_epochs * steps if cfg.max_steps is None else min(cfg.max_epochs * steps, cfg.max_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)) if cfg.lr_schedule == "cosine" else 1.0)
    history: list[dict] = []
    best, best_state, kept, waited, done = math.inf, None, None, 0, 0
    bar = tqdm(total=math.ceil(total / steps), disable=not progress, desc=desc, unit="round", dynamic_ncols=True)
    for epoch in range(math.ceil(total / steps)):
        net.train()
        running = 0.0
        n = min(steps, total - done)
        for step in range(n):
            seed = derive_seed(cfg.seed, epoch, step, Stream.STEP)
            images, labels = task.draw(cfg.batch_size, cfg.positive_share, np.random.default_rng(seed))
            x = augment(images, cfg, like, seed).to(device)
            y = torch.from_numpy(labels).float().to(device)
            loss = nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(1), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            running += loss.item()
        done += n
        val_loss, val_acc = _evaluate(net, x_val, y_val, 256, cfg.threshold)
        entry = {"epoch": epoch + 1, "steps": done, "train_loss": running / n, "val_loss": val_loss,
                 "val_accuracy": val_acc}
        if heldout is not None:
            p_neg = _probabilities(net, heldout.negatives, device)
            threshold = operating_threshold(p_neg, cfg)
            recall = float((_probabilities(net, heldout.positives, device) > threshold).mean())
            fpr = float((p_neg > threshold).mean())
            entry.update(recall=recall, fpr=fpr, threshold=threshold)
            entry["met"] = shortfall(entry, cfg) == 0
            better = shortfall(entry, cfg) <= best  # ties: the later, longer-trained round
            best = min(best, shortfall(entry, cfg))
            bar.set_postfix(recall=f"{recall:.3f}", fpr=f"{fpr:.3f}", val_loss=f"{val_loss:.4f}")
        else:
            better = val_loss < best
            waited = 0 if better else waited + 1
            best = min(best, val_loss)
            bar.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}", best=f"{best:.4f}")
        history.append(entry)
        if better:
            best_state, kept = copy.deepcopy(net.state_dict()), entry
        bar.update(1)
        if (heldout is not None and entry["met"]) or (heldout is None and waited >= cfg.patience):
            break
    bar.close()
    net.load_state_dict(best_state)
    record = {"history": history, "best_epoch": kept["epoch"], "steps": kept["steps"],
              "stem": stem_for(cfg, side) if dims == 2 else "3^3 convolution, stride 2 (MONAI ResNet)",
              "threshold": kept.get("threshold", cfg.threshold)}
    if heldout is not None:
        record["criterion"] = criterion_record(cfg, history, kept, heldout, cap=total,
                                               seconds=time.monotonic() - started)
    return net.eval(), record


def save_classifier(folder: Path, net: nn.Module, record: dict) -> None:
    """Weights first, ``model.json`` last: a folder with ``model.json`` holds a finished classifier."""
    save_tensors(folder / "model.safetensors", net.state_dict())
    write_json(folder / "model.json", record)


def load_classifier(folder: str | Path, *, device: torch.device | str = "cpu") -> "ClassifierDetector":
    folder = Path(folder)
    if not (folder / "model.json").is_file():
        raise DiffauditError(f"{folder} holds no trained classifier; run 'diffaudit train-classifiers' first")
    meta = read_json(folder / "model.json")
    cfg = from_dict(ClassifierConfig, meta["config"])
    net = build_classifier(cfg, channels=meta["image_shape"][0], side=min(meta["image_shape"][1:]),
                           dims=len(meta["image_shape"]) - 1)
    weights = load_tensors(folder / "model.safetensors")
    check_state_dict(net, weights, folder / "model.safetensors")
    net.load_state_dict(weights)
    return ClassifierDetector(net.to(device).eval(), image_shape=tuple(meta["image_shape"]),
                              threshold=_threshold(meta, cfg, folder), name=meta.get("name", folder.name), meta=meta)


def _threshold(meta: dict, cfg: ClassifierConfig, folder: Path) -> float:
    """The threshold the classifier was trained to (model.json ``threshold``; the config's for older ones)."""
    t = meta.get("threshold", cfg.threshold)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
        raise DiffauditError(f"{folder / 'model.json'} threshold {t!r} is not in (0, 1): the file was edited or damaged; "
                             "rerun 'diffaudit train-classifiers'")
    return float(t)


class ClassifierDetector:
    """A trained classifier as a detector: uint8 images [B, C, H, W] -> sigmoid(logit) > threshold."""

    def __init__(self, net: nn.Module, *, image_shape: tuple[int, int, int], threshold: float = 0.5,
                 name: str = "classifier", meta: dict | None = None, batch_size: int = 512) -> None:
        self.net, self.image_shape, self.threshold, self.name = net, tuple(image_shape), threshold, name
        self.meta = meta or {}
        self.batch_size = batch_size
        self.device = next(net.parameters()).device

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != self.image_shape:
            raise DiffauditError(
                f"{self.name} was trained on images of shape {self.image_shape} but is given {tuple(images.shape[1:])}; "
                "train the classifiers for this run's data ('diffaudit train-classifiers')")
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(images[i:i + self.batch_size]).to(self.device).float() / 127.5 - 1.0
            out.append(torch.sigmoid(self.net(x).squeeze(1)).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.probabilities(images) > self.threshold

    def describe(self) -> dict:
        cfg = self.meta.get("config", {})
        return {"kind": "classifier", "arch": cfg.get("arch"), "threshold": self.threshold}


def classifier_record(name: str, cfg: ClassifierConfig, image_shape: tuple[int, ...], data_id: str) -> dict:
    return {"name": name, "config": to_dict(cfg), "image_shape": list(image_shape), "data": data_id}
