"""Where the SAF goes on x_i, and its grey level: on the anatomy, and where it stands out.

Eq. 10 of Dombrowski & Kainz only asks that the SAF lie inside the image. A grey 0.5 disc drawn where x_i is
itself about 0.5 grey changes x_i by almost nothing, so neither a model nor the SAF detector can tell x_p from
x_i; and a fingerprint that stands for an implant or a tattoo sits on the body, not in the air around it. The
rules below fix both, deterministically given the seeded generator.

**Foreground** (:func:`foreground_mask`). The grey image (the mean over channels) is split at its Otsu threshold t
(``skimage.filters.threshold_otsu``) into its bright side (grey > t) and its dark side. The bright side is the body:
it is closed (dilated, then eroded, the image edge replicated) by a disc of radius round(side / 14) px (2 px at
28 px, 5 at 64: less than the default SAF's radius), which bridges the speckle gaps of ultrasound and the dark
streaks inside an organ without reaching across the air; of that the largest 8-connected component
(``skimage.measure.label``; ties to the lower label) is kept and its holes are filled
(``scipy.ndimage.binary_fill_holes``). Two cases change it, each named in ``mask_rule``:

- an image on a light background (all four corner pixels on the bright side) whose bright side holds no SAF takes
  its dark side instead, treated the same way, when that holds one (white-framed fundus photographs);
- a constant image (no threshold), or a body of fewer pixels than the SAF (a speck, not the anatomy), takes the
  whole image.

**Centres** (:func:`place_saf`). A candidate centre is one where every pixel of the SAF (its disc or ring,
:data:`~diffaudit.data.fingerprint.SHAPES`) lies inside the image and inside the foreground: the foreground
eroded by the SAF's footprint. Centres are drawn exactly as :func:`~diffaudit.data.fingerprint.random_centre`
draws them (``rng.integers(k, h - k)``, then ``rng.integers(k, w - k)``, k = floor(radius)), and a draw that is no
candidate is rejected and drawn again: the accepted centre is uniform over the candidates, and when the first draw
is accepted it is the centre earlier versions drew for the same seed. No candidate at all raises
:class:`DiffauditError` before anything is drawn.

**Grey level.** Contrast (:func:`saf_contrast`) is the mean over the SAF's pixels and channels of
``|intensity - x_i / 255|``, in [0, 1]. With the grey level given, the first candidate centre whose contrast is at
least ``min_contrast`` is taken, among at most ``tries`` candidates drawn; none raises. Chosen automatically
(``intensity=None``): 0.5, the paper's grey, at the first of at most ``tries`` candidates where it reaches
``min_contrast``; where it reaches it at none, the first of those candidates whose extreme grey (0.0 or 1.0,
whichever differs more from x_i there, 1.0 on a tie) reaches it. The extreme's contrast is at least 0.5 (the two
add up to 1), so with ``min_contrast`` <= 0.5 that is the first candidate drawn. Only a ``min_contrast`` above 0.5
can leave none, which raises.

``rng`` is advanced by every draw made, rejected or not; :attr:`Placement.draws` counts them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from ..errors import DiffauditError
from .fingerprint import SHAPES, check_fits

PAPER_GREY = 0.5  # the SAF grey level of the paper, tried first


@dataclass(frozen=True)
class Placement:
    """Where the SAF went on x_i and why: centre (row, column), grey level in [0, 1], its contrast against x_i
    (mean |intensity - x_i / 255| under the SAF), the number of centres drawn (rejected ones and this one), the rule
    that chose the grey level, the rule that found the foreground and the share of the image it covers."""

    centre: tuple[int, int]
    intensity: float
    contrast: float
    draws: int
    rule: str
    mask_rule: str
    foreground_fraction: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["centre"] = [int(v) for v in self.centre]
        d["intensity"], d["contrast"] = float(self.intensity), float(self.contrast)
        d["foreground_fraction"] = float(self.foreground_fraction)
        return d


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise DiffauditError(f"a SAF is placed on one image [C, H, W]; got an array of shape {image.shape}")
    return image.astype(np.float64).mean(axis=0)


def _disc(radius: int) -> np.ndarray:
    rows, cols = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return rows * rows + cols * cols <= radius * radius


def _body(side: np.ndarray, close: int) -> np.ndarray:
    """One side of the threshold -> the body: closed by a disc (the image edge replicated), largest 8-connected
    component (ties to the lower label), holes filled."""
    from skimage.measure import label

    padded = np.pad(side, close, mode="edge")
    closed = ndimage.binary_closing(padded, structure=_disc(close))[close:-close, close:-close] | side
    labels = label(closed, connectivity=2)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    if sizes.max() == 0:
        return np.zeros_like(side)
    return ndimage.binary_fill_holes(labels == int(sizes.argmax()))


def foreground_mask(image: np.ndarray, *, saf: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """image uint8 [C, H, W] -> (bool [H, W], the rule used): the anatomy, by the module's rule.

    ``saf``, the SAF's footprint (bool [2k + 1, 2k + 1]), lets an image on a light background take its dark side
    when the bright side holds no SAF, and makes a foreground of fewer pixels than the SAF fall back to the whole
    image. A constant image gives the whole image."""
    grey = _grey(image)
    h, w = grey.shape
    whole = np.ones((h, w), dtype=bool)
    if grey.min() == grey.max():
        return whole, f"constant image (grey {grey.flat[0]:g}): no Otsu threshold, so the whole image"
    from skimage.filters import threshold_otsu

    t = float(threshold_otsu(grey))
    close = max(1, round(min(h, w) / 14))
    bright = grey > t
    mask = _body(bright, close)
    rule = (f"Otsu threshold {t:.1f} of the channel-mean grey, above it, closed by a disc of radius {close} px, "
            "largest 8-connected component, holes filled")
    if saf is None:
        return mask, rule
    corners = bright[0, 0] and bright[0, -1] and bright[-1, 0] and bright[-1, -1]
    if corners and not holds(mask, saf):
        dark = _body(~bright, close)
        if holds(dark, saf):
            mask, rule = dark, rule.replace("above it", "at or below it (the bright side, which holds all four "
                                                          "corners, holds no SAF: a light background)")
    if int(mask.sum()) < int(saf.sum()):
        return whole, f"{rule}: {int(mask.sum())} px, fewer than the SAF's {int(saf.sum())}, so the whole image"
    return mask, rule


def saf_contrast(image: np.ndarray, mask: np.ndarray, intensity: float) -> float:
    """Mean over the pixels under ``mask`` and the channels of |intensity - image / 255| (image uint8 [C, H, W])."""
    values = np.asarray(image)[:, mask].astype(np.float64) / 255.0
    if values.size == 0:
        raise DiffauditError("the SAF covers no pixel; increase --saf-radius or --saf-width")
    return float(np.abs(intensity - values).mean())


def footprint(shape: str, radius: float, width: float) -> np.ndarray:
    """The SAF's pixels around its centre: bool [2k + 1, 2k + 1], k = floor(radius), centre at (k, k)."""
    if shape not in SHAPES:
        raise DiffauditError(f"unknown SAF shape '{shape}'; choose one of {', '.join(SHAPES)}")
    k = math.floor(radius)
    return SHAPES[shape](2 * k + 1, 2 * k + 1, (k, k), radius, width)


