"""The sequential count: coverage of the confidence sequence under optional stopping (simulated streams), its
decisions, and a count that stops on an exact memoriser and on a model that never reproduces x_p."""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from test_count import run

from diffaudit.adversary.detectors import NearestNeighbourDetector
from diffaudit.audit.count.sequential import (
    anytime_p_value,
    confidence_sequence,
    decide,
    log_martingale,
    looks_of,
    sequential_sample,
)
from diffaudit.audit.count.stats import clopper_pearson
from diffaudit.config import SampleConfig
from diffaudit.data.prepare import build_training_set
from diffaudit.diffusion import SubVPSDE, gaussian_score, memoriser_score
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.errors import DiffauditError
from diffaudit.images import to_model_space
from diffaudit.io import read_json

ALPHA = 0.05


def streams(p, n_streams=400, n=4000, look=50, seed=0):
    """Positives counted at each look of ``n_streams`` seeded Bernoulli(p) streams: k [streams, looks], n [looks]."""
    rng = np.random.default_rng(seed)
    ks = np.cumsum(rng.random((n_streams, n)) < p, axis=1)[:, look - 1::look]
    return ks, np.arange(look, n + 1, look)


@pytest.mark.parametrize("p", [0.001, 0.01, 1 / 16, 0.3])
def test_the_confidence_sequence_covers_the_rate_at_every_look_at_once(p):
    ks, ns = streams(p, seed=int(p * 1e6))
    inside = log_martingale(p, ks, ns[None]) < np.log(1 / ALPHA)  # p in C_n, look by look
    covered = inside.all(axis=1).mean()  # whatever the stopping rule, it stops at one of these looks
    assert covered >= 0.95, covered


def test_stopping_at_the_first_significant_fixed_n_test_breaks_its_level_and_not_the_sequences():
    # H0 true (p = p0): stop as soon as a test rejects at 5%; a fixed-N test rejects far more often than 5%
    p0 = 1 / 16
    ks, ns = streams(p0, n=2000, look=25, seed=7)
    fixed = np.array([[binomtest(int(k), int(n), p0, alternative="less").pvalue < ALPHA for k, n in zip(row, ns)]
                      for row in ks[:200]]).any(axis=1).mean()
    sequential = (log_martingale(p0, ks[:200], ns[None]) >= np.log(1 / ALPHA)).any(axis=1).mean()
    assert fixed > 0.10 and sequential <= ALPHA, (fixed, sequential)


def test_interval_edges_wider_than_a_fixed_n_interval_and_p_value():
    for k, n in ((0, 1000), (3, 500), (17, 256), (256, 256)):
        lo, hi = confidence_sequence(k, n)
        assert lo <= k / n <= hi
        cp = clopper_pearson(k, n)
        assert lo <= cp[0] + 1e-12 and hi >= cp[1] - 1e-12  # the price of looking as often as one likes
        for edge in (lo, hi):
            if 0 < edge < 1:
                assert float(log_martingale(edge, k, n)) == pytest.approx(np.log(1 / ALPHA), abs=1e-6)
    assert confidence_sequence(0, 10)[0] == 0 and confidence_sequence(10, 10)[1] == 1
    # the anytime p-value is at most alpha exactly when p0 left the interval at one of the looks
    ks, ns = [0, 0, 1], [500, 1000, 1500]
    p0 = 1 / 64
    out = [confidence_sequence(k, n)[1] < p0 for k, n in zip(ks, ns)]
    assert (anytime_p_value(ks, ns, p0) <= ALPHA) == any(out)
    assert looks_of([3, 70, 71], 150, 64) == ([1, 3, 3], [64, 128, 150])
    with pytest.raises(DiffauditError):
        confidence_sequence(5, 4)


def test_decisions():
    assert decide(0.0, 0.01, p0=1 / 16, target=None) == "memorisation_rejected"
    assert decide(0.0, 0.07, p0=1 / 16, target=None) is None
    assert decide(0.0, 0.009, p0=1 / 16, target=0.01) == "below_target"
    assert decide(0.02, 0.2, p0=1 / 16, target=0.01) == "above_target"
    assert decide(0.0, 0.02, p0=1 / 16, target=0.01) is None  # below 1/N_D but the target is not settled


def _model(score, sde, images):
    return ContinuousModel(score, sde, image_shape=images.shape[1:])


