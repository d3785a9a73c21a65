"""Synthetic anatomical fingerprints (SAF), Sec. 3.3 of Dombrowski & Kainz.

Eq. 10: x_p = x_i * (1 - L_p) + x_SAF * L_p, with L_p a binary mask of the SAF's shape whose location is drawn
so that the shape lies entirely inside the image, and x_SAF a constant grey level.

A pixel (r, c) belongs to a shape centred at (r0, c0) when its distance d from the centre satisfies
d <= radius (disc) or radius - width < d <= radius (ring). With integer centres the shape lies inside an
H x W image exactly when floor(radius) <= r0 <= H - 1 - floor(radius), and likewise for c0.

In a volume the SAF is a ball (d <= radius) or a shell (radius - width < d <= radius), the disc's and the ring's
analogues, centred at (d0, r0, c0) by the same rule on each of the three axes.

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


def _distance(shape: tuple[int, ...], centre: tuple[int, ...]) -> np.ndarray:
    """The distance of every pixel (voxel) of an array of ``shape`` from ``centre``."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum((g - c) ** 2.0 for g, c in zip(grids, centre)))


def disc_mask(h: int, w: int, centre: tuple[int, int], radius: float, width: float) -> np.ndarray:
    return _distance((h, w), centre) <= radius


def ring_mask(h: int, w: int, centre: tuple[int, int], radius: float, width: float) -> np.ndarray:
    d = _distance((h, w), centre)
    return (d <= radius) & (d > radius - width)


def ball_mask(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float, width: float) -> np.ndarray:
    return _distance(shape, centre) <= radius


def shell_mask(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float, width: float) -> np.ndarray:
    d = _distance(shape, centre)
    return (d <= radius) & (d > radius - width)


SHAPES: dict[str, Callable[..., np.ndarray]] = {"disc": disc_mask, "ring": ring_mask}  # images
VOLUME_SHAPES: dict[str, Callable[..., np.ndarray]] = {"ball": ball_mask, "shell": shell_mask}  # volumes


def shape_mask(shape: str, sides: tuple[int, ...], centre: tuple[int, ...], radius: float, width: float) -> np.ndarray:
    """The SAF ``shape`` (disc or ring in an image, ball or shell in a volume) as a boolean array of ``sides``."""
    if shape in SHAPES and len(sides) == 2:
        return SHAPES[shape](*sides, centre, radius, width)
    if shape in VOLUME_SHAPES and len(sides) == 3:
        return VOLUME_SHAPES[shape](tuple(sides), centre, radius, width)
    kind = "an image" if len(sides) == 2 else "a volume"
    names = SHAPES if len(sides) == 2 else VOLUME_SHAPES
    raise DiffauditError(f"a SAF '{shape}' cannot be drawn in {kind} of {'x'.join(map(str, sides))}; choose one of "
                         f"{', '.join(names)} (--saf-shape)")


def check_fits(h: int, w: int, radius: float, *more: int) -> None:
    """Raise when no integer centre puts a shape of ``radius`` fully inside an h x w image (h x w x more[0] ...)."""
    if not radius > 0:
        raise DiffauditError(f"the SAF radius must be positive, got {radius}")
    k = math.floor(radius)
    sides = (h, w, *more)
    if 2 * k + 1 > min(sides):
        what = "image" if len(sides) == 2 else "volume"
        raise DiffauditError(f"a SAF of radius {radius} cannot fit inside a {'x'.join(map(str, sides))} {what}; use "
                             f"--saf-radius below {min(sides) / 2 - 0.5:g}")


def random_centre(rng: np.random.Generator, h: int, w: int, radius: float, *more: int) -> tuple[int, ...]:
    """A centre drawn uniformly among those that keep the shape fully inside the h x w image (h x w x more[0] ...,
    the sides of a volume in order D, H, W), one ``rng.integers`` per axis in order."""
    check_fits(h, w, radius, *more)
    k = math.floor(radius)
    return tuple(int(rng.integers(k, n - k)) for n in (h, w, *more))


@dataclass(frozen=True)
class Fingerprint:
    """A SAF: shape, location (row, column of the centre; depth, row, column in a volume), radius and width in
    pixels (voxels), grey level in [0, 1]. Discs and rings are drawn in images, balls and shells in volumes."""

    shape: str
    centre: tuple[int, int]
    radius: float
    intensity: float
    width: float = 1.5

    def __post_init__(self) -> None:
        if self.shape not in SHAPES and self.shape not in VOLUME_SHAPES:
            raise DiffauditError(f"unknown SAF shape '{self.shape}'; choose one of {', '.join([*SHAPES, *VOLUME_SHAPES])}")
        if len(self.centre) != self.dims:
            raise DiffauditError(f"a {self.shape} has a centre of {self.dims} coordinates, got {list(self.centre)}")
        if not 0.0 <= self.intensity <= 1.0:
            raise DiffauditError(f"the SAF intensity is a grey level in [0, 1], got {self.intensity}")
        if not 0 < self.width <= self.radius:
            raise DiffauditError(f"the SAF width must be in (0, radius={self.radius}], got {self.width}")
        object.__setattr__(self, "centre", tuple(int(c) for c in self.centre))

    @property
    def dims(self) -> int:
        """2 for a disc or ring (an image), 3 for a ball or shell (a volume)."""
        return 2 if self.shape in SHAPES else 3

    def mask(self, *sides: int) -> np.ndarray:
        """L_p: boolean [h, w] (an image) or [d, h, w] (a volume), True under the SAF. Raises when the shape does not
        lie fully inside."""
        if len(sides) != self.dims:
            raise DiffauditError(f"a {self.shape} SAF is drawn in {'an image' if self.dims == 2 else 'a volume'}, not "
                                 f"in an array of {'x'.join(map(str, sides))}")
        check_fits(*sides[:2], self.radius, *sides[2:])
        k = math.floor(self.radius)
        if not all(k <= c <= n - 1 - k for c, n in zip(self.centre, sides)):
            raise DiffauditError(f"a SAF of radius {self.radius} at {self.centre} does not lie fully inside a "
                                 f"{'x'.join(map(str, sides))} {'image' if self.dims == 2 else 'volume'}")
        mask = shape_mask(self.shape, sides, self.centre, self.radius, self.width)
        if not mask.any():
            raise DiffauditError(f"a {self.shape} of radius {self.radius} and width {self.width} covers no pixel; "
                                 "increase --saf-radius or --saf-width")
        return mask

    def apply(self, images):
        """Eq. 10 on images [..., H, W] or volumes [..., D, H, W] (channels first): pixels under L_p set to the SAF
        grey, the rest kept.

        uint8 images take round(255 * intensity); float images are taken to be in model space [-1, 1] and take
        2 * intensity - 1. Returns a new array or tensor of the same type, dtype and shape."""
        mask = self.mask(*images.shape[-self.dims:])
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
