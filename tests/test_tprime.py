"""t': the fast search against the exhaustive grid on synthetic profiles, analytic ground truths, the bound, CLI."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_adversary import smooth_images

from diffaudit.adversary.detectors import NearestNeighbourDetector
from diffaudit.audit.tprime.search import QM, Evaluation, darboux_bound, make_grid, search
from diffaudit.cli import main
from diffaudit.diffusion import SubVPSDE, gaussian_score, memoriser_score
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.errors import DiffauditError
from diffaudit.images import to_model_space
from diffaudit.io import read_json

M = 16


def profile(ks):
    """A q_M 'sampler' that returns fixed counts; its cost grows with t as a reverse run's does."""
    grid = make_grid(1 / len(ks))
    table = dict(zip(grid, ks, strict=True))
    return grid, lambda t: Evaluation(t, table[t], M, nfe=int(round(t * 1000)))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 120), data=st.data())
def test_fast_equals_exhaustive_on_monotone_profiles(n, data):
    cut = data.draw(st.integers(0, n))
    ks = [data.draw(st.integers(1, M)) for _ in range(cut)] + [0] * (n - cut)
    grid, q_m = profile(ks)
    fast = search(q_m, grid, method="fast", p0=1 / 32)
    full = search(q_m, grid, method="exhaustive", p0=1 / 32)
    assert fast.t_prime == full.t_prime == (grid[cut - 1] if cut else 0.0)
    assert not fast.non_monotone and not full.non_monotone
    assert fast.nfe <= full.nfe


@settings(max_examples=300, deadline=None)
@given(ks=st.lists(st.integers(0, 3), min_size=1, max_size=120))
def test_fast_search_guarantee_on_any_profile(ks):
    grid, q_m = profile(ks)
    fast = search(q_m, grid, method="fast", p0=1 / 32)
    seen_pos = [t for t, e in fast.evaluations.items() if e.positives > 0]
    seen_neg = [t for t, e in fast.evaluations.items() if e.positives == 0]
    # never below a point it saw positive; always a point it saw positive (or 0 when none)
    assert fast.t_prime == max(seen_pos, default=0.0)
    assert fast.non_monotone == bool(seen_pos and seen_neg and min(seen_neg) < max(seen_pos))
    full = search(q_m, grid, method="exhaustive", p0=1 / 32)
    assert fast.t_prime <= full.t_prime
    assert full.non_monotone == any(a == 0 and b > 0 for i, a in enumerate(ks) for b in ks[i + 1:])


def test_fast_search_costs_a_tenth_at_the_paper_resolution():
    for cut in (5, 30, 60, 100):
        grid, q_m = profile([4] * cut + [0] * (100 - cut))
        fast, full = (search(q_m, grid, method=m, p0=1 / 32) for m in ("fast", "exhaustive"))
        assert fast.t_prime == full.t_prime and full.nfe / fast.nfe >= 10, (cut, full.nfe / fast.nfe)


class Runs:
    """q_M with one outcome per reverse run: k(t) of the M runs at t are positive, in a random order fixed by t;
    a run from t costs t * 1000 evaluations. Has ``until``, so the fast search stops the runs early."""

    def __init__(self, ks, seed=0):
        self.grid, self.m, self.cache = make_grid(1 / len(ks)), M, {}
        rng = np.random.default_rng(seed)
        self.hits = {t: rng.permutation(M) < k for t, k in zip(self.grid, ks, strict=True)}

    def until(self, t, stop=None):
        e = self.cache.get(t, Evaluation(t, 0, 0, 0, planned=M))
        while not e.complete and not (stop is not None and stop(e.positives, e.m)):
            e = Evaluation(t, e.positives + int(self.hits[t][e.m]), e.m + 1, e.nfe + int(round(t * 1000)), planned=M)
        self.cache[t] = e
        return e

    def __call__(self, t):
        return self.until(t)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 120), data=st.data())
def test_early_stopped_runs_keep_t_prime_and_t_prime_alpha(n, data):
    cut = data.draw(st.integers(0, n))
    ks = sorted((data.draw(st.integers(1, M)) for _ in range(cut)), reverse=True) + [0] * (n - cut)
    fast_q, full_q = Runs(ks), Runs(ks)
    fast = search(fast_q, fast_q.grid, method="fast", p0=1 / 32)
    full = search(full_q, full_q.grid, method="exhaustive", p0=1 / 32)
    assert (fast.t_prime, fast.t_prime_alpha) == (full.t_prime, full.t_prime_alpha)
    assert fast.nfe <= full.nfe and all(e.complete for e in full.evaluations.values())
    # an early-stopped time made fewer runs, and its verdicts are those of all M
    for t, e in fast.evaluations.items():
        assert e.m <= M and (e.positives > 0) == (full.evaluations[t].positives > 0 if e.positives else e.positives > 0)


