"""Images with identical pixels: the same picture saved twice, under two names or in two formats.

A duplicate matters twice over in an audit: a canary whose twin stays in the training set is "memorised" through
the twin, and a test image whose twin is trained on is no held-out image. Identity is the SHA-256 of the prepared
uint8 pixels and their shape (:func:`pixel_digest`), so two files that decode to the same prepared image match
whatever their bytes on disk.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Sequence

import numpy as np


def pixel_digest(image: np.ndarray) -> str:
    """SHA-256 of a prepared image's shape and uint8 pixels."""
    x = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(repr(x.shape).encode() + x.tobytes()).hexdigest()


def duplicate_groups(digests: Sequence[str], splits: Sequence[str | None]) -> dict[str, list[list[int]]]:
    """For each split, the groups (two or more indices, ascending) of images with identical pixels.

    >>> duplicate_groups(["a", "b", "a", "a"], ["train", "train", "train", "test"])
    {'train': [[0, 2]]}
    """
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for i, (d, s) in enumerate(zip(digests, splits, strict=True)):
        by_key[(s, d)].append(i)
    out: dict[str, list[list[int]]] = {}
    for (s, _), idx in sorted(by_key.items(), key=lambda kv: kv[1][0]):
        if len(idx) > 1:
            out.setdefault(str(s), []).append(idx)
    return out


def twins(digests: Sequence[str], index: int) -> list[int]:
    """The other images with the same pixels as image ``index``, in any split."""
    return [i for i, d in enumerate(digests) if d == digests[index] and i != index]


def without_twins(indices: Sequence[int], digests: Sequence[str], index: int) -> list[int]:
    """``indices`` without the twins of image ``index`` (``index`` itself kept if present): what a training set
    built around a canary ``index`` may hold."""
    drop = set(twins(digests, index))
    return [int(i) for i in indices if int(i) not in drop]
