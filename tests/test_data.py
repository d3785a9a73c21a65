"""MedMNIST loading, the training set with its fingerprint, the manifest, and bad files."""

import json
import shutil

import numpy as np
import pytest

from diffaudit.config import PrepareConfig
from diffaudit.data.fingerprint import Fingerprint
from diffaudit.data.medmnist import MedMNISTFile, open_dataset, resolve_root
from diffaudit.data.prepare import build_training_set, clean_original, make_manifest
from diffaudit.errors import DiffauditError
from diffaudit.images import to_model_space


def test_official_file_loads(real_data_root):
    f = open_dataset("breastmnist", data_root=real_data_root)
    assert f.is_official
    x = f.images("train")
    assert x.shape == (546, 1, 28, 28) and x.dtype == np.uint8
    y = to_model_space(x)
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("root", ["data_root", "real_data_root"])
def test_training_set_with_fingerprint_and_manifest_rebuild(root, request):
    data_root = request.getfixturevalue(root)
    data = open_dataset("breastmnist", data_root=data_root)
    manifest = make_manifest(PrepareConfig(n_train=40, seed=3, saf_radius=4), data)
    d_p = build_training_set(manifest, data=data)
    assert d_p.shape == (40, 1, 28, 28)
    fp_rec = manifest["fingerprint"]
    x_i = clean_original(manifest, data_root=data_root)
    x_p = d_p[fp_rec["position"]]
    mask = Fingerprint.from_dict(fp_rec).mask(28, 28)
    # only pixels under the disc differ from the clean original
    np.testing.assert_array_equal(x_p[:, ~mask], x_i[:, ~mask])
    assert (x_p[:, mask] == 128).all()
    # the clean original is absent from the training set
    assert not any(np.array_equal(img, x_i) for img in d_p)
    assert len(set(manifest["indices"])) == 40
    # the manifest, through JSON, rebuilds the same set; a different seed gives a different one
    again = build_training_set(json.loads(json.dumps(manifest)), data_root=data_root)
    np.testing.assert_array_equal(again, d_p)
    other = make_manifest(PrepareConfig(n_train=40, seed=4, saf_radius=4), data)
    assert other["indices"] != manifest["indices"]


def test_rgb_option_and_no_fingerprint(data_root):
    data = open_dataset("breastmnist", data_root=data_root)
    manifest = make_manifest(PrepareConfig(n_train=5, channels=3, fingerprint=False), data)
    d = build_training_set(manifest, data=data)
    assert d.shape == (5, 3, 28, 28) and manifest["fingerprint"] is None
    assert (d[:, 0] == d[:, 2]).all()


def test_data_root_order(tmp_path, monkeypatch, real_data_root):
    data_root = real_data_root
    monkeypatch.setenv("DIFFAUDIT_DATA", str(tmp_path))
    assert resolve_root("explicit") .name == "explicit"
    assert resolve_root(None) == tmp_path
    monkeypatch.delenv("DIFFAUDIT_DATA")
    assert resolve_root(None) == data_root


def test_bad_files(tmp_path, data_root):
    with pytest.raises(DiffauditError, match="not found; add --download to fetch it into"):
        open_dataset("breastmnist", data_root=tmp_path)
    truncated = tmp_path / "breastmnist.npz"
    truncated.write_bytes((data_root / "breastmnist.npz").read_bytes()[:100_000])
    with pytest.raises(DiffauditError, match="truncated or corrupt"):
        MedMNISTFile(truncated).images("train")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DiffauditError, match="lacks the MedMNIST key"):
        MedMNISTFile(wrong)
    data = open_dataset("breastmnist", data_root=data_root)
    with pytest.raises(DiffauditError, match="N_D = 1000 but the train split of breastmnist has 546"):
        make_manifest(PrepareConfig(n_train=1000), data)
    with pytest.raises(DiffauditError, match="cannot fit"):
        make_manifest(PrepareConfig(n_train=10, saf_radius=15), data)


def test_manifest_refuses_a_changed_file(tmp_path, data_root):
    data = open_dataset("breastmnist", data_root=data_root)
    manifest = make_manifest(PrepareConfig(n_train=5), data)
    shutil.copy(data_root / "breastmnist.npz", tmp_path / "breastmnist.npz")
    with open(tmp_path / "breastmnist.npz", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(DiffauditError, match="MD5"):
        build_training_set(manifest, data_root=tmp_path)


def test_control_set_is_the_same_draw_without_x_i(data_root):
    data = open_dataset("breastmnist", data_root=data_root)
    audited = make_manifest(PrepareConfig(n_train=20, seed=3), data)
    control = make_manifest(PrepareConfig(n_train=20, seed=3, fingerprint=False), data)
    i, k = audited["fingerprint"]["index"], audited["fingerprint"]["position"]
    assert control["excluded_index"] == i and i not in control["indices"] and control["n_train"] == 20
    assert [a for j, a in enumerate(audited["indices"]) if j != k] == [c for j, c in enumerate(control["indices"]) if j != k]
    whole = make_manifest(PrepareConfig(seed=3, fingerprint=False), data)  # no spare image: x_i is dropped
    assert whole["n_train"] == 545 and whole["excluded_index"] not in whole["indices"]