def candidates(mask: np.ndarray, saf: np.ndarray) -> np.ndarray:
    """bool [H, W]: the centres at which every pixel of the SAF (its footprint ``saf``, bool [2k + 1, 2k + 1])
    lies inside the image and inside ``mask``: ``mask`` eroded by ``saf``, within k of no edge."""
    h, w = mask.shape
    k = saf.shape[0] // 2
    inside = ndimage.binary_erosion(mask, structure=saf, border_value=0) if saf.any() else np.zeros_like(mask)
    window = np.zeros_like(inside)
    window[k:h - k, k:w - k] = True  # the centres random_centre can draw
    return inside & window


def holds(mask: np.ndarray, saf: np.ndarray) -> bool:
    """Whether some centre puts the whole SAF (footprint ``saf``) inside ``mask``."""
    return bool(candidates(mask, saf).any())


def place_saf(image: np.ndarray, rng: np.random.Generator, *, shape: str, radius: float, width: float,
              intensity: float | None, min_contrast: float, tries: int = 256) -> Placement:
    """Place a SAF on x_i (uint8 [C, H, W]) by the module's rule: its centre on the anatomy, its grey level
    ``intensity`` (None: chosen) differing from x_i under it by at least ``min_contrast``."""
    if tries < 1:
        raise DiffauditError(f"tries must be at least 1, got {tries}")
    if intensity is not None and not 0.0 <= intensity <= 1.0:
        raise DiffauditError(f"the SAF intensity is a grey level in [0, 1], got {intensity}")
    image = np.asarray(image)
    _grey(image)
    if image.dtype != np.uint8:
        raise DiffauditError(f"a SAF is placed on a uint8 image x_i; got {image.dtype}")
    _, h, w = image.shape
    check_fits(h, w, radius)
    if not 0 < width <= radius:
        raise DiffauditError(f"the SAF width must be in (0, radius={radius}], got {width}")
    foot = footprint(shape, radius, width)
    if not foot.any():
        raise DiffauditError(f"a {shape} of radius {radius} and width {width} covers no pixel; "
                             "increase --saf-radius or --saf-width")
    mask, mask_rule = foreground_mask(image, saf=foot)
    allowed = candidates(mask, foot)
    if not allowed.any():
        raise DiffauditError(
            f"no place on the anatomy holds a SAF of radius {radius:g} px in this {h}x{w} image; "
            "use a smaller --saf-radius (or another --seed, which draws another x_i)")
    k = math.floor(radius)
    draws = 0

    def draw() -> tuple[tuple[int, int], int]:  # rejection sampling, the same calls as random_centre
        nonlocal draws
        while True:  # a candidate exists, so this ends
            draws += 1
            centre = int(rng.integers(k, h - k)), int(rng.integers(k, w - k))
            if allowed[centre]:
                return centre, draws

    def contrast(centre: tuple[int, int], grey: float) -> float:  # saf_contrast on the SAF's own window
        r, c = centre
        return saf_contrast(image[:, r - k:r + k + 1, c - k:c + k + 1], foot, grey)

    centre, grey, c, n, rule = choose_grey(draw, contrast, intensity=intensity, min_contrast=min_contrast, tries=tries)
    return Placement(centre=centre, intensity=grey, contrast=c, draws=n, rule=rule, mask_rule=mask_rule,
                     foreground_fraction=float(mask.mean()))


