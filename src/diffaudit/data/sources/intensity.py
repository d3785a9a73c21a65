"""Intensities to display values 0..255: unchanged for 8-bit images, a window, or percentile scaling.

The rule, per image, first that applies:

1. an explicit ``window=(center, width)`` — the user's, in the source's units;
2. the window the file itself asks for (a DICOM's VOI LUT or WindowCenter/Width, a NIfTI volume's percentiles);
3. uint8 pixels pass through unchanged (PNG, JPEG, 8-bit DICOM without a rescale): they are display values;
4. anything else (16-bit, float, rescaled DICOM) is scaled linearly from its 0.5th to its 99.5th percentile onto
   0..255 and clipped, as MONAI's ``ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0, b_max=255,
   clip=True)`` does (numpy's linear-interpolated percentiles, over all channels; a constant image becomes 0).
   It is written in numpy rather than called from MONAI, which takes seconds to import and is an optional extra.
   Clipping 1% of the pixels keeps a few hot pixels or metal implants from crushing the rest to black.

A window (center c, width w) is DICOM's linear VOI function (PS3.3 C.11.2.1.2.1): values up to
c - 0.5 - (w - 1)/2 map to 0, values above c - 0.5 + (w - 1)/2 to 255, linearly between. MONOCHROME1 images
(where a high value is dark) are inverted after the mapping, as a DICOM viewer shows them.

The result is float32 in [0, 255]; rounding to uint8 happens once, after resizing (:mod:`.preprocess`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the percentiles of rule 4 (MONAI's usual choice for CT and MR)
PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Decoded:
    """One image as a reader decodes it: ``pixels`` [C, H, W], uint8 (display values) or float32 (the source's
    units); ``window`` the (low, high) the file maps to 0..255, with ``how`` saying where it came from."""

    pixels: np.ndarray
    window: tuple[float, float] | None = None
    how: str | None = None
    invert: bool = False


def linear_window(center: float, width: float) -> tuple[float, float]:
    """(low, high) of DICOM's linear window (PS3.3 C.11.2.1.2.1)."""
    return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2


def percentile_range(x: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    lo, hi = np.percentile(x, percentiles)
    return float(lo), float(hi)


def scale(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """``x`` mapped linearly from [low, high] onto [0, 255] and clipped; all 0 when low == high (as MONAI).

    >>> scale(np.array([0.0, 5.0, 10.0, 20.0]), 0.0, 10.0).tolist()
    [0.0, 127.5, 255.0, 255.0]
    """
    if high == low:
        return np.zeros(x.shape, np.float32)
    y = (np.asarray(x, np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(y, 0.0, 255.0, out=y)


def to_display(image: Decoded, *, window: tuple[float, float] | None = None) -> tuple[np.ndarray, str]:
    """(display values float32 [C, H, W] in [0, 255], the rule applied), by the rule in the module docstring."""
    x = image.pixels
    if window is not None:
        y, rule = scale(x, *linear_window(*window)), "window"
    elif image.window is not None:
        y, rule = scale(x, *image.window), image.how or "file window"
    elif x.dtype == np.uint8:
        y, rule = x.astype(np.float32), "unchanged"
    else:
        y, rule = scale(x, *percentile_range(x)), "percentiles"
    if image.invert:
        y = np.float32(255.0) - y
        rule += ", inverted (MONOCHROME1)"
    return y, rule
