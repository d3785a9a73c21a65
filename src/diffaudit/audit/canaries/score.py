"""Every candidate's reference detector, in one pass over the samples.

Candidate j's detector is the reference nearest-neighbour detector of :class:`~diffaudit.adversary.detectors.
NearestNeighbourDetector` with x_p^(j) as its target: a sample is a copy of x_p^(j) when one of its windows shifted
by up to ``shift`` pixels (voxels) lies within RMSE τ_j of x_p^(j)'s centre crop, with

    τ_j = ½ min( min over the reference images of RMSE(x_p^(j), x),  median nearest-neighbour RMSE of the base images ).

The reference images are the N_D base images and the other m − 1 candidates (with their SAF), whether included or
not. They never depend on which candidates were included, so neither do the scores: the one-run bound needs the
guesses to be a function of the model's output alone. With the factor ½ no sample is a copy of two candidates.

All m candidates are scored in one pass: a [B, m] distance matrix per window, chunked over the samples.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ...adversary.detectors import centre_crop, windows
from ...errors import DiffauditError

CHUNK = 256  # samples per distance block


def _flat(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1)).to(torch.float32) / 255.0


def _rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[len(a), len(b)] RMSE of flat rows in [0, 1] (the detectors' metric), in float64 for small distances."""
    a, b = a.double(), b.double()
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return torch.sqrt(torch.clamp(d2, min=0.0) / a.shape[1])


class CandidateDetectors:
    """The m detectors of the module docstring; ``targets`` uint8 [m, C, ...] (the x_p^(j)), ``base`` the N_D other
    training images."""

    def __init__(self, targets: np.ndarray, base: np.ndarray, *, shift: int = 1, factor: float = 0.5) -> None:
        if len(targets) < 1 or len(base) < 2 or base.shape[1:] != targets.shape[1:]:
            raise DiffauditError(f"the candidates' detectors need targets and at least 2 base images of one shape; got "
                                 f"{targets.shape} and {base.shape}")
        self.shift, self.axes, self.shape = shift, targets.ndim - 2, tuple(targets.shape[1:])
        self.centres = _flat(centre_crop(targets, shift, self.axes))
        base_c = _flat(centre_crop(base, shift, self.axes))
        between = _rmse(base_c, base_c)
        between.fill_diagonal_(float("inf"))
        self.median_nn = float(between.min(1).values.median())
        to_base = _rmse(self.centres, base_c).min(1).values
        among = _rmse(self.centres, self.centres)
        among.fill_diagonal_(float("inf"))
        nearest = torch.minimum(to_base, among.min(1).values)
        if float(nearest.min()) < 1e-6:
            j = int(nearest.argmin())
            raise DiffauditError(f"canary candidate {j} has an exact duplicate among the training images; prepare again "
                                 "with another --seed")
        self.target_nn = nearest.numpy()
        self.thresholds = factor * np.minimum(self.target_nn, self.median_nn)

    def distances(self, images: np.ndarray) -> np.ndarray:
        """[len(images), m]: each image's best-window RMSE to each candidate."""
        if tuple(images.shape[1:]) != self.shape:
            raise DiffauditError(f"images of shape {tuple(images.shape[1:])} given to detectors of {self.shape}")
        out = np.empty((len(images), len(self.centres)))
        for start in range(0, len(images), CHUNK):
            block = images[start:start + CHUNK]
            best = None
            for w in windows(block, self.shift):
                d = _rmse(_flat(w), self.centres)
                best = d if best is None else torch.minimum(best, d)
            out[start:start + len(block)] = best.numpy()
        return out

    def own_flags(self, images: np.ndarray, j: int) -> np.ndarray:
        """bool [len(images)]: which of ``images`` candidate j's detector flags (its centre alone: O(1) in m)."""
        best = None
        for w in windows(images, self.shift):
            d = _rmse(_flat(w), self.centres[j:j + 1])[:, 0]
            best = d if best is None else torch.minimum(best, d)
        return best.numpy() < self.thresholds[j]

    def flags(self, images: np.ndarray) -> np.ndarray:
        """bool [len(images), m]: which candidate each image copies (at most one, by the factor ½)."""
        return self.distances(images) < self.thresholds[None, :]

    def count(self, batches: Iterable[np.ndarray]) -> tuple[np.ndarray, int]:
        """(k_j for every candidate, N): the copies of each among the samples, in one pass."""
        counts, n = np.zeros(len(self.centres), dtype=np.int64), 0
        for images in batches:
            counts += self.flags(images).sum(0)
            n += len(images)
        return counts, n
