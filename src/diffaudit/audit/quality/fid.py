"""Fréchet distances between generated and real images (the paper's Table 2: FID train and FID test).

The Fréchet distance is torchmetrics' ``FrechetInceptionDistance`` (float64 statistics, the usual
||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))) in both cases below; only the feature extractor differs,
and results always name it, because distances from different extractors are not comparable:

* ``inception`` — the standard FID: torch-fidelity's port of the TF Inception-v3 pool features (2048-d). Grey
  images are repeated to RGB and resized to 299x299 by torchmetrics. The weights
  (``pt_inception-2015-12-05-6726825d.pth``) are looked up in ``--inception-weights``, ``$DIFFAUDIT_INCEPTION``
  and torch's hub cache; with ``download=True`` torchmetrics fetches them (internet needed).
* ``domain`` — where no Inception weights are available: a ResNet10 trained on the dataset's own class labels
  (its training split), whose 64-d bottleneck before the classification head is the feature. It is trained once
  per (dataset, seed, config), deterministically, and saved as safetensors + JSON so that all audits of a sweep
  share it. Its values are *not* Inception FIDs; FID_train against FID_test on the same extractor still shows
  the memorisation gap.

FID_train compares the generated images with the training set D; FID_test with an equally large random draw of
the test split, so the two reference sets have the same size and the same small-sample bias.

Each FID also gets a bootstrap interval (:func:`fid_uncertainty`): the features are extracted once, and only the
Fréchet distance (:func:`frechet_distance`, float64) is recomputed on resamples of them; the same replicates give a
paired test of FID_test > FID_train. :func:`reliability` flags an FID whose covariances are singular (fewer images
than feature dimensions), where the value depends on which few images were drawn.
"""

from __future__ import annotations

import enum
import hashlib
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torchmetrics.functional import auroc
from torchvision.models.resnet import BasicBlock, ResNet
from tqdm.auto import tqdm

from ...config import INCEPTION_FILE, ExtractorConfig, to_dict
from ...errors import DiffauditError
from ...extras import require
from ...io import check_state_dict, existing_artefact, load_tensors, read_json, save_tensors, write_json
from ...rng import derive_seed

#: Bootstrap replicates per interval: the 2.5 % and 97.5 % quantiles of 200 fall between the 5th/6th and the
#: 195th/196th sorted replicate, and each replicate costs one Fréchet distance per set from features extracted once.
BOOTSTRAP_RESAMPLES = 200


class Stream(enum.IntEnum):
    """What a seed derived from this stage's seed is for (``derive_seed(seed, ..., Stream.X)``). The values are part
    of every run's numbers, so they never change; streams of other stages may share a value, since each stage derives
    from its own seed."""

    INIT = 21  # the extractor's initial weights
    AUG = 23  # its batches and random shifts


class BottleneckFeatures(nn.Module):
    """uint8 images (or volumes) -> the ``features``-d output of ``body``, a classifier whose ``head`` was trained on
    it: the feature extractor of a Fréchet distance. Subclasses build ``body`` and ``head``."""

    body: nn.Module
    head: nn.Module

    def __init__(self, features: int) -> None:
        super().__init__()
        self.num_features = features  # read by torchmetrics

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images
        return self.embed(x)


class DomainFeatures(BottleneckFeatures):
    """uint8 images [B, C, H, W] -> the ``features``-d bottleneck of a ResNet10 label classifier; ``width`` the
    channels of its first level (64, torchvision's, doubling at each of the four levels)."""

    def __init__(self, channels: int, n_classes: int, features: int = 64, width: int = 64) -> None:
        super().__init__(features)
        self.body = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=features)
        if width != 64:  # torchvision's own builder at other channel counts
            body = self.body
            body.inplanes = width
            body.bn1 = nn.BatchNorm2d(width)
            for level in range(4):
                setattr(body, f"layer{level + 1}", body._make_layer(BasicBlock, width << level, 1,
                                                                   stride=1 if level == 0 else 2))
            body.fc = nn.Linear(8 * width, features)
            for m in body.modules():  # torchvision's initialisation of the rebuilt levels
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.body.conv1 = nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.head = nn.Linear(features, n_classes)