def test_early_stopping_keeps_the_answers_and_cuts_the_cost():
    # 16 of 16 runs positive up to t_0, then falling to 1 of 16 at t', none above (the shape of a memorising model)
    for t0, t_prime in ((10, 40), (20, 30), (20, 60), (20, 80), (40, 60)):
        ks = [M] * t0 + [max(1, round(M * (1 - (i - t0) / (t_prime - t0)))) for i in range(t0, t_prime)]
        ks += [0] * (100 - t_prime)
        plain = search(lambda t, q=Runs(ks): q(t), make_grid(0.01), method="fast", p0=1 / 32)  # all M runs per time
        fast, full = Runs(ks), Runs(ks)
        fast_s = search(fast, fast.grid, method="fast", p0=1 / 32)
        full_s = search(full, full.grid, method="exhaustive", p0=1 / 32)
        assert (fast_s.t_prime, fast_s.t_prime_alpha) == (full_s.t_prime, full_s.t_prime_alpha) == \
               (plain.t_prime, plain.t_prime_alpha)
        assert fast_s.nfe < plain.nfe and full_s.nfe / fast_s.nfe >= 7, (t_prime, full_s.nfe / fast_s.nfe)
    # a chance level so high that no k of M is significant: t'_alpha is 0 without a run spent on it
    never = Runs([M] * 10 + [0] * 90)
    s = search(never, never.grid, method="fast", p0=0.99)
    assert s.t_prime == 0.10 and s.t_prime_alpha == 0 and all(e.m > 0 for e in s.evaluations.values())


def test_t_prime_alpha_ignores_a_chance_hit_near_T():
    ks = [16] * 30 + [0] * 60 + [1] + [0] * 9  # one chance hit at t = 0.91
    grid, q_m = profile(ks)
    full = search(q_m, grid, method="exhaustive", p0=1 / 32, alpha=0.05)
    assert full.t_prime == pytest.approx(0.91) and full.non_monotone
    assert full.t_prime_alpha == pytest.approx(0.30)
    fast = search(q_m, grid, method="fast", p0=1 / 32, alpha=0.05)
    assert fast.t_prime == pytest.approx(0.30) and fast.t_prime_alpha == pytest.approx(0.30)