def choose_grey(draw: Callable[[], tuple[tuple[int, ...], int]], contrast: Callable[[tuple[int, ...], float], float],
                *, intensity: float | None, min_contrast: float, tries: int) -> tuple[tuple[int, ...], float, float, int, str]:
    """The grey-level rule of the module docstring over the candidate centres ``draw()`` gives (each call: a centre
    and the draws made so far), with ``contrast(centre, grey)``; returns (centre, grey, its contrast, draws, the rule).
    Shared by the 2D SAF and the 3D one (:mod:`diffaudit.data.volumes.fingerprint`)."""
    grey = PAPER_GREY if intensity is None else float(intensity)
    drawn: list[tuple[tuple[int, ...], int]] = []  # (candidate centre, draws up to it)
    best = -1.0
    for _ in range(tries):
        centre, n = draw()
        drawn.append((centre, n))
        c = contrast(centre, grey)
        if c >= min_contrast:
            how = "given grey" if intensity is not None else "auto: the paper's grey"
            return centre, grey, c, n, (f"{how} {grey:g}, contrast {c:.3f} >= {min_contrast:g} "
                                        f"at candidate {len(drawn)} of at most {tries}")
        best = max(best, c)
    if intensity is not None:
        raise DiffauditError(
            f"the SAF grey {intensity:g} differs from x_i by at most {best:.3f} at {tries} places on the anatomy, "
            f"below --saf-contrast {min_contrast:g}; leave --saf-intensity unset to let it be chosen, or lower "
            "--saf-contrast")
    best = -1.0
    for i, (centre, n) in enumerate(drawn, 1):
        c0, c1 = contrast(centre, 0.0), contrast(centre, 1.0)
        extreme, c = (1.0, c1) if c1 >= c0 else (0.0, c0)
        if c >= min_contrast:
            return centre, extreme, c, n, (f"auto: 0.5 differs from x_i by less than {min_contrast:g} at all {tries} "
                                           f"candidates drawn; grey {extreme:g} (the extreme farther from x_i) at "
                                           f"candidate {i}, contrast {c:.3f}")
        best = max(best, c)
    raise DiffauditError(
        f"no grey level differs from x_i by --saf-contrast {min_contrast:g} at {tries} places on the anatomy "
        f"(best {best:.3f}); lower --saf-contrast")