def shift_images(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Each image of a batch translated by up to ``max_shift`` pixels (replicate padding), seeded by ``g``."""
    if max_shift == 0:
        return x
    pad = nn.functional.pad(x, [max_shift] * 4, mode="replicate")
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=g)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = pad[i, :, dy:dy + h, dx:dx + w]
    return out


def train_extractor(folder: str | Path, images: np.ndarray, labels: np.ndarray, *, name: str,
                    val: tuple[np.ndarray, np.ndarray] | None = None, cfg: ExtractorConfig | None = None,
                    device: torch.device | str = "cpu", progress: bool = True,
                    n_classes: int | None = None) -> "DomainFeatures":
    """Train (or load, when ``folder`` holds one of the same config and data) the fallback extractor."""
    folder = Path(folder)
    cfg = cfg or ExtractorConfig()
    labels = np.asarray(labels).reshape(len(labels), -1)[:, 0].astype(np.int64)
    n_classes = n_classes or int(labels.max()) + 1
    record = {"name": name, "config": to_dict(cfg), "image_shape": list(images.shape[1:]), "n_classes": n_classes,
              "data": hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:16]}
    if existing_artefact(folder / "model.json", record, what="a feature extractor",
                         fix="remove it or use another folder") is not None:
        return load_extractor(folder, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, Stream.INIT))
        net = DomainFeatures(images.shape[1], n_classes, cfg.features)
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels)
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.AUG))
    perm, pos = torch.randperm(len(x_all), generator=g), 0
    net.train()
    for _ in tqdm(range(cfg.steps), disable=not progress, desc=f"FID extractor ({name})", unit="step", dynamic_ncols=True):
        if pos + cfg.batch_size > len(perm):
            perm, pos = torch.randperm(len(x_all), generator=g), 0
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        x = shift_images(x_all[idx].float() / 127.5 - 1.0, cfg.shift, g).to(device)
        loss = nn.functional.cross_entropy(net.head(net.embed(x)), y_all[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    metrics = {}
    if val is not None:
        vy = np.asarray(val[1]).reshape(len(val[1]), -1)[:, 0]
        scores = evaluate_classifier(net, val[0], vy, n_classes, device)
        metrics = {"val_accuracy": scores["accuracy"], "val_auroc": scores["auroc"], "val_n": scores["n_test"],
                   "majority_class_share": float(np.bincount(vy).max() / len(vy))}
    save_tensors(folder / "model.safetensors", net.state_dict())
    write_json(folder / "model.json", {**record, "metrics": metrics})
    return net


@torch.no_grad()
def evaluate_classifier(net: DomainFeatures, images: np.ndarray, labels: np.ndarray, n_classes: int,
                        device: torch.device | str) -> dict:
    """Accuracy and AUROC (torchmetrics; macro one-vs-rest above two classes) of a label classifier."""
    was_training = net.training
    net.eval()
    logits = torch.cat([net.head(net(torch.from_numpy(images[i:i + 256]).to(device))).cpu()
                        for i in range(0, len(images), 256)])
    net.train(was_training)
    target = torch.from_numpy(np.asarray(labels).reshape(-1).astype(np.int64))
    probs = logits.softmax(1)
    if n_classes == 2:
        score = float(auroc(probs[:, 1], target, task="binary"))
    else:
        score = float(auroc(probs, target, task="multiclass", num_classes=n_classes, average="macro"))
    # torchmetrics returns float32, whose trapezoid sum can exceed 1 by one ulp (1.0000001) on a perfect separation
    score = min(score, 1.0)
    return {"accuracy": float((logits.argmax(1) == target).float().mean()), "auroc": score, "n_test": int(len(target))}


def load_extractor(folder: str | Path, *, device: torch.device | str = "cpu") -> DomainFeatures:
    folder = Path(folder)
    meta = read_json(folder / "model.json")
    net = DomainFeatures(meta["image_shape"][0], meta["n_classes"], meta["config"]["features"])
    weights = load_tensors(folder / "model.safetensors")
    check_state_dict(net, weights, folder / "model.safetensors")
    net.load_state_dict(weights)
    return net.to(device).eval()


def find_inception_weights(path: str | Path | None = None) -> Path | None:
    """The Inception weights file from ``path``, ``$DIFFAUDIT_INCEPTION`` or torch's hub cache; None if absent."""
    candidates = [path, os.environ.get("DIFFAUDIT_INCEPTION"),
                  Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    if path:
        raise DiffauditError(f"no Inception weights at {path}; give the path of {INCEPTION_FILE} or leave it out")
    return None


def download_inception_weights() -> Path:
    """Fetch torch-fidelity's Inception weights into torch's hub cache; torch checks the SHA-256 prefix that the
    file name carries (``...-6726825d.pth``) and deletes a file that does not match."""
    require("torch_fidelity", "the Inception FID")
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    dest = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(dest), hash_prefix=INCEPTION_FILE.rsplit("-", 1)[1][:8])
    except (OSError, RuntimeError) as err:
        raise DiffauditError(f"download of the Inception weights failed ({err}); check the internet connection, or "
                             f"put {INCEPTION_FILE} in {dest.parent} (or pass --inception-weights)") from None
    return dest


def load_inception_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The Inception weights in ``path`` as tensors, unpickled with ``torch.load(weights_only=True)``, which builds
    tensors and plain containers only and never runs code from the file. A file that needs more is refused: an
    audit runs on machines that hold patient data, and a planted weights file must not run there."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise DiffauditError(f"refusing the Inception weights {path}: they do not load as plain tensors ({first}); "
                             f"a weights file that needs general unpickling can run code. Delete it and fetch "
                             f"{INCEPTION_FILE} again, or use --fid-extractor domain") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DiffauditError(f"refusing the Inception weights {path}: not a dict of tensors (a state dict)")
    return state


