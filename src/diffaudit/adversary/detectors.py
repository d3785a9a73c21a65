"""Detectors: anything that maps a batch of uint8 images [B, C, H, W] (or volumes [B, C, D, H, W]) to B booleans.

The count, t' and the error rates take detectors of this one form, so a trained classifier, the reference
nearest-neighbour detector below, or a user's own function are interchangeable.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np

from ..errors import DiffauditError

#: uint8 images [B, C, H, W] -> bool [B]
Detector = Callable[[np.ndarray], np.ndarray]


def call_detector(detector: Detector, images: np.ndarray, name: str = "detector") -> np.ndarray:
    """Run ``detector`` and check that it answered one boolean per image."""
    out = np.asarray(detector(images))
    if out.shape != (len(images),):
        raise DiffauditError(f"{name} returned an array of shape {out.shape} for {len(images)} images; "
                             f"a detector must return one boolean per image, shape ({len(images)},)")
    if out.dtype != np.bool_:
        if not np.isin(out, (0, 1)).all():
            raise DiffauditError(f"{name} returned values other than booleans (dtype {out.dtype})")
        out = out.astype(bool)
    return out


def rmse(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Root-mean-square difference, in [0, 1] pixel units, of uint8 images [B, C, H, W] to each of ``reference``
    [K, C, H, W]: an array [B, K]."""
    a = images.reshape(len(images), -1).astype(np.float64) / 255.0
    b = reference.reshape(len(reference), -1).astype(np.float64) / 255.0
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0) / a.shape[1])


def windows(images: np.ndarray, shift: int) -> list[np.ndarray]:
    """The (2 shift + 1)^k windows of uint8 images [B, C, *spatial] (k spatial axes: 2 for images, 3 for volumes),
    each of the spatial size less 2 shift: the image translated by up to ``shift`` pixels (voxels) along every axis and
    cropped to the common centre."""
    sizes = images.shape[2:]
    return [images[(Ellipsis, *(slice(o, n - 2 * shift + o) for o, n in zip(offsets, sizes)))]
            for offsets in itertools.product(range(2 * shift + 1), repeat=len(sizes))]


def centre_crop(images: np.ndarray, shift: int, axes: int) -> np.ndarray:
    """The centre crop of the last ``axes`` (spatial) axes, ``shift`` pixels dropped at each border."""
    return images[(Ellipsis, *(slice(shift, n - shift) for n in images.shape[-axes:]))]


class NearestNeighbourDetector:
    """The reference identity detector: no training, a pixel-space distance under a calibrated threshold, tolerant to
    translations of up to ``shift`` pixels (voxels: the same detector takes volumes [C, D, H, W], translated along
    all three axes, 27 windows at ``shift`` 1).

    Distances compare the centre crop c(.) of an image (the border of ``shift`` pixels dropped). An image x is flagged
    as a copy of the target x_p when its best-matching window is close to x_p's centre,

        d(x) = min over translations s of RMSE(window_s(x), c(x_p)) < tau,
        tau  = factor * min( min_{j != p} RMSE(c(x_p), c(x_j)),  median_j NN_j ),

    where window_s(x) is the crop of x translated by s in {-shift, ..., shift}^2, x_j runs over the other training
    images and NN_j is the centre-crop distance of x_j to its nearest training neighbour. With factor <= 1/2 the
    first term keeps flags unambiguous: all crops live in one space, so if RMSE(window_s(x), c(x_p)) < tau <=
    RMSE(c(x_p), c(x_j)) / 2 then RMSE(window_s(x), c(x_j)) > tau, by the triangle inequality: the window of x that
    matches x_p is closer to x_p than to any other training image. The second term keeps tau tight on a set whose
    images are far apart. With ``shift`` = 0 this is the plain RMSE on whole images. The threshold and both terms are
    reported.

    >>> rng = np.random.default_rng(0)
    >>> train = rng.integers(0, 256, size=(5, 1, 8, 8), dtype=np.uint8)
    >>> det = NearestNeighbourDetector(train[0], train[1:])
    >>> det(np.stack([train[0], train[1], np.roll(train[0], 1, axis=2)])).tolist()
    [True, False, True]
    """

    def __init__(self, target: np.ndarray, others: np.ndarray, *, factor: float = 0.5, shift: int = 1) -> None:
        if target.ndim not in (3, 4) or others.ndim != target.ndim + 1 or others.shape[1:] != target.shape:
            raise DiffauditError(f"the target must be one image [C, H, W] (or volume [C, D, H, W]) and the others "
                                 f"[N, C, ...] of the same shape; got {target.shape} and {others.shape}")
        if len(others) < 1:
            raise DiffauditError("calibrating the nearest-neighbour threshold needs at least one other training image")
        if not 0 < factor <= 0.5:
            raise DiffauditError(f"factor must be in (0, 0.5] for flags to be unambiguous, got {factor}")
        if shift < 0 or min(target.shape[1:]) - 2 * shift < 4:
            raise DiffauditError(f"shift must leave a centre of at least 4 pixels per side of {target.shape} images, "
                                 f"got {shift}")
        self.target, self.shift, self.axes = target, shift, target.ndim - 1
        self.image_shape = tuple(target.shape)
        centre = centre_crop(target, shift, self.axes)
        to_target = rmse(centre[None], centre_crop(others, shift, self.axes))[0]
        between = rmse(centre_crop(others, shift, self.axes), centre_crop(others, shift, self.axes))
        np.fill_diagonal(between, np.inf)
        self.target_nn = float(to_target.min())
        self.median_nn = float(np.median(between.min(1)))  # inf with a single other image: no second term
        self.factor = factor
        self.threshold = factor * min(self.target_nn, self.median_nn)
        self._centre = centre[None]
        if self.target_nn < 1e-6:  # distinct uint8 images are >= 1 / (255 sqrt(CHW)) apart, about 1e-4
            raise DiffauditError("the target has an exact duplicate among the other training images; "
                                 "no distance threshold can tell a copy of it from a copy of the duplicate")

    def distance(self, images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != self.image_shape:
            raise DiffauditError(f"images of shape {tuple(images.shape[1:])} given to a detector calibrated on "
                                 f"{self.image_shape}")
        return np.min([rmse(np.ascontiguousarray(w), self._centre)[:, 0] for w in windows(images, self.shift)], axis=0)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.distance(images) < self.threshold

    def describe(self) -> dict:
        return {"kind": "nearest-neighbour", "metric": "rmse", "threshold": self.threshold, "factor": self.factor,
                "shift_px": self.shift, "target_nn_distance": self.target_nn,
                "median_train_nn_distance": self.median_nn if np.isfinite(self.median_nn) else None}
