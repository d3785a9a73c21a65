from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffaudit.config import ModelConfig
from diffaudit.data.medmnist import resolve_root

#: A U-Net small enough for tests to train in seconds.
TINY_MODEL = ModelConfig(block_out_channels=(8, 16, 16), layers_per_block=1, attention_levels=(False, False, False),
                         mid_attention=False, norm_num_groups=4)

#: The synthetic stand-ins: BreastMNIST's split sizes and classes (so figures such as "546" hold), and a small
#: RGB set of five classes in RetinaMNIST's format (for sweeps across datasets).
SYNTHETIC = {"breastmnist": {"sizes": (546, 78, 156), "channels": 1, "classes": 2},
             "retinamnist": {"sizes": (60, 12, 40), "channels": 3, "classes": 5}}


def write_synthetic_medmnist(path: Path, *, sizes: tuple[int, int, int], channels: int, classes: int,
                             seed: int = 0) -> Path:
    """A MedMNIST-format ``.npz`` (the official keys, uint8 (N, 28, 28) or (N, 28, 28, 3), labels (N, 1)) of
    distinct smooth images: a random 7x7 field upsampled to 28x28, with a brightness that depends on the class so
    that a label classifier has something to learn. No patient data: tests that need none run anywhere."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        labels = rng.integers(0, classes, size=(n, 1))
        coarse = rng.integers(30, 200, size=(n, 7, 7, channels)) + 40 * labels[:, :, None, None] / max(classes - 1, 1)
        images = np.kron(coarse, np.ones((1, 4, 4, 1))) + rng.normal(0, 4, size=(n, 28, 28, channels))
        images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = images[..., 0] if channels == 1 else images
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


#: CPU kernels round by thread count, so every in-process run uses 2 threads whatever OMP_NUM_THREADS says: set here
#: for the session-scoped fixtures (built before any autouse fixture runs) and again before each test
THREADS = 2
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root of synthetic MedMNIST-format files, written by the tests: the end-to-end and command-line
    tests run on them anywhere, with or without the official files."""
    root = tmp_path_factory.mktemp("synthetic-medmnist")
    for seed, (flag, spec) in enumerate(SYNTHETIC.items()):
        write_synthetic_medmnist(root / f"{flag}.npz", seed=seed, **spec)
    return root


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The official MedMNIST files (../shared/data/medmnist or $DIFFAUDIT_DATA); tests of the real data skip
    without them."""
    root = resolve_root(None)
    if not (root / "breastmnist.npz").is_file():
        pytest.skip(f"the official breastmnist.npz is not in {root}: set DIFFAUDIT_DATA to a folder with MedMNIST files")
    return root