def inception_extractor(weights: Path | None) -> nn.Module:
    """torch-fidelity's Inception-v3 (through torchmetrics) with the checked weights of ``weights``, downloaded
    first when None. torch-fidelity unpickles its weights file without restriction, so it is only ever handed a
    copy re-saved here from the tensors that :func:`load_inception_state` accepted."""
    require("torch_fidelity", "the Inception FID")
    from torchmetrics.image.fid import NoTrainInceptionV3

    state = load_inception_state(weights if weights is not None else download_inception_weights())
    with tempfile.TemporaryDirectory(prefix="diffaudit-inception-") as tmp:
        clean = Path(tmp) / INCEPTION_FILE
        torch.save(state, clean)
        try:
            return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(clean))
        except RuntimeError as err:  # load_state_dict: missing or unexpected keys, wrong shapes
            first = str(err).strip().splitlines()[0][:160]
            raise DiffauditError(f"{weights} holds tensors, but not the Inception-v3 weights of {INCEPTION_FILE} "
                                 f"({first})") from None


def _moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and a factor R of the unbiased covariance S = R R^T of features [n, d], in float64. R is the centred
    features over sqrt(n - 1), transposed ([d, n]), when n <= d, and the symmetric square root of S ([d, d]) from its
    eigendecomposition otherwise: whichever is smaller."""
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    mean = x.mean(0)
    y = (x - mean) / math.sqrt(n - 1)
    if n <= d:
        return mean, y.T
    w, v = np.linalg.eigh(y.T @ y)
    return mean, v * np.sqrt(np.clip(w, 0.0, None))


def _frechet(m1: np.ndarray, r1: np.ndarray, m2: np.ndarray, r2: np.ndarray) -> float:
    # Tr (S_1 S_2)^(1/2) is the sum of the square roots of the eigenvalues of R_1 R_1^T R_2 R_2^T, whose non-zero ones
    # are those of (R_1^T R_2)(R_1^T R_2)^T: the sum of the singular values of R_1^T R_2. Tr S = ||R||_F^2.
    cross = np.linalg.svd(r1.T @ r2, compute_uv=False).sum()
    return float(np.sum((m1 - m2) ** 2) + np.sum(r1 ** 2) + np.sum(r2 ** 2) - 2.0 * cross)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two
    feature sets [n, d] (unbiased covariances, float64): the quantity torchmetrics computes from its running sums.
    The trace of the square root is the nuclear norm of R_a^T R_b for factors S = R R^T, so a set of n < d images
    costs an n-column factor instead of a d x d matrix square root, and singular covariances are exact.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(50, 3))
    >>> abs(frechet_distance(x, x)) < 1e-9
    True
    >>> round(frechet_distance(x, x + 1.0), 6)  # a shift of 1 in each of 3 dimensions: ||mu_a - mu_b||^2 = 3
    3.0
    """
    return _frechet(*_moments(a), *_moments(b))


