"""Synthetic anatomical fingerprints (SAF), Sec. 3.3 of Dombrowski & Kainz.

Eq. 10: x_p = x_i * (1 - L_p) + x_SAF * L_p, with L_p a binary mask of the SAF's shape whose location is drawn
so that the shape lies entirely inside the image, and x_SAF a constant grey level.

A pixel (r, c) belongs to a shape centred at (r0, c0) when its distance d from the centre satisfies
d <= radius (disc) or radius - width < d <= radius (ring). With integer centres the shape lies inside an
H x W image exactly when floor(radius) <= r0 <= H - 1 - floor(radius), and likewise for c0.

The same :class:`Fingerprint` applies to any images — uint8 pixels or model-space floats, numpy or torch,
any leading dimensions, channels first — which is what the classifiers' training data and circular masking
need.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..errors import DiffauditError


def _distance(h: int, w: int, centre: tuple[int, int]) -> np.ndarray:
    rows, cols = np.ogrid[:h, :w]
    return np.hypot(rows - centre[0], cols - centre[1])


def disc_mask(h: int, w: int, centre: tuple[int, int], radius: float, width: float) -> np.ndarray:
    return _distance(h, w, centre) <= radius


def ring_mask(h: int, w: int, centre: tuple[int, int], radius: float, width: float) -> np.ndarray:
    d = _distance(h, w, centre)
    return (d <= radius) & (d > radius - width)


SHAPES: dict[str, Callable[..., np.ndarray]] = {"disc": disc_mask, "ring": ring_mask}


def check_fits(h: int, w: int, radius: float) -> None:
    """Raise when no integer centre puts a shape of ``radius`` fully inside an h x w image."""
    if not radius > 0:
        raise DiffauditError(f"the SAF radius must be positive, got {radius}")
    k = math.floor(radius)
    if 2 * k + 1 > min(h, w):
        raise DiffauditError(
            f"a SAF of radius {radius} cannot fit inside a {h}x{w} image; use --saf-radius below {min(h, w) / 2 - 0.5:g}"
        )


def random_centre(rng: np.random.Generator, h: int, w: int, radius: float) -> tuple[int, int]:
    """A centre drawn uniformly among those that keep the shape fully inside the image."""
    check_fits(h, w, radius)
    k = math.floor(radius)
    return int(rng.integers(k, h - k)), int(rng.integers(k, w - k))


@dataclass(frozen=True)
class Fingerprint:
    """A SAF: shape, location (row, column of the centre), radius and width in pixels, grey level in [0, 1]."""

    shape: str
    centre: tuple[int, int]
    radius: float
    intensity: float
    width: float = 1.5

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise DiffauditError(f"unknown SAF shape '{self.shape}'; choose one of {', '.join(SHAPES)}")
        if not 0.0 <= self.intensity <= 1.0:
            raise DiffauditError(f"the SAF intensity is a grey level in [0, 1], got {self.intensity}")
        if not 0 < self.width <= self.radius:
            raise DiffauditError(f"the SAF width must be in (0, radius={self.radius}], got {self.width}")
        object.__setattr__(self, "centre", (int(self.centre[0]), int(self.centre[1])))

    def mask(self, h: int, w: int) -> np.ndarray:
        """L_p: boolean [h, w], True under the SAF. Raises when the shape does not lie fully inside."""
        check_fits(h, w, self.radius)
        k = math.floor(self.radius)
        r, c = self.centre
        if not (k <= r <= h - 1 - k and k <= c <= w - 1 - k):
            raise DiffauditError(
                f"a SAF of radius {self.radius} at {self.centre} does not lie fully inside a {h}x{w} image"
            )
        mask = SHAPES[self.shape](h, w, self.centre, self.radius, self.width)
        if not mask.any():
            raise DiffauditError(f"a {self.shape} of radius {self.radius} and width {self.width} covers no pixel; "
                                 "increase --saf-radius or --saf-width")
        return mask

    def apply(self, images):
        """Eq. 10 on images [..., H, W] (channels first): pixels under L_p set to the SAF grey, the rest kept.

        uint8 images take round(255 * intensity); float images are taken to be in model space [-1, 1] and take
        2 * intensity - 1. Returns a new array or tensor of the same type, dtype and shape."""
        h, w = images.shape[-2:]
        mask = self.mask(h, w)
        is_uint8 = str(images.dtype).endswith("uint8")
        value = round(255 * self.intensity) if is_uint8 else 2.0 * self.intensity - 1.0
        if hasattr(images, "detach"):  # torch
            import torch

            m = torch.as_tensor(mask, device=images.device)
            return torch.where(m, torch.full_like(images, value), images)
        return np.where(mask, np.asarray(value, dtype=images.dtype), images)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["centre"] = list(self.centre)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Fingerprint":
        return cls(shape=d["shape"], centre=tuple(d["centre"]), radius=d["radius"], intensity=d["intensity"],
                   width=d.get("width", 1.5))
