"""The SAF in 3D: a ball, or a shell (the ring's analogue), wholly inside the volume and wholly on the anatomy, where
it stands out: the rules of :mod:`diffaudit.data.placement` with one more axis.

**Foreground** (:func:`foreground_mask`). The grey volume (the mean over channels) is split at its Otsu threshold
(``skimage.filters.threshold_otsu``); the bright side is closed (the edge replicated) by a ball of radius
round(side / 14) voxels (side: the smallest of D, H, W), its largest 26-connected component is kept
(``skimage.measure.label``, ties to the lower label) and its holes are filled (``scipy.ndimage.binary_fill_holes``):
the head or the body. MR and CT volumes have dark air around the body, so the 2D rule's light-background case is not
carried over. A constant volume, or a body of fewer voxels than the SAF, takes the whole volume, as in 2D.

**Centres.** A candidate centre puts every voxel of the SAF inside the volume and inside the foreground (the
foreground eroded by the SAF's footprint). Centres are drawn as ``rng.integers(k, d - k)``, ``rng.integers(k, h - k)``,
``rng.integers(k, w - k)`` (k = floor(radius)) and redrawn until one is a candidate: uniform over the candidates.

**Grey level** and **contrast** as in 2D: the mean over the SAF's voxels of |intensity - x_i / 255|; the paper's
0.5 at the first of at most ``tries`` candidates where it reaches ``min_contrast``, else the extreme (0 or 1) farther
from x_i at the first candidate where that does; a given intensity moves the centre until it stands out, or is refused.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ...errors import DiffauditError
from ..fingerprint import VOLUME_SHAPES as SHAPES_3D
from ..fingerprint import ball_mask
from ..placement import Placement, choose_grey, saf_contrast


def footprint(shape: str, radius: float, width: float) -> np.ndarray:
    """The SAF's voxels around its centre: bool [2k + 1]^3, k = floor(radius), centre at (k, k, k)."""
    if shape not in SHAPES_3D:
        raise DiffauditError(f"unknown 3D SAF shape '{shape}'; choose one of {', '.join(SHAPES_3D)}")
    if not radius > 0 or not 0 < width <= radius:
        raise DiffauditError(f"a 3D SAF needs radius > 0 and 0 < width <= radius; got radius {radius}, width {width}")
    k = math.floor(radius)
    return SHAPES_3D[shape]((2 * k + 1,) * 3, (k, k, k), radius, width)


def _grey(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 4 or volume.dtype != np.uint8:
        raise DiffauditError(f"a 3D SAF is placed on one uint8 volume [C, D, H, W]; got {volume.dtype} {volume.shape}")
    return volume.mean(axis=0)


def foreground_mask(volume: np.ndarray, *, saf: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """volume uint8 [C, D, H, W] -> (bool [D, H, W], the rule used): the anatomy, by the module's rule."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    grey = _grey(volume)
    whole = np.ones(grey.shape, dtype=bool)
    if grey.min() == grey.max():
        return whole, f"constant volume (grey {grey.flat[0]:g}): no Otsu threshold, so the whole volume"
    t = float(threshold_otsu(grey))
    close = max(1, round(min(grey.shape) / 14))
    ball = ball_mask((2 * close + 1,) * 3, (close,) * 3, close, close)
    bright = grey > t
    padded = np.pad(bright, close, mode="edge")
    closed = ndimage.binary_closing(padded, structure=ball)[close:-close, close:-close, close:-close] | bright
    labels = label(closed, connectivity=3)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = ndimage.binary_fill_holes(labels == int(sizes.argmax())) if sizes.max() else np.zeros_like(bright)
    rule = (f"Otsu threshold {t:.1f} of the channel-mean grey, above it, closed by a ball of radius {close} voxels, "
            "largest 26-connected component, holes filled")
    if saf is not None and int(mask.sum()) < int(saf.sum()):
        return whole, f"{rule}: {int(mask.sum())} voxels, fewer than the SAF's {int(saf.sum())}, so the whole volume"
    return mask, rule


def candidates(mask: np.ndarray, saf: np.ndarray) -> np.ndarray:
    """bool [D, H, W]: the centres at which the whole SAF (footprint ``saf``) lies inside the volume and ``mask``."""
    k = saf.shape[0] // 2
    inside = ndimage.binary_erosion(mask, structure=saf, border_value=0)
    window = np.zeros_like(inside)
    window[k:mask.shape[0] - k, k:mask.shape[1] - k, k:mask.shape[2] - k] = True
    return inside & window


def place_saf(volume: np.ndarray, rng: np.random.Generator, *, shape: str = "ball", radius: float, width: float,
              intensity: float | None = None, min_contrast: float = 0.2, tries: int = 256) -> Placement:
    """Place a 3D SAF on x_i (uint8 [C, D, H, W]) by the module's rule; the centre is (d, h, w)."""
    if intensity is not None and not 0.0 <= intensity <= 1.0:
        raise DiffauditError(f"the SAF intensity is a grey level in [0, 1], got {intensity}")
    grey = _grey(volume)
    k = math.floor(radius)
    if 2 * k + 1 > min(grey.shape):
        raise DiffauditError(f"a SAF of radius {radius} cannot fit inside a {'x'.join(map(str, grey.shape))} volume; "
                             f"use --saf-radius below {min(grey.shape) / 2 - 0.5:g}")
    foot = footprint(shape, radius, width)
    mask, mask_rule = foreground_mask(volume, saf=foot)
    allowed = candidates(mask, foot)
    if not allowed.any():
        raise DiffauditError(f"no place on the anatomy holds a SAF of radius {radius:g} voxels in this "
                             f"{'x'.join(map(str, grey.shape))} volume; use a smaller --saf-radius")
    d, h, w = grey.shape
    draws = 0

    def draw() -> tuple[tuple[int, int, int], int]:
        nonlocal draws
        while True:  # a candidate exists, so this ends
            draws += 1
            centre = int(rng.integers(k, d - k)), int(rng.integers(k, h - k)), int(rng.integers(k, w - k))
            if allowed[centre]:
                return centre, draws

    def contrast(centre: tuple[int, int, int], level: float) -> float:
        a, b, c = centre
        return saf_contrast(volume[:, a - k:a + k + 1, b - k:b + k + 1, c - k:c + k + 1], foot, level)

    centre, level, c, n, rule = choose_grey(draw, contrast, intensity=intensity, min_contrast=min_contrast, tries=tries)
    return Placement(centre=centre, intensity=level, contrast=c, draws=n, rule=rule, mask_rule=mask_rule,
                     foreground_fraction=float(mask.mean()))


def apply_saf(volume: np.ndarray, placement: Placement, *, shape: str, radius: float, width: float) -> np.ndarray:
    """x_p: a copy of x_i (uint8 [C, D, H, W]) with the SAF of ``placement`` drawn at its grey level."""
    out = np.array(volume, dtype=np.uint8, copy=True)
    mask = SHAPES_3D[shape](out.shape[1:], tuple(placement.centre), radius, width)
    out[:, mask] = np.uint8(round(placement.intensity * 255))
    return out