def bootstrap_fid(generated: np.ndarray, references: dict[str, np.ndarray], *, resamples: int,
                  seed: int) -> dict[str, np.ndarray]:
    """Fréchet distances of ``resamples`` paired bootstrap replicates, per reference set: each replicate draws the
    generated features and every reference set's features with replacement (the generated draw is shared by all
    reference sets, so differences between them are paired). Replicate b is the same for any number of resamples."""
    if resamples < 1:
        raise DiffauditError(f"the FID bootstrap needs at least 1 resample, got {resamples}; use e.g. "
                             f"{BOOTSTRAP_RESAMPLES}")
    rng = np.random.default_rng(seed)
    out = {name: np.empty(resamples) for name in references}
    n_g = len(generated)
    for b in range(resamples):
        m_g, r_g = _moments(generated[rng.integers(0, n_g, n_g)])
        for name, ref in references.items():
            out[name][b] = _frechet(m_g, r_g, *_moments(ref[rng.integers(0, len(ref), len(ref))]))
    return out


def recentred_quantiles(point: float, replicates: np.ndarray, q: float | list[float]) -> np.ndarray:
    """Quantiles of the bootstrap replicates moved so that their mean is the point value.

    A resample repeats about 1/e of the images, and the Fréchet distance grows as a set's effective size shrinks, so
    resampled FIDs sit above the point value, often wholly (256 against 16 images of 64-d Gaussian features: the
    middle 95% of the replicates spans 81-96 around a value of 72.5). Their spread measures how the FID moves with
    the images drawn (about twice the spread over fresh draws in that example: conservative); their offset is the
    resampling's own bias, removed here.

    >>> recentred_quantiles(10.0, np.array([12.0, 13.0, 14.0]), [0.0, 1.0]).tolist()
    [9.0, 11.0]
    """
    return point + np.quantile(replicates - replicates.mean(), q)


def fid_uncertainty(generated: np.ndarray, references: dict[str, np.ndarray], *, point: dict[str, float],
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int,
                    gap: tuple[str, str] | None = ("train", "test")) -> dict:
    """95% bootstrap intervals of the FIDs ``point`` (one per reference set; results.json ``<name>_ci95``) and, for
    ``gap = (low, high)``, the paired test of FID_high - FID_low > 0 (``gap``, ``gap_significant``): significant when
    the one-sided 95% lower bound of the difference (the 5% quantile of the paired replicates' differences) is above
    0. Intervals are the replicates' 2.5 % and 97.5 % quantiles re-centred on the point value
    (:func:`recentred_quantiles`), clipped at 0 (a Fréchet distance is never negative)."""
    reps = bootstrap_fid(generated, references, resamples=resamples, seed=seed)
    section: dict = {}
    for name in references:
        lo, hi = recentred_quantiles(point[name], reps[name], [0.025, 0.975])
        section[f"{name}_ci95"] = [max(float(lo), 0.0), max(float(hi), 0.0)]
    if gap is not None:
        low, high = gap
        value = point[high] - point[low]
        lower = float(recentred_quantiles(value, reps[high] - reps[low], 0.05))
        section["gap"] = {"value": value, "lower95": lower,
                          "what": f"FID_{high} - FID_{low}, paired bootstrap, one-sided 95% lower bound"}
        section["gap_significant"] = bool(lower > 0)
    section["bootstrap"] = {"resamples": resamples, "seed": seed,
                            "method": "percentile bootstrap of features extracted once (generated and reference "
                                      "sets resampled with replacement, the generated draw shared), re-centred on "
                                      "the point value",
                            "bias": {name: float(reps[name].mean() - point[name]) for name in references}}
    return section


