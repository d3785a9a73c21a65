"""Per-image random streams: image i of a run is reproducible from (seed, i) alone, whatever the batch size.

Each image owns a ``torch.Generator`` seeded from (seed, i) through numpy's ``SeedSequence`` (a hash, so nearby
seeds and indices give unrelated streams). All randomness of a sampling run — the prior draw, the perturbation
at the start time and every step's noise — is taken from these streams in a fixed order, never from the global
RNG (EDM's ``StackedRandomGenerator`` does the same; a shared generator makes image i depend on its batch).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..rng import derive_seed


def stream_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s stream in sampling run ``seed``."""
    return derive_seed(seed, index)


class ImageNoise:
    """Standard normal noise for a batch of images, each drawn from its own (seed, index) stream.

    >>> a = ImageNoise(seed=0, indices=[3, 4], shape=(1, 2, 2))()
    >>> b = ImageNoise(seed=0, indices=[4], shape=(1, 2, 2))()
    >>> bool(torch.equal(a[1], b[0]))
    True
    """

    def __init__(
        self,
        *,
        seed: int,
        indices: Sequence[int],
        shape: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.generators = [
            torch.Generator(device=self.device).manual_seed(stream_seed(seed, i)) for i in indices
        ]

    def __len__(self) -> int:
        return len(self.generators)

    def __call__(self) -> torch.Tensor:
        """The next draw of every stream, stacked to [B, *shape]."""
        return torch.stack(
            [torch.randn(self.shape, generator=g, device=self.device, dtype=self.dtype) for g in self.generators]
        )