def test_a_sequential_count_stops_early_and_a_rerun_replays_it(tmp_path, capsys, data_root):
    rd = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", rd, "--n-train", 8, "--data-root", data_root)[0] == 0
    manifest = read_json(rd / "manifest.json")
    images = build_training_set(manifest, data_root=data_root)
    x_p = images[manifest["fingerprint"]["position"]]
    det = {"c_id": NearestNeighbourDetector(x_p, np.delete(images, manifest["fingerprint"]["position"], 0))}
    sde = SubVPSDE()
    cfg = SampleConfig(n=2048, steps=30, batch_size=64, shard_size=32)
    x = to_model_space(images)

    # a model that never reproduces x_p: full memorisation (1/8) is rejected long before 2048 images
    never = _model(gaussian_score(sde, float(x.mean()), float(x.std())), sde, images)
    rec = sequential_sample(rd / "samples" / "gauss", never, cfg, det, n_train=8, progress=False, log=lambda s: None)
    assert rec["reason"] == "memorisation_rejected" and rec["q"] == 0 and rec["n_samples"] < 2048
    assert rec["looks"][-1]["hi"] < 1 / 8 <= rec["looks"][-2]["hi"] and rec["saved"] == 2048 - rec["n_samples"]
    shards = sorted((rd / "samples" / "gauss").glob("shard_*.npz"))
    assert len(shards) == rec["n_samples"] // 32
    stamps = [p.stat().st_mtime_ns for p in shards]
    again = sequential_sample(rd / "samples" / "gauss", never, cfg, det, n_train=8, progress=False, log=lambda s: None)
    assert again == rec and [p.stat().st_mtime_ns for p in shards] == stamps  # replayed, not redrawn

    # shards of another sampling config are never replayed as this one's
    with pytest.raises(DiffauditError, match="other settings|steps"):
        sequential_sample(rd / "samples" / "gauss", never, SampleConfig(n=2048, steps=31, batch_size=64, shard_size=32),
                          det, n_train=8, progress=False, log=lambda s: None)

    # an exact memoriser is settled above a 1% target within a few shards
    memoriser = _model(memoriser_score(sde, torch.from_numpy(x)), sde, images)
    cfg = SampleConfig(n=2048, steps=60, batch_size=64, shard_size=32)  # as test_count's memoriser samples
    rec = sequential_sample(rd / "samples" / "mem", memoriser, cfg, det, n_train=8, target_rate=0.01, progress=False,
                            log=lambda s: None)
    assert rec["reason"] == "above_target" and rec["looks"][-1]["lo"] > 0.01 and rec["n_samples"] <= 256

    # count reports the anytime-valid interval of exactly the images drawn until the stop
    code, err = run(capsys, "count", "--run-dir", rd, "--samples", "mem", "--detector", "nn", "--quiet",
                    "--data-root", data_root)
    assert code == 0, err
    rep = read_json(rd / "results.json")["reproduction"]
    assert rep["design"] == "sequential" and rep["n_samples"] == rec["n_samples"] and rep["q"] == rec["q"]
    assert rep["rate_ci95"] == pytest.approx([rec["looks"][-1]["lo"], rec["looks"][-1]["hi"]])
    assert rep["fixed_n"]["rate_ci95"][0] >= rep["rate_ci95"][0] and rep["sequential"]["reason"] == "above_target"


def test_sequential_bad_input(tmp_path, capsys, data_root):
    rd = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", rd, "--n-train", 8, "--data-root", data_root)[0] == 0
    code, err = run(capsys, "sample", "--run-dir", rd, "--target-rate", 0.01, "--data-root", data_root)
    assert code == 2 and "add --sequential" in err and len(err.strip().splitlines()) == 1
    code, err = run(capsys, "audit", "--run-dir", rd, "--target-rate", 0.01, "--dry-run")
    assert code == 2 and "add --sequential" in err
    code, err = run(capsys, "audit", "--run-dir", tmp_path / "r2", "--sequential", "--target-rate", 2, "--dry-run")
    assert code == 2 and "target_rate" in err and len(err.strip().splitlines()) == 1
    code, err = run(capsys, "audit", "--run-dir", tmp_path / "r3", "--sequential", "--target-rate", 0.01, "--dry-run",
                    "--data-root", data_root)  # the synthetic files: the plan reads the dataset's size
    assert code == 0, err
