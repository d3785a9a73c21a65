"""The reproduction count: exact memoriser and Gaussian ground truths, the CLI, results.json and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from test_adversary import smooth_images

from diffaudit.adversary.detectors import NearestNeighbourDetector
from diffaudit.audit.count.reproduction import count_reproductions
from diffaudit.audit.count.stats import reproduction_test
from diffaudit.cli import main
from diffaudit.config import SampleConfig
from diffaudit.data.prepare import build_training_set
from diffaudit.diffusion import SubVPSDE, gaussian_score, memoriser_score
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.errors import DiffauditError
from diffaudit.generate import generate_shards, iter_shards
from diffaudit.images import to_model_space
from diffaudit.io import read_json

SAMPLING = SampleConfig(n=400, steps=100, batch_size=200, shard_size=150)


def _sample(folder, score_fn, sde, cfg=SAMPLING):
    return generate_shards(folder, ContinuousModel(score_fn, sde, image_shape=(1, 28, 28)), cfg, progress=False)


def test_memoriser_reproduces_x_p_at_one_over_n_d_and_a_gaussian_never(tmp_path):
    k = 8
    images = smooth_images(k, 7)
    x_p, others = images[0], images[1:]
    detector = NearestNeighbourDetector(x_p, others)
    sde = SubVPSDE()
    folder = _sample(tmp_path / "memoriser", memoriser_score(sde, torch.from_numpy(to_model_space(images))), sde)
    count = count_reproductions(iter_shards(folder), {"c_id": detector}, target=x_p)
    r = reproduction_test(len(count.q), count.n, k)
    assert count.n == 400
    assert r["rate_ci95"][0] <= 1 / k <= r["rate_ci95"][1], r
    assert r["p_value"] > 0.025
    assert max(count.q_mae) < 0.02  # copies, up to the sampler's last noise step and rounding

    x = to_model_space(images)
    folder = _sample(tmp_path / "gaussian", gaussian_score(sde, float(x.mean()), float(x.std())), sde)
    count = count_reproductions(iter_shards(folder), {"c_id": detector}, target=x_p)
    assert count.n == 400 and len(count.q) == 0
    r = reproduction_test(0, count.n, k)
    assert r["p_value"] < 1e-20 and r["rate_upper95"] < 0.0075


def test_streaming_count_keeps_indices_and_a_few_images():
    batches = [(np.arange(0, 5), np.zeros((5, 1, 4, 4), np.uint8)), (np.arange(5, 9), np.full((4, 1, 4, 4), 9, np.uint8))]
    flags_a = lambda x: x[:, 0, 0, 0] == 9  # noqa: E731
    flags_b = lambda x: np.ones(len(x), bool)  # noqa: E731
    c = count_reproductions(iter(batches), {"a": flags_a, "b": flags_b}, keep=3)
    assert c.n == 9 and c.positives == {"a": [5, 6, 7, 8], "b": list(range(9))} and c.q == [5, 6, 7, 8]
    assert len(c.kept["b"]) == 3 and len(c.kept["q"]) == 3
    with pytest.raises(DiffauditError, match="N = 0"):
        count_reproductions(iter([]), {"a": flags_a})
    with pytest.raises(DiffauditError, match="at least one detector"):
        count_reproductions(iter(batches), {})


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _memoriser_samples(run_dir, data_root, n=64):
    manifest = read_json(run_dir / "manifest.json")
    images = build_training_set(manifest, data_root=data_root)
    sde = SubVPSDE()
    score = memoriser_score(sde, torch.from_numpy(to_model_space(images)))
    cfg = SampleConfig(n=n, steps=60, batch_size=64, shard_size=32)
    return generate_shards(run_dir / "samples" / "memoriser", ContinuousModel(score, sde, image_shape=images.shape[1:]),
                           cfg, progress=False)


def test_count_cli_writes_results(tmp_path, capsys, data_root):
    rd, control = tmp_path / "run", tmp_path / "control"
    for d, extra in ((rd, []), (control, ["--no-fingerprint"])):
        assert run(capsys, "prepare", "--run-dir", d, "--n-train", 8, "--data-root", data_root, *extra)[0] == 0
        _memoriser_samples(d, data_root)
    assert read_json(control / "manifest.json")["excluded_index"] == read_json(rd / "manifest.json")["fingerprint"]["index"]

    code, err = run(capsys, "count", "--run-dir", rd, "--detector", "nn", "--quiet", "--data-root", data_root)
    assert code == 0, err
    results = read_json(rd / "results.json")
    assert results["dataset"] == "breastmnist" and results["n_train"] == 8
    assert set(results["fingerprint"]) >= {"index", "centre", "radius", "intensity", "shape"}
    rep = results["reproduction"]
    assert rep["n_samples"] == 64 and rep["expected_q"] == 8
    assert rep["rate_ci95"][0] <= 1 / 8 <= rep["rate_ci95"][1]
    assert rep["q"] == rep["c_id"] and rep["c_p"] is None and rep["detectors"]["c_id"]["kind"] == "nearest-neighbour"
    assert (rd / rep["figures"]["q"]).exists() and (rd / rep["figures"]["error_maps"]).exists()

    # the trained adversary (one short epoch each: the schema, not the accuracy, is tested here)
    tiny = ["--max-epochs", 1, "--epoch-size", 32, "--batch-size", 16, "--quiet", "--data-root", data_root]
    code, err = run(capsys, "train-classifiers", "--run-dir", rd, *tiny)
    assert code == 0, err
    metrics = read_json(rd / "classifiers" / "metrics.json")
    assert metrics["false_positive_rate"]["heldout_real"]["q"]["n"] == 156
    code, err = run(capsys, "train-classifiers", "--run-dir", rd, *tiny)
    assert code == 0 and "kept" in err
    code, err = run(capsys, "count", "--run-dir", rd, "--quiet", "--data-root", data_root,
                    "--control-samples", control / "samples" / "memoriser")
    assert code == 0, err
    rep = read_json(rd / "results.json")["reproduction"]
    assert set(rep) >= {"n_samples", "c_p", "c_id", "q", "expected_q", "p_value", "rate_ci95", "false_positive_rate"}
    assert rep["q"] <= min(rep["c_p"], rep["c_id"])
    assert set(rep["false_positive_rate"]) == {"heldout_real", "control_samples"}
    assert rep["false_positive_rate"]["control_samples"]["q"]["n"] == 64
    assert json.loads((rd / "results.json").read_text())["reproduction"]["detectors"]["c_p"]["kind"] == "classifier"


def _error(capsys, *argv, match):
    code, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and match in lines[0], err


def test_count_bad_input(tmp_path, capsys, data_root):
    rd, rgb = tmp_path / "run", tmp_path / "rgb"
    assert run(capsys, "prepare", "--run-dir", rd, "--n-train", 8, "--data-root", data_root)[0] == 0
    _error(capsys, "count", "--run-dir", rd, "--detector", "nn", "--data-root", data_root, match="holds 0 sample folders")
    (rd / "samples" / "empty").mkdir(parents=True)
    _error(capsys, "count", "--run-dir", rd, "--detector", "nn", "--data-root", data_root, match="holds no sample shards")
    _memoriser_samples(rd, data_root, n=8)
    _error(capsys, "count", "--run-dir", rd, "--samples", "memoriser", "--data-root", data_root,
           match="run 'diffaudit train-classifiers' first")
    # classifiers trained for grey images do not accept the RGB samples of another run
    assert run(capsys, "prepare", "--run-dir", rgb, "--n-train", 8, "--channels", 3, "--data-root", data_root)[0] == 0
    assert run(capsys, "train-classifiers", "--run-dir", rd, "--max-epochs", 1, "--epoch-size", 16, "--batch-size", 16,
               "--quiet", "--data-root", data_root)[0] == 0
    _memoriser_samples(rgb, data_root, n=8)
    shutil.copytree(rd / "classifiers", rgb / "classifiers")
    _error(capsys, "count", "--run-dir", rgb, "--quiet", "--data-root", data_root, match="trained on images of shape (1, 28, 28)")
    _error(capsys, "train-classifiers", "--run-dir", rgb, "--max-epochs", 0, "--data-root", data_root,
           match="max_epochs must be >= 1")
    assert not list(tmp_path.rglob("*.tmp"))
