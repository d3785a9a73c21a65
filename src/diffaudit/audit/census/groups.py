"""Training images that stand for one person or one picture count once: near-duplicates (closer than the census's
threshold to each other, in its space: two slices of one volume, one scan stored twice) and images of one patient
form a group, the connected components of those two relations (a union-find)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def duplicate_groups(k: int, close: Iterable[tuple[int, int]], patients: Sequence[str | None]) -> np.ndarray:
    """The group of each of ``k`` training images (int [k], numbered from 0 in order of first appearance) from the
    pairs ``close`` (i, j) nearer than the threshold to each other and their ``patients`` (None: one of its own)."""
    parent = list(range(k))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    for i, j in close:
        join(int(i), int(j))
    first: dict[str, int] = {}
    for i, p in enumerate(patients):
        if p is not None:
            join(i, first.setdefault(p, i))
    roots = [find(i) for i in range(k)]
    number = {r: n for n, r in enumerate(dict.fromkeys(roots))}
    return np.array([number[r] for r in roots], dtype=np.int64)
