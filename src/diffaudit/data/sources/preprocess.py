"""One decoded image to the prepared form, uint8 [C, S, S], and the record of every choice made on the way.

Order: intensity to display values (:mod:`.intensity`), colour to grey if asked (only for grey stored as RGB),
square by crop or pad and resize (:mod:`.geometry`), grey to RGB if asked, then one rounding to uint8 (numpy's
``rint``, half to even, clipped to 0..255). An 8-bit image already square at the asked size passes through
unchanged, bit for bit.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .geometry import MAX_SIZE, resize, square, to_channels
from .intensity import PERCENTILES, Decoded, to_display


def preprocess(image: Decoded, *, size: int, channels: int, fit: str,
               window: tuple[float, float] | None = None, name: str = "image") -> tuple[np.ndarray, str]:
    """(uint8 [channels, size, size], the intensity rule applied); ``name`` is used in errors."""
    y, rule = to_display(image, window=window)
    if channels == 1:
        y = to_channels(y, 1, name=name)
    y = resize(square(y, fit), size)
    if channels == 3:
        y = to_channels(y, 3, name=name)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8), rule


def size_counts(shapes) -> Counter:
    """How many images have each input size, as "HxW"."""
    return Counter(f"{s[-2]}x{s[-1]}" for s in shapes)


def describe(*, size: int, channels: int, fit: str, window: tuple[float, float] | None,
             rules: Counter, sizes: Counter) -> dict:
    """The manifest's ``preprocessing``: every choice, and how many images each intensity rule touched."""
    shown = dict(sizes.most_common(10))
    if len(sizes) > 10:
        shown["other"] = sum(sizes.values()) - sum(shown.values())
    return {
        "size": int(size), "channels": int(channels), "fit": fit,
        "pad_value": 0 if fit == "pad" else None,
        "resize": {"down": "area (PIL BOX)", "up": "bicubic (PIL BICUBIC)", "on": "float32 display values"},
        "intensity": {
            "window": None if window is None else list(window),
            "window_function": "DICOM linear, PS3.3 C.11.2.1.2.1",
            "uint8": "unchanged",
            "other": f"percentiles {PERCENTILES[0]}..{PERCENTILES[1]} per image (NIfTI: per volume) to 0..255, "
                     "clipped; numpy, as MONAI ScaleIntensityRangePercentiles",
            "monochrome1": "inverted after the mapping",
        },
        "colour_to_grey": "only grey stored as RGB (equal channels); colour is refused",
        "rounding": "numpy rint (half to even), clipped to 0..255",
        "rules": dict(sorted(rules.items())),
        "input_sizes": shown,
        "mixed_sizes": len(sizes) > 1,
        "max_size": MAX_SIZE,
    }
