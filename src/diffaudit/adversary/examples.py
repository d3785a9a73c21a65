"""Labelled training examples for the two classifiers (Sec. 3.3, 5.2 and App. A of the paper).

* c_p, "does the image carry the SAF?": a training image, and on a share of the draws the SAF of the audited
  run (its shape, radius and grey level) stamped at a random location that keeps it fully inside (Eq. 10).
* c_id, "is this x_i, the identity behind x_p?": one-versus-all, x_i against the other training images. Every
  image may get a random patch of the SAF's shape with a random grey level (the circular masking of Sec. 3.3),
  so a disc — x_p's fingerprint included — neither makes nor breaks an identity.

Both may be translated by up to ``max_shift`` of the side (edge pixels repeated), then go through torchvision's
AugMix, image by image, and get Gaussian noise of a random strength that stands in for diffusion artefacts (the
presets give it to both; see ``config.CLASSIFIER_PRESETS``). All draws come from generators seeded by the caller, so a
batch is a function of (seed, epoch, step).

Volumes [C, D, H, W] take the same steps with one more axis (shifts in three directions, a ball or shell as the
mask), except AugMix, which is an operation on 2D pictures: in its place (``augmix`` on) each volume goes through
MONAI's ``RandAffine`` (rotations up to 0.1 rad and scaling up to 5% about each axis, border voxels repeated) and
``RandBiasField`` (a smooth multiplicative intensity field of degree 3, coefficients up to 0.1, on half of the
volumes), the scanner-like changes of MONAI's 3D tutorials, seeded from the same stream.

Sizes in pixels are fractions of the image side, fixed at the 28-px values: the copies of x_p are shifted by up to
``COPY_SHIFT`` of the side (1 px at 28 px, 2 px at 64, 5 px at 128), the masks take the SAF's own radius, and AugMix's
translations are already fractions of the side.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import AugMix

from ..config import ClassifierConfig
from ..data.fingerprint import Fingerprint, random_centre
from ..rng import derive_seed

#: the largest shift of a copy of x_p, as a fraction of the side: the 1 px of a 28-px image
COPY_SHIFT = 1 / 28


def pixels(fraction: float, side: int) -> int:
    """``fraction`` of an image side of ``side`` pixels, in whole pixels (1/28 of 28 px is exactly 1)."""
    return int(round(fraction * side + 1e-9))


def translate(image: np.ndarray, *moves: int) -> np.ndarray:
    """A uint8 image [C, H, W] moved by (dy, dx) pixels (a volume [C, D, H, W] by (dz, dy, dx)), the uncovered border
    filled by repeating the edge."""
    sides = image.shape[1:]
    s = max(abs(m) for m in moves)
    if s == 0:
        return image.copy()
    padded = np.pad(image, ((0, 0), *[(s, s)] * len(sides)), mode="edge")
    return padded[(slice(None), *(slice(s - m, s - m + n) for m, n in zip(moves, sides, strict=True)))].copy()


def shifted_copies(image: np.ndarray, shift: int) -> np.ndarray:
    """Every translation of a uint8 image [C, H, W] (or volume [C, D, H, W]) by up to ``shift`` pixels in each
    direction: (2 shift + 1)^2 (a volume's: ^3) noise-free copies, the held-out positives a classifier's criterion is
    measured on."""
    steps = range(-shift, shift + 1)
    return np.stack([translate(image, *m) for m in itertools.product(steps, repeat=image.ndim - 1)])


def random_shifts(images: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each uint8 image [B, C, H, W] (volume [B, C, D, H, W]) translated by a random move in {-shift..shift} per axis."""
    moves = rng.integers(-shift, shift + 1, size=(len(images), images.ndim - 2))
    return np.stack([translate(x, *map(int, m)) for x, m in zip(images, moves, strict=True)])


@dataclass
class Task:
    """A binary task: ``negatives`` (uint8 [N, C, H, W]) and either fixed ``positives`` or a ``stamp`` (SAF)
    that turns a negative into a positive at a random location."""

    negatives: np.ndarray
    positives: np.ndarray | None = None
    stamp: Fingerprint | None = None

    def __post_init__(self) -> None:
        if (self.positives is None) == (self.stamp is None):
            raise ValueError("a Task takes either positives or a stamp")

    def draw(self, n: int, share: float, rng: np.random.Generator, *, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``n`` examples, positive with probability ``share`` (exactly round(share * n) of them if ``exact``)."""
        if exact:
            labels = np.zeros(n, dtype=bool)
            labels[: round(share * n)] = True
            rng.shuffle(labels)
        else:
            labels = rng.random(n) < share
        images = self.negatives[rng.integers(len(self.negatives), size=n)].copy()
        sides = images.shape[2:]
        for k in np.flatnonzero(labels):
            if self.stamp is not None:
                fp = Fingerprint(self.stamp.shape, random_centre(rng, *sides[:2], self.stamp.radius, *sides[2:]),
                                 self.stamp.radius, self.stamp.intensity, self.stamp.width)
                images[k] = fp.apply(images[k])
            else:
                images[k] = self.positives[rng.integers(len(self.positives))]
        return images, labels


def random_masks(images: np.ndarray, like: Fingerprint, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Cover each image with probability ``prob`` by a patch of ``like``'s shape and radius, at a random
    location and with a random grey level."""
    out = images.copy()
    sides = images.shape[2:]
    for k in np.flatnonzero(rng.random(len(images)) < prob):
        fp = Fingerprint(like.shape, random_centre(rng, *sides[:2], like.radius, *sides[2:]), like.radius,
                         float(rng.random()), like.width)
        out[k] = fp.apply(out[k])
    return out


def augment(images: np.ndarray, cfg: ClassifierConfig, like: Fingerprint, seed: int) -> torch.Tensor:
    """Masking, AugMix (volumes: MONAI's affine and bias field) and noise as ``cfg`` asks; uint8 [B, C, H, W] (or
    [B, C, D, H, W]) in, float of the same shape in [-1, 1] out."""
    rng = np.random.default_rng(seed)
    shift = pixels(cfg.max_shift, min(images.shape[2:]))
    if shift > 0:
        images = random_shifts(images, shift, np.random.default_rng([seed, 1]))
    if cfg.mask_prob > 0:
        images = random_masks(images, like, cfg.mask_prob, rng)
    x = torch.from_numpy(images)
    if cfg.augmix and images.ndim == 5:
        x = _scanner_changes(x, seed)
    elif cfg.augmix:
        op = AugMix(severity=cfg.augmix_severity)
        # torchvision's AugMix draws from the global torch RNG; seed it inside fork_rng so it stays untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = torch.stack([op(img) for img in x])  # one augmentation chain per image, not one per batch
    x = x.float() / 255.0
    if cfg.noise_std > 0:
        g = torch.Generator().manual_seed(seed)
        std = cfg.noise_std * torch.rand(len(x), *[1] * (x.ndim - 1), generator=g)
        x = (x + std * torch.randn(x.shape, generator=g)).clamp(0.0, 1.0)
    return x * 2.0 - 1.0


def jittered_copies(image: np.ndarray, n: int, noise_std: float, rng: np.random.Generator, *,
                    shift: int | None = None) -> np.ndarray:
    """``n`` copies of one uint8 image [C, H, W] (or volume [C, D, H, W]), each shifted by up to ``shift`` pixels in
    each direction (edge pixels repeated; default ``COPY_SHIFT`` of the side, 1 px at 28 px) and with Gaussian noise
    of std ``noise_std`` (in [0, 1] units), rounded back to uint8: the near-copies a diffusion model returns when it
    reproduces the image."""
    sides = image.shape[1:]
    s = pixels(COPY_SHIFT, min(sides)) if shift is None else shift
    padded = np.pad(image.astype(np.float64), ((0, 0), *[(s, s)] * len(sides)), mode="edge")
    out = np.empty((n, *image.shape), dtype=np.uint8)
    for k in range(n):
        offsets = rng.integers(0, 2 * s + 1, size=len(sides))
        window = padded[(slice(None), *(slice(o, o + m) for o, m in zip(offsets, sides, strict=True)))]
        x = window + 255.0 * noise_std * rng.standard_normal(image.shape)
        out[k] = np.clip(np.rint(x), 0, 255)
    return out


def _scanner_changes(volumes: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 volumes [B, C, D, H, W] through MONAI's RandAffine and RandBiasField (module docstring), each volume
    with its own draws from ``seed``; uint8 out."""
    from monai.transforms import RandAffine, RandBiasField

    affine = RandAffine(prob=1.0, rotate_range=(0.1, 0.1, 0.1), scale_range=(0.05, 0.05, 0.05), padding_mode="border",
                        mode="bilinear")
    bias = RandBiasField(prob=0.5, degree=3, coeff_range=(0.0, 0.1))
    out = torch.empty_like(volumes)
    for k, v in enumerate(volumes.float() / 255.0):
        affine.set_random_state(seed=derive_seed(seed, k, 1) % 2**32)
        bias.set_random_state(seed=derive_seed(seed, k, 2) % 2**32)
        x = bias(affine(v))
        out[k] = (torch.as_tensor(x).clamp(0, 1) * 255).round().to(torch.uint8)
    return out
