"""Seeds derived from a run's seed: every random stream of a stage is named by a purpose (each stage's ``Stream``
enum) and derived from (seed, ..., purpose) by a hash, so streams never share state and no code draws from the
global RNG."""

from __future__ import annotations

import numpy as np


def derive_seed(*words: int) -> int:
    """A 63-bit seed hashed from non-negative integers (run seed, image index, step, purpose ...)."""
    if any(int(w) < 0 for w in words):
        raise ValueError(f"seed words must be non-negative, got {words}")
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0]
    return int(state) & ((1 << 63) - 1)
