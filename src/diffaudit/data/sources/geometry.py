"""Geometry: any [C, H, W] image to a square of side ``size``, with 1 or 3 channels.

First the image is made square — ``fit="crop"`` keeps the centred square of side min(H, W), ``fit="pad"``
centres the image on a black square of side max(H, W) — then resized: area averaging when shrinking (PIL's BOX
filter, the exact mean over each output pixel's footprint, so no aliasing whatever the factor) and bicubic
interpolation when enlarging (PIL's BICUBIC; its overshoot is clipped when rounding to uint8). Both run on
float32 display values, so an image is rounded once.

:data:`MAX_SIZE` = 8192 = 2^13 bounds ``size``: twice the largest side medical images commonly have (digital
mammograms and radiographs, about 4000 pixels; CT and MR 512), and already 64 MiB per grey image or 192 MiB per
RGB image in the cache, so a larger value is a typing error, not a wish.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ...errors import DiffauditError

MAX_SIZE = 8192
FITS = ("crop", "pad")


def check_geometry(*, size: int, channels: int, fit: str) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= MAX_SIZE:
        raise DiffauditError(f"size {size!r} is outside 1..{MAX_SIZE}; pass the side in pixels of the square images "
                             "to prepare, e.g. size=64")
    if channels not in (1, 3):
        raise DiffauditError(f"channels={channels!r}; pass channels=1 (grey) or channels=3 (RGB)")
    if fit not in FITS:
        raise DiffauditError(f"fit='{fit}' is unknown; pass fit='crop' (centre square) or fit='pad' (black borders)")


def square(x: np.ndarray, fit: str) -> np.ndarray:
    """The centred square crop of ``x`` [C, H, W] (``fit="crop"``) or ``x`` centred on zeros (``"pad"``).

    >>> square(np.ones((1, 2, 4)), "crop").shape, square(np.ones((1, 2, 4)), "pad")[0, :, 0].tolist()
    ((1, 2, 2), [0.0, 1.0, 1.0, 0.0])
    """
    c, h, w = x.shape
    if h == w:
        return x
    if fit == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return x[:, top:top + s, left:left + s]
    s = max(h, w)
    out = np.zeros((c, s, s), x.dtype)
    top, left = (s - h) // 2, (s - w) // 2
    out[:, top:top + h, left:left + w] = x
    return out


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """Square float32 ``x`` [C, S, S] resized to [C, size, size]: BOX (area) down, BICUBIC up."""
    s = x.shape[-1]
    if s == size:
        return x
    method = Image.Resampling.BOX if s > size else Image.Resampling.BICUBIC
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(ch, np.float32))
                                .resize((size, size), resample=method)) for ch in x])


def to_channels(x: np.ndarray, channels: int, *, name: str) -> np.ndarray:
    """``x`` [C, H, W] with ``channels`` channels: grey is repeated to RGB; RGB becomes grey only when its three
    channels are equal (a grey image stored as RGB), since dropping colour would change the data silently."""
    c = x.shape[0]
    if c == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=0)
    if np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2]):
        return x[:1]
    raise DiffauditError(f"{name} is a colour image but channels=1 was asked; pass channels=3 (--channels 3) for colour data")
