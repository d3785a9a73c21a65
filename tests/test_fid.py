"""FID with the fallback domain extractor: zero for a set against itself, larger for shifted sets; the extractor
is deterministic and kept; Inception weights are looked up, never silently assumed."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.audit.fid import Frechet, find_inception_weights, train_extractor
from diffaudit.config import ExtractorConfig
from diffaudit.data.medmnist import open_dataset
from diffaudit.errors import DiffauditError
from diffaudit.io import load_tensors

CFG = ExtractorConfig(steps=8, features=16, batch_size=32)


@pytest.fixture(scope="module")
def breast(data_root):
    return open_dataset("breastmnist", data_root=data_root)


@pytest.fixture(scope="module")
def extractor(breast, tmp_path_factory):
    folder = tmp_path_factory.mktemp("extractor")
    return folder, train_extractor(folder, breast.images("train"), breast.labels("train"), name="breast", cfg=CFG,
                                   val=(breast.images("val"), breast.labels("val")), progress=False)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift(extractor, breast):
    _, net = extractor
    x = breast.images("train")[:200]
    fid = Frechet(net)
    same = fid.distance([x[:100], x[100:]], x)["value"]  # generated images may come in several batches
    other = fid.distance([x[:100]], x[100:])["value"]  # two draws of the same distribution
    shifted = [fid.distance([np.clip(x.astype(int) + s, 0, 255).astype(np.uint8)], x)["value"] for s in (20, 60)]
    assert same == pytest.approx(0.0, abs=1e-6 * other)
    assert 0 < other < shifted[0] < shifted[1]


def test_the_extractor_is_deterministic_kept_and_checked(extractor, breast, tmp_path):
    folder, _ = extractor
    again = train_extractor(tmp_path / "again", breast.images("train"), breast.labels("train"), name="breast", cfg=CFG,
                            progress=False)
    a, b = load_tensors(folder / "model.safetensors"), again.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    train_extractor(folder, breast.images("train"), breast.labels("train"), name="breast", cfg=CFG, progress=False)
    with pytest.raises(DiffauditError, match="another config"):
        train_extractor(folder, breast.images("train"), breast.labels("train"), name="breast",
                        cfg=ExtractorConfig(steps=9, features=16), progress=False)


def test_inception_weights_are_found_or_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFAUDIT_INCEPTION", raising=False)
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    assert find_inception_weights() is None
    with pytest.raises(DiffauditError, match="no Inception weights"):
        find_inception_weights(tmp_path / "missing.pth")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"0")
    monkeypatch.setenv("DIFFAUDIT_INCEPTION", str(weights))
    assert find_inception_weights() == weights


def test_fewer_than_two_images_is_refused(extractor, breast):
    _, net = extractor
    with pytest.raises(DiffauditError, match="at least 2"):
        Frechet(net).distance([breast.images("train")[:1]], breast.images("train")[:10])
