from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffaudit.config import ModelConfig
from diffaudit.data.medmnist import resolve_root

#: A U-Net small enough for tests to train in seconds.
TINY_MODEL = ModelConfig(block_out_channels=(8, 16, 16), layers_per_block=1, attention_levels=(False, False, False),
                         mid_attention=False, norm_num_groups=4)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = resolve_root(None)
    if not (root / "breastmnist.npz").is_file():
        pytest.skip(f"breastmnist.npz not found in {root}: set DIFFAUDIT_DATA to a folder with MedMNIST files")
    return root