def reliability(*, n_generated: int, n_reference: int, n_features: int) -> tuple[bool, str | None]:
    """Whether both covariances of an FID are of full rank, and if not, why, in one sentence.

    n feature vectors deviate from their mean in at most n - 1 independent directions (the deviations sum to zero),
    so a d-dimensional covariance needs n >= d + 1 images to be of full rank; with fewer, the Fréchet distance sees
    only the directions the few images span and moves with which images were drawn.

    >>> reliability(n_generated=256, n_reference=16, n_features=64)[0]
    False
    >>> reliability(n_generated=256, n_reference=65, n_features=64)
    (True, None)
    """
    short = [f"{n} {what}" for what, n in (("reference images per set", n_reference),
                                           ("generated images", n_generated)) if n <= n_features]
    if not short:
        return True, None
    return False, (f"{' and '.join(short)} for {n_features}-d features: a covariance of n images has rank at most "
                   f"n - 1, so it is singular below {n_features + 1} images and the FID depends on which images were "
                   f"drawn")


class Frechet:
    """Streaming Fréchet distance between uint8 image sets through one feature extractor.

    ``extractor`` is a :class:`DomainFeatures` or the string "inception" (with ``weights``, or None to download
    them; either way they are loaded as tensors only, see :func:`load_inception_state`). The generated images go through the extractor once, however many reference sets
    they are compared with: they take torchmetrics' "real" side, which ``reset_real_features=False`` keeps across
    resets, and each reference set the other side (the distance is symmetric)."""

    def __init__(self, extractor: nn.Module | str, *, weights: Path | None = None, device: torch.device | str = "cpu",
                 batch_size: int = 256) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.device, self.batch_size = torch.device(device), batch_size
        self.inception = extractor == "inception"
        if self.inception:
            extractor = inception_extractor(weights)
        self.metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False)
        self.metric = self.metric.to(self.device)

    def _feed(self, images: Iterable[np.ndarray], real: bool) -> tuple[int, np.ndarray]:
        """Update the metric with the images; return their number and their features, as torchmetrics saw them (a
        hook on the extractor records its outputs, so the metric's own computation is untouched)."""
        n, kept = 0, []
        hook = self.metric.inception.register_forward_hook(
            lambda _m, _x, out: kept.append(out.detach().double().reshape(-1, out.shape[-1]).cpu().numpy()))
        try:
            for chunk in images:
                for i in range(0, len(chunk), self.batch_size):
                    x = torch.from_numpy(np.ascontiguousarray(chunk[i:i + self.batch_size])).to(self.device)
                    if self.inception and x.shape[1] == 1:
                        x = x.repeat(1, 3, 1, 1)
                    with torch.no_grad():
                        self.metric.update(x, real=real)
                    n += len(x)
        finally:
            hook.remove()
        return n, np.concatenate(kept) if kept else np.zeros((0, 0))

    def distances(self, generated: Iterable[np.ndarray], references: dict[str, np.ndarray]) -> dict[str, dict]:
        """FID between the generated images (an iterable of uint8 batches) and each uint8 reference set."""
        return self.distances_and_features(generated, references)[0]

    def distances_and_features(self, generated: Iterable[np.ndarray], references: dict[str, np.ndarray]
                               ) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
        """:meth:`distances`, and the features [n, d] (float64) of the generated images (``"generated"``) and of each
        reference set, for :func:`fid_uncertainty`."""
        self.metric.reset_real_features = True
        self.metric.reset()  # everything, the generated side included
        self.metric.reset_real_features = False
        n_generated, features = self._feed(generated, real=True)
        feats = {"generated": features}
        out = {}
        for name, reference in references.items():
            self.metric.reset()  # the reference side only
            n_reference, feats[name] = self._feed([reference], real=False)
            if min(n_generated, n_reference) < 2:
                raise DiffauditError(f"FID needs at least 2 images on each side, got {n_generated} generated and "
                                     f"{n_reference} real")
            value = float(self.metric.compute())
            out[name] = {"value": max(value, 0.0) if math.isfinite(value) else value, "n_generated": n_generated,
                         "n_reference": n_reference}
        return out, feats

    def distance(self, generated: Iterable[np.ndarray], reference: np.ndarray) -> dict:
        """FID between the generated images (an iterable of uint8 batches) and ``reference`` (uint8)."""
        return self.distances(generated, {"reference": reference})["reference"]
