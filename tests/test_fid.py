"""FID with the fallback domain extractor: zero for a set against itself, larger for shifted sets; the extractor
is deterministic and kept; Inception weights are looked up, never silently assumed. Bootstrap intervals cover the
value and shrink with more images; an FID over fewer reference images than feature dimensions is flagged; the
paired test finds a real train/test gap and, mostly, no null one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.audit.quality.fid import (
    Frechet,
    fid_uncertainty,
    find_inception_weights,
    frechet_distance,
    load_extractor,
    reliability,
    train_extractor,
)
from diffaudit.audit.quality.stage import run_fid
from diffaudit.audit.report.render import fid_cell
from diffaudit.config import ExtractorConfig, FIDConfig, PrepareConfig
from diffaudit.data.medmnist import open_dataset
from diffaudit.data.prepare import build_training_set, load_manifest, prepare_run
from diffaudit.errors import DiffauditError
from diffaudit.io import load_tensors, read_json, save_npz

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


def _gaussians(seed: int, n_generated: int, n_reference: int, d: int = 8, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_generated, d)), rng.normal(size=(n_reference, d)) + shift


def _interval(generated, reference, resamples=100):
    point = frechet_distance(generated, reference)
    spread = fid_uncertainty(generated, {"ref": reference}, point={"ref": point}, resamples=resamples, seed=3, gap=None)
    return point, spread["ref_ci95"]


def test_the_bootstrap_interval_covers_the_value_and_shrinks_with_more_images():
    widths = []
    for n in (50, 800):
        point, (lo, hi) = _interval(*_gaussians(0, n, n, shift=0.3))
        assert 0 <= lo < point < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # 16 times the images: about a quarter of the width
    assert _interval(*_gaussians(0, 50, 50))[1] == _interval(*_gaussians(0, 50, 50))[1]  # seeded


def test_frechet_distance_is_torchmetrics_distance_also_when_singular():
    from torchmetrics.image.fid import _compute_fid

    for n_ref in (16, 200):  # a singular and a full-rank reference covariance of 64-d features
        g, r = _gaussians(1, 256, n_ref, d=64)
        a, b = torch.from_numpy(g), torch.from_numpy(r)
        expected = float(_compute_fid(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)))
        assert frechet_distance(g, r) == pytest.approx(expected, rel=1e-6)


def test_an_fid_over_fewer_reference_images_than_feature_dimensions_is_unreliable():
    reliable, why = reliability(n_generated=256, n_reference=16, n_features=64)
    assert not reliable and "16 reference images per set for 64-d features" in why and "65" in why
    assert reliability(n_generated=256, n_reference=64, n_features=64)[0] is False  # rank 63 of 64
    assert reliability(n_generated=256, n_reference=200, n_features=64) == (True, None)
    reliable, why = reliability(n_generated=256, n_reference=546, n_features=2048)  # Inception
    assert not reliable and "546 reference images per set and 256 generated images" in why


def test_the_paired_gap_test_finds_a_real_shift_and_not_a_null_one():
    found = {"shift": 0, "null": 0}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        generated, train = rng.normal(size=(200, 16)), rng.normal(size=(64, 16))
        for case, shift in (("shift", 0.5), ("null", 0.0)):
            test = rng.normal(size=(64, 16)) + shift
            point = {"train": frechet_distance(generated, train), "test": frechet_distance(generated, test)}
            out = fid_uncertainty(generated, {"train": train, "test": test}, point=point, resamples=100, seed=seed)
            assert out["gap"]["value"] == pytest.approx(point["test"] - point["train"])
            found[case] += out["gap_significant"]
    assert found["shift"] >= 4 and found["null"] <= 1


def test_an_fid_cell_shows_the_interval_and_marks_an_unreliable_value():
    fid = {"train": 5.81, "train_ci95": [3.2, 9.1], "reliable": False}
    assert fid_cell(fid, "train") == "5.81 [3.2, 9.1]*"
    assert fid_cell({**fid, "reliable": True}, "train") == "5.81 [3.2, 9.1]"
    assert fid_cell({"train": 5.81}, "train") == "5.81" and fid_cell(None, "train") == "–"


def test_run_fid_records_intervals_the_gap_test_and_reliability(data_root, tmp_path):
    run = tmp_path / "run"
    prepare_run(run, PrepareConfig(dataset="breastmnist", n_train=16), data_root=str(data_root), log=lambda m: None)
    train = build_training_set(load_manifest(run), data_root=str(data_root))
    samples = run / "samples" / "copies"
    generated = np.concatenate([train, train[::-1]])  # 32 "samples": every training image twice
    save_npz(samples / "shard_00000.npz", indices=np.arange(len(generated)), images=generated)
    cfg = FIDConfig(extractor="domain", domain=ExtractorConfig(steps=2, features=16, batch_size=16))
    fid = run_fid(run, cfg, samples, data_root=str(data_root), device="cpu", progress=False, log=lambda m: None,
                  extractor_dir=tmp_path / "extractor", resamples=20)
    assert read_json(run / "results.json")["fid"] == read_json(run / "fid" / "fid.json") == fid
    assert isinstance(fid["train"], float) and isinstance(fid["test"], float)
    net = load_extractor(tmp_path / "extractor")
    # the point value is torchmetrics' as before; its eigenvalues of a singular S_1 S_2 move in the 6th digit from
    # call to call (the BLAS's results depend on memory alignment), hence approx
    assert fid["train"] == pytest.approx(Frechet(net).distance([generated], train)["value"], rel=1e-4)
    for name in ("train", "test"):
        lo, hi = fid[f"{name}_ci95"]
        assert lo <= fid[name] <= hi
    assert fid["bootstrap"]["resamples"] == 20 and "percentile bootstrap" in fid["bootstrap"]["method"]
    assert set(fid["gap"]) >= {"value", "lower95"} and isinstance(fid["gap_significant"], bool)
    # 16 reference images for 16-d features: a singular covariance
    assert fid["reliable"] is False and "16 reference images per set for 16-d features" in fid["unreliable_reason"]
    assert fid["n_features"] == 16
