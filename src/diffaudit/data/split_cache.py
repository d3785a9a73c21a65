"""A prepared cache inside a run: one memory-mapped array in split order (train, val, test), each split a contiguous,
zero-copy slice. What the 2D source (:class:`diffaudit.data.dataset.PreparedSet`) and the volumes
(:class:`diffaudit.data.volumes.prepared.PreparedVolumes`) share; each says what one row of it is."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import SPLITS
from ..errors import DiffauditError


class SplitCache:
    """The memory map at ``cache`` whose rows belong to ``splits`` (one split name per row, each split contiguous)."""

    is_official = None

    def __init__(self, cache: Path, splits: Sequence[str | None], *, name: str, digest: str, rows: str) -> None:
        self.path, self.name, self.dataset, self.digest = cache, name, name, digest
        self._images = np.load(cache, mmap_mode="r")
        if len(self._images) != len(splits):
            raise DiffauditError(f"{cache} holds {len(self._images)} {rows} but the manifest lists {len(splits)}; "
                                 f"delete {cache} to rebuild it from the source")
        self._splits = {s: [i for i, x in enumerate(splits) if x == s] for s in SPLITS}
        for s, idx in self._splits.items():
            if idx and idx != list(range(idx[0], idx[0] + len(idx))):
                raise DiffauditError(f"the manifest's {s} {rows} are not contiguous; prepare the run again")

    def _slice(self, split: str) -> slice:
        if split not in SPLITS:
            raise DiffauditError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
        idx = self._splits[split]
        return slice(idx[0], idx[-1] + 1) if idx else slice(0, 0)

    def images(self, split: str) -> np.ndarray:
        """uint8 [N, C, ...] of ``split``, a read-only view of the memory map."""
        return self._images[self._slice(split)]
