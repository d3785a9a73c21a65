"""The spaces a census matches samples in, and the search for each sample's two nearest training images.

* :class:`PixelSpace`: the reference detector's distance for every training image, not only x_p: the RMSE (pixels
  in [0, 1]) of the best of the sample's windows translated by up to ``shift`` pixels (voxels) against the training
  image's centre crop (:class:`~diffaudit.adversary.detectors.NearestNeighbourDetector`).
* :class:`EmbeddingSpace`: the cosine distance 1 - cos(f(a), f(b)) of an encoder's features (the census's own
  contrastive embedding, :mod:`.embedding`, or one the user gives).

:func:`nearest_two` searches in chunks of queries (and, in pixel space, one window at a time), so memory holds one
[chunk, K] block of distances beside the gallery, for any number of samples; a large gallery is searched the same
way, each query's two nearest kept as the chunks pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from ...adversary.detectors import centre_crop, windows
from ...errors import DiffauditError

CHUNK = 256  # queries per block of distances


@dataclass(frozen=True)
class Nearest:
    """Each query's nearest gallery image (``index``, ``distance``) and second nearest (``second``,
    ``second_distance``; +inf for a gallery of one)."""

    index: np.ndarray
    distance: np.ndarray
    second: np.ndarray
    second_distance: np.ndarray


class Space(Protocol):
    name: str

    def describe(self) -> dict: ...

    def distances(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """float64 [len(queries), len(gallery)]."""


class PixelSpace:
    """RMSE in [0, 1] pixel units, tolerant to translations of up to ``shift`` pixels along every spatial axis."""

    name = "pixel"

    def __init__(self, shift: int = 1) -> None:
        if shift < 0:
            raise DiffauditError(f"the pixel space's shift must be 0 or more pixels, got {shift}")
        self.shift = int(shift)

    def describe(self) -> dict:
        return {"space": self.name, "metric": "rmse", "shift_px": self.shift,
                "note": f"pixel RMSE (intensities in [0, 1]) of the best of the sample's translations by up to "
                        f"±{self.shift} px against each training image's centre crop"}

    def distances(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        axes = queries.ndim - 2
        ref = torch.from_numpy(centre_crop(gallery, self.shift, axes).reshape(len(gallery), -1).astype(np.float32) / 255)
        ref_sq = (ref * ref).sum(1)
        best = None
        for window in windows(queries, self.shift):
            q = torch.from_numpy(np.ascontiguousarray(window).reshape(len(window), -1).astype(np.float32) / 255)
            d2 = ((q * q).sum(1)[:, None] + ref_sq[None] - 2 * q @ ref.T).clamp_min(0) / q.shape[1]
            best = d2 if best is None else torch.minimum(best, d2)
        return best.sqrt().double().numpy()


class EmbeddingSpace:
    """Cosine distance of ``encode``'s features (uint8 images [B, C, ...] -> float [B, F])."""

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], *, name: str, described: dict) -> None:
        self.encode, self.name, self.described = encode, name, described

    def describe(self) -> dict:
        return {"space": self.name, "metric": "cosine distance (1 - cos)", **self.described}

    def features(self, images: np.ndarray) -> np.ndarray:
        out = np.concatenate([self.encode(images[i:i + CHUNK]) for i in range(0, len(images), CHUNK)])
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norm, 1e-12)

    def distances(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        return np.clip(1.0 - self.features(queries) @ self.features(gallery).T, 0.0, 2.0)


def nearest_two(space: Space, queries: np.ndarray, gallery: np.ndarray, *,
                progress: Callable[[int], None] | None = None) -> Nearest:
    """Each query's two nearest gallery images in ``space``, in chunks of :data:`CHUNK` queries."""
    if len(gallery) < 1:
        raise DiffauditError("the census needs at least one training image to match against")
    feats = isinstance(space, EmbeddingSpace)
    g = space.features(gallery) if feats else gallery
    index, dist, second, second_d = [], [], [], []
    for lo in range(0, len(queries), CHUNK):
        chunk = queries[lo:lo + CHUNK]
        d = np.clip(1.0 - space.features(chunk) @ g.T, 0.0, 2.0) if feats else space.distances(chunk, g)
        order = np.argsort(d, axis=1, kind="stable")[:, :2]
        rows = np.arange(len(chunk))
        index.append(order[:, 0])
        dist.append(d[rows, order[:, 0]])
        if d.shape[1] > 1:
            second.append(order[:, 1])
            second_d.append(d[rows, order[:, 1]])
        else:
            second.append(np.full(len(chunk), -1))
            second_d.append(np.full(len(chunk), np.inf))
        if progress is not None:
            progress(len(chunk))
    return Nearest(np.concatenate(index), np.concatenate(dist), np.concatenate(second), np.concatenate(second_d))


def close_pairs(space: Space, images: np.ndarray, tau: float) -> list[tuple[int, int]]:
    """The pairs (i, j), i < j, of ``images`` closer than ``tau`` to each other in ``space``, computed in blocks of
    :data:`CHUNK` rows so that memory never holds the whole [K, K] matrix."""
    feats = isinstance(space, EmbeddingSpace)
    g = space.features(images) if feats else images
    out: list[tuple[int, int]] = []
    for lo in range(0, len(images), CHUNK):
        d = (np.clip(1.0 - g[lo:lo + CHUNK] @ g.T, 0.0, 2.0) if feats else space.distances(images[lo:lo + CHUNK], g))
        for i, j in zip(*np.nonzero(d < tau)):
            if lo + i < j:
                out.append((int(lo + i), int(j)))
    return out