def test_darboux_bound_of_a_step_profile_is_sigma_at_t_prime():
    sde = SubVPSDE()
    grid, q_m = profile([M] * 30 + [0] * 70)
    s = search(q_m, grid, method="exhaustive", p0=1 / 32)
    sigma = ContinuousModel(None, sde, image_shape=(1, 1, 1)).sigma
    assert darboux_bound(s, sigma) == pytest.approx(sigma(0.30))
    grid, q_m = profile([M // 2] * 30 + [0] * 70)  # q = 1/2 after the first point (q(0) := 1)
    s = search(q_m, grid, method="exhaustive", p0=1 / 32)
    assert darboux_bound(s, sigma) == pytest.approx(sigma(0.01) + 0.5 * (sigma(0.30) - sigma(0.01)))


def _leading_positives(s):
    n = 0
    for t in s.grid:
        if s.evaluations[t].positives == 0:
            break
        n += 1
    return n


def test_memoriser_region_shrinks_with_k_and_a_gaussian_t_prime_is_low():
    sde = SubVPSDE()
    grid = make_grid(0.1)
    prefix = {}
    for k in (2, 32):
        images = smooth_images(k, 11)
        score = memoriser_score(sde, torch.from_numpy(to_model_space(images)))
        q_m = QM(ContinuousModel(score, sde, image_shape=images.shape[1:]), images[0], {"nn": NearestNeighbourDetector(images[0], images[1:])}, m=8, steps=50)
        s = search(q_m, grid, method="exhaustive", p0=1 / k)
        assert s.evaluations[grid[0]].q == 1.0
        prefix[k] = _leading_positives(s)
    assert prefix[32] < prefix[2], prefix
    images = smooth_images(32, 11)
    x = to_model_space(images)
    q_m = QM(ContinuousModel(gaussian_score(sde, float(x.mean()), float(x.std())), sde, image_shape=images.shape[1:]), images[0],
             {"nn": NearestNeighbourDetector(images[0], images[1:])}, m=8, steps=50)
    s = search(q_m, grid, method="exhaustive", p0=1 / 32)
    assert s.t_prime <= 0.1 and s.t_prime_alpha <= 0.1 and prefix[2] * 0.1 >= 0.5


def test_bad_input():
    sde = SubVPSDE()
    images = smooth_images(4, 12)
    det = {"nn": NearestNeighbourDetector(images[0], images[1:])}
    score = memoriser_score(sde, torch.from_numpy(to_model_space(images)))
    with pytest.raises(DiffauditError, match="M, the number of reverse runs"):
        QM(ContinuousModel(score, sde, image_shape=images.shape[1:]), images[0], det, m=0)
    q_m = QM(ContinuousModel(score, sde, image_shape=images.shape[1:]), images[0], det, m=2, steps=10)
    for t in (0.0, -0.1, 1.5):
        with pytest.raises(DiffauditError, match=r"t must lie in"):
            q_m(t)
    with pytest.raises(DiffauditError, match="grid is empty"):
        search(q_m, [], p0=0.25)
    with pytest.raises(DiffauditError, match="resolution"):
        make_grid(0.0)
    wrong = QM(ContinuousModel(score, sde, image_shape=images.shape[1:]), images[0], {"bad": lambda x: np.zeros((len(x), 3), bool)}, m=2, steps=10)
    with pytest.raises(DiffauditError, match="one boolean per image"):
        wrong(0.5)
    with pytest.raises(DiffauditError, match="chance level"):
        search(q_m, [0.5], p0=0.0)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_tprime_cli(tmp_path, capsys, data_root):
    rd = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", rd, "--n-train", 8, "--data-root", data_root)[0] == 0
    assert run(capsys, "train", "--run-dir", rd, "--quiet", "--steps", 3, "--batch-size", 4, "--checkpoint-every", 3,
               "--data-root", data_root)[0] == 0
    fast = ["--detector", "nn", "--M", 2, "--resolution", 0.25, "--steps", 8, "--quiet", "--data-root", data_root]
    code, err = run(capsys, "tprime", "--run-dir", rd, "--search", "both", *fast)
    assert code == 0, err
    tp = read_json(rd / "results.json")["t_prime"]
    assert set(tp) >= {"value", "value_alpha", "alpha", "M", "grid", "q_M", "q_M_ci95", "bound", "nfe", "search"}
    assert tp["grid"] == [0.25, 0.5, 0.75, 1.0] and tp["M"] == 2 and tp["compare"]["exhaustive"]["nfe"] >= tp["nfe"]
    assert (rd / tp["figure"]).exists()
    code, err = run(capsys, "tprime", "--run-dir", rd, "--images", "0,3", *fast)
    assert code == 0, err
    rows = read_json(rd / "results.json")["t_prime_posthoc"]["images"]
    assert sorted(r["position"] for r in rows) == [0, 3] and "t_prime" in read_json(rd / "results.json")
    code, err = run(capsys, "tprime", "--run-dir", rd, "--images", "0,99", *fast)
    assert code == 2 and "outside the training set" in err
    code, err = run(capsys, "tprime", "--run-dir", rd, "--M", 0, "--detector", "nn", "--data-root", data_root)
    assert code == 2 and "TPrimeConfig.M must be >= 1" in err


def test_posthoc_ranks_the_memorised_image_first():
    """A model that memorised image 0 alone returns image 0 from any start: image 0 has the largest t' and t'_alpha,
    and the images it does not return have t' = 0, ranked after it by position."""
    from diffaudit.audit.tprime.stage import posthoc

    images = np.random.default_rng(5).integers(0, 256, size=(4, 1, 6, 6), dtype=np.uint8)
    sde = SubVPSDE()
    score = memoriser_score(sde, torch.from_numpy(to_model_space(images[:1])))
    rows = posthoc(ContinuousModel(score, sde, image_shape=images.shape[1:]), images, [2, 0, 1], grid=make_grid(0.1, 0.5), m=4, steps=40, progress=False)
    assert [r["position"] for r in rows] == [0, 1, 2]
    assert rows[0]["t_prime"] == 0.5 and rows[0]["t_prime_alpha"] == 0.5
    assert all(r["t_prime"] == 0.0 and r["t_prime_alpha"] == 0.0 for r in rows[1:])
    with pytest.raises(DiffauditError, match="must not repeat"):
        posthoc(ContinuousModel(score, sde, image_shape=images.shape[1:]), images, [1, 1], grid=make_grid(0.1, 0.5), m=4, steps=40, progress=False)
