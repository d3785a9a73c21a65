"""The census: samples matched to their nearest training images under a threshold fitted on held-out real images.
An exact memoriser of the training set is flagged almost wholly and copies every training image; a memoriser of
images the model never saw is flagged no more often than held-out images are; near-duplicates and a patient's images
count once; bad input is refused in one line."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from diffaudit.audit.census.calibrate import check_threshold, fit_threshold
from diffaudit.audit.census.groups import duplicate_groups
from diffaudit.audit.census.space import PixelSpace, close_pairs, nearest_two
from diffaudit.audit.census.stage import run_census
from diffaudit.config import PrepareConfig
from diffaudit.data.prepare import build_training_set, prepare_run, split_images
from diffaudit.errors import DiffauditError
from diffaudit.generate import shard_path
from diffaudit.io import save_npz
from test_data_bad_input import run as cli


@pytest.fixture
def census_run(tmp_path, data_root):
    run = tmp_path / "run"
    manifest = prepare_run(run, PrepareConfig(dataset="breastmnist", n_train=16, seed=0), data_root=str(data_root),
                           log=lambda _: None, progress=False)
    return run, manifest


def _samples(run, name: str, images: np.ndarray) -> str:
    save_npz(shard_path(run / "samples" / name, 0), images=images, indices=np.arange(len(images)))
    return name


def _copies(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n near-copies of ``images`` (each in turn): translated by one pixel, with noise of +-2 grey levels."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = np.roll(images[i % len(images)], shift=tuple(rng.integers(-1, 2, 2)), axis=(1, 2)).astype(np.int16)
        out.append(np.clip(x + rng.integers(-2, 3, x.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def test_an_exact_memoriser_is_flagged_and_copies_every_training_image(census_run, data_root):
    run, manifest = census_run
    train = build_training_set(manifest, data_root=str(data_root))
    name = _samples(run, "memoriser", _copies(train, 64))
    r = run_census(run, samples=name, data_root=str(data_root), progress=False, log=lambda _: None)
    assert r["share"] >= 0.95 and r["n_copied"] == 16 and r["n_copied_patients"] == 16
    assert r["x_p"]["copied"] and r["x_p"]["samples"] == 4  # x_p, one image in 16, is among them
    assert r["calibration"]["n_eval"] == 78 and r["calibration"]["n_test"] == 156
    pairs = json.loads((run / r["pairs"]).read_text())["pairs"]
    assert len(pairs) == r["copies"] and all(p["distance"] < r["threshold"] for p in pairs)
    assert (run / r["gallery"]).is_file()
    assert json.loads((run / "results.json").read_text())["census"]["copies"] == r["copies"]
    assert r["verdict"]["level"] == "high" and r["verdict"]["shown"]  # no canary count: the census gives the level
    from diffaudit.audit.report.render import write_report

    md = write_report(run)["md"].read_text()
    assert "Risk level: HIGH (census)" in md and "16 of 16 training images" in md


def test_a_memoriser_of_other_images_is_flagged_no_more_than_held_out_images(census_run, data_root):
    run, manifest = census_run
    unseen = split_images(manifest, "train", data_root=str(data_root))[:128]  # never in D_p, eval or test
    name = _samples(run, "others", _copies(unseen, 128))
    r = run_census(run, samples=name, data_root=str(data_root), progress=False, log=lambda _: None)
    cal = r["calibration"]
    assert r["share_ci95"][0] <= cal["test_rate"] <= r["share_ci95"][1]  # its interval covers the realised FPR
    assert r["share"] <= cal["test_rate_ci95"][1]


def test_the_threshold_promises_what_the_held_out_images_can_resolve():
    d = np.linspace(0.1, 1.0, 2000)
    fit = fit_threshold(d, 0.01)
    assert fit["resolved"] and fit["eval_false_positives"] == 20 and fit["threshold"] == d[20]
    few = fit_threshold(d[:50], 0.001)
    assert not few["resolved"] and few["threshold"] == d[0] and "cannot resolve" in few["note"]
    check = check_threshold(np.array([0.05, 0.5, 0.7]), 0.1)
    assert check["test_false_positives"] == 1 and check["test_rate_ci95"][0] < 1 / 3 < check["test_rate_ci95"][1]
    for bad in (0, 1, -0.1, float("nan")):
        with pytest.raises(DiffauditError, match="--fpr must lie strictly between 0 and 1"):
            fit_threshold(d, bad)


def test_near_duplicates_and_a_patient_s_images_count_once():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 1, 12, 12), dtype=np.uint8)
    images[3] = np.clip(images[1].astype(int) + 1, 0, 255)  # a near-duplicate of image 1
    space = PixelSpace(shift=1)
    pairs = close_pairs(space, images, 0.05)
    assert pairs == [(1, 3)]
    groups = duplicate_groups(5, pairs, [None, None, "p7", None, "p7"])
    assert groups.tolist() == [0, 1, 2, 1, 2] and len(set(groups)) == 3
    found = nearest_two(space, images[[1, 4]], images)
    assert found.index.tolist() == [1, 4] and found.distance.max() < 1e-3 and (found.second_distance > 0).all()
    assert found.second.tolist()[0] == 3  # the near-duplicate comes second


def test_the_embedding_space_trains_on_the_run_and_matches_copies(census_run, data_root):
    run, manifest = census_run
    train = build_training_set(manifest, data_root=str(data_root))
    name = _samples(run, "memoriser", _copies(train, 32))
    r = run_census(run, samples=name, space="embedding", embedding_steps=15, data_root=str(data_root),
                   progress=False, log=lambda _: None)
    assert r["space"]["space"] == "embedding" and r["space"]["trained_on"] == 16 + 78
    assert (run / "census" / "embedding" / "model.safetensors").is_file()
    assert r["n_copied"] >= 8  # a briefly trained embedding already matches most copies


def test_bad_census_input_is_refused_in_one_line(census_run, data_root, tmp_path, capsys):
    run, manifest = census_run
    train = build_training_set(manifest, data_root=str(data_root))
    _samples(run, "memoriser", _copies(train, 8))
    base = ("census", "--run-dir", run, "--quiet", "--data-root", data_root, "--samples", "memoriser")
    for fpr in ("0", "1"):
        code, err = cli(capsys, *base, "--fpr", fpr)
        assert code == 2 and "--fpr must lie strictly between 0 and 1" in err
    evil = tmp_path / "encoder.pt"
    evil.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    code, err = cli(capsys, *base, "--embedding", evil)
    assert code == 2 and "not a TorchScript archive" in err and "refused" in err
    flat = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 8)))
    torch.jit.save(flat, str(tmp_path / "flat.pt"))
    code, err = cli(capsys, *base, "--embedding", tmp_path / "flat.pt")
    assert code == 2 and "does not take 1-channel inputs of side 28" in err and "--embedding-size" in err
    assert cli(capsys, *base, "--embedding", tmp_path / "flat.pt", "--embedding-size", "10")[0] == 0
    code, err = cli(capsys, *base, "--space", "pixel", "--embedding", tmp_path / "flat.pt")
    assert code == 2 and "leave --space pixel out" in err
    code, err = cli(capsys, *base, "--embedding-steps", "0")
    assert code == 2 and "embedding_steps" in err
    code, err = cli(capsys, *base, "--space", "pixel", "--embedding-size", "10")
    assert code == 2 and "--embedding-size is the input side of an encoder given with --embedding" in err
    own = tmp_path / "own"
    own.mkdir()
    for i in range(6):
        from PIL import Image

        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16), dtype=np.uint8)).save(own / f"{i}.png")
    r2 = tmp_path / "r2"
    assert cli(capsys, "prepare", "--run-dir", r2, "--quiet", "--data", own, "--split-ratios", "1,0,0")[0] == 0
    _samples(r2, "s", np.zeros((4, 1, 16, 16), np.uint8))
    code, err = cli(capsys, "census", "--run-dir", r2, "--quiet")
    assert code == 2 and "held-out real images" in err and "--split-ratios" in err


def test_a_held_out_twin_of_a_training_image_is_left_out_of_the_calibration(tmp_path):
    """A val image that is a training image with a little noise (the same picture in two splits) would set the
    threshold below every copy (78 val images cannot resolve 0.1%: the threshold is their smallest distance); it is
    left out, listed, and the exact memoriser's copies are still found."""
    from conftest import SYNTHETIC, write_synthetic_medmnist

    from diffaudit.audit.census.calibrate import split_duplicates

    assert split_duplicates(np.array([0.01, 0.1, 0.11, 0.12, 0.2])).tolist() == [True, False, False, False, False]
    root = tmp_path / "data"
    root.mkdir()
    path = write_synthetic_medmnist(root / "breastmnist.npz", seed=0, **SYNTHETIC["breastmnist"])
    cfg = PrepareConfig(dataset="breastmnist", n_train=16, seed=0)
    manifest = prepare_run(tmp_path / "first", cfg, data_root=str(root), log=lambda _: None, progress=False)
    with np.load(path) as f:
        arrays = dict(f)
    twin = arrays["train_images"][manifest["indices"][1]].astype(np.int16)
    arrays["val_images"][0] = np.clip(twin + np.random.default_rng(0).integers(-1, 2, twin.shape), 0, 255)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    run = tmp_path / "run"
    manifest = prepare_run(run, cfg, data_root=str(root), log=lambda _: None, progress=False)
    train = build_training_set(manifest, data_root=str(root))
    name = _samples(run, "memoriser", _copies(train, 64))
    warnings = []
    r = run_census(run, samples=name, data_root=str(root), progress=False, log=warnings.append)
    twins = r["calibration"]["split_duplicates"]
    assert twins["val"]["n"] == 1 and twins["val"]["positions"] == [0] and twins["test"]["n"] == 0
    assert r["calibration"]["n_eval"] == 77 and r["threshold"] > 10 * twins["val"]["distances"][0]
    assert r["share"] >= 0.95 and any("duplicates of training images" in w for w in warnings)
    from diffaudit.audit.report.render import write_report

    assert "Left out as duplicates of training images" in write_report(run)["md"].read_text()
