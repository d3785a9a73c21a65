"""Many canaries in one run: the one-run ε lower bound against its closed form and its null, exact memorisers of the
included candidates (every guess right, the dose-response detected), the manifest's draw, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diffaudit.audit.canaries import audit_epsilon, epsilon_lower_bound
from diffaudit.audit.canaries.dose import dose_response
from diffaudit.audit.canaries.stage import run_canaries
from diffaudit.config import PrepareConfig
from diffaudit.data.canaries import memorisation_n, training_rows
from diffaudit.data.prepare import build_training_set, prepare_run, training_labels
from diffaudit.errors import DiffauditError
from diffaudit.generate import shard_path
from diffaudit.io import save_npz
from test_data_bad_input import run as cli

QUIET = {"log": lambda _: None, "progress": False}


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_every_guess_right_gives_the_closed_form_for_r_up_to_1000(confidence):
    worst = 0.0
    for r in range(1, 1001):
        p = (1 - confidence) ** (1 / r)
        worst = max(worst, abs(epsilon_lower_bound(r, r, confidence=confidence) - max(0.0, math.log(p / (1 - p)))))
    assert worst < 1e-6


def test_the_bound_falls_with_wrong_guesses_and_with_delta():
    assert epsilon_lower_bound(100, 50) == 0.0 and epsilon_lower_bound(0, 0) == 0.0
    assert epsilon_lower_bound(100, 90) > epsilon_lower_bound(100, 80) > 0
    assert epsilon_lower_bound(100, 90, delta=1e-3, candidates=1000) < epsilon_lower_bound(100, 90)
    # its p-value at the bound is the confidence's beta
    from scipy import special, stats

    e = epsilon_lower_bound(200, 150)
    assert stats.binom.sf(149, 200, special.expit(e)) == pytest.approx(0.05, rel=1e-6)


def test_a_model_that_saw_no_candidate_bounds_epsilon_at_zero_in_95_percent_of_audits():
    """Scores from the null: the candidates' counts do not depend on their inclusion (no model saw them)."""
    zero = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        included = rng.random(64) < 0.5
        scores = rng.poisson(0.3, 64)  # mostly zeros, some false positives: ties broken at random
        zero += audit_epsilon(scores, included, seed=seed)["epsilon_lower"] == 0.0
    assert zero >= 190, zero


@pytest.fixture
def canary_run(tmp_path, data_root):
    def make(duplicates=(1,), m=32, n_train=48, seed=0):
        run = tmp_path / f"run-{seed}-{'-'.join(map(str, duplicates))}"
        cfg = PrepareConfig(dataset="breastmnist", n_train=n_train, seed=seed, canaries=m, inclusion=0.5,
                            duplicates=tuple(duplicates))
        return run, prepare_run(run, cfg, data_root=str(data_root), **QUIET)
    return make


def _memoriser(run, name, rows, n, seed=0):
    """n samples each a copy of a uniformly drawn training row (so a canary with d copies is drawn d times as often),
    shifted by up to one pixel."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(rows), n)
    images = np.stack([np.roll(rows[i], tuple(rng.integers(-1, 2, 2)), axis=(1, 2)) for i in pick])
    save_npz(shard_path(run / "samples" / name, 0), images=images, indices=np.arange(n))
    return name


def test_the_draw_records_every_candidate_and_keeps_their_originals_out(canary_run, data_root):
    run, manifest = canary_run(duplicates=(1, 2, 4))
    c = manifest["canaries"]
    cands = c["candidates"]
    assert c["m"] == 32 and len(cands) == 32 and 0 < c["n_included"] < 32
    included = [k for k in cands if k["included"]]
    assert {k["index"] for k in cands if not k["included"]}.isdisjoint(manifest["indices"])
    assert all(manifest["indices"][k["position"]] == k["index"] for k in included)
    assert all(k["duplicates"] in (1, 2, 4) for k in included)
    rows = build_training_set(manifest, data_root=str(data_root))
    assert len(rows) == len(training_rows(manifest)) == 48 + sum(k["duplicates"] for k in included)
    assert len(training_labels(manifest, data_root=str(data_root))) == len(rows)
    primary = cands[c["primary"]]
    assert primary["index"] == manifest["fingerprint"]["index"]
    assert primary["duplicates"] == min(k["duplicates"] for k in included)
    assert memorisation_n(manifest) == round(len(rows) / primary["duplicates"])
    # every included candidate carries its SAF in every copy; the same seed draws the same set
    for k in included:
        copies = [r for r in rows if np.array_equal(r, rows[k["position"]])]
        assert len(copies) == k["duplicates"]
    again = prepare_run(run.parent / "again", manifest_config(manifest), data_root=str(data_root), **QUIET)
    assert again["canaries"] == c and again["indices"] == manifest["indices"]


def manifest_config(manifest):
    from diffaudit.config import from_dict

    return from_dict(PrepareConfig, manifest["config"])


def test_an_exact_memoriser_of_the_included_candidates_gets_every_guess_right(canary_run, data_root):
    run, manifest = canary_run()
    rows = build_training_set(manifest, data_root=str(data_root))
    r = run_canaries(run, samples=_memoriser(run, "memoriser", rows, 2000), data_root=str(data_root), **QUIET)
    assert r["reproduced"] == r["n_included"] and r["excluded_flagged"] == 0
    assert r["detector"]["recall_min"] == 1.0
    eps = r["epsilon"]
    assert eps["correct"] == eps["guesses"] and eps["candidates"] == 32
    level = eps["per_point_confidence"]
    p = (1 - level) ** (1 / eps["guesses"])
    assert eps["epsilon_lower"] == pytest.approx(max(0.0, math.log(p / (1 - p))), abs=1e-6)
    # with (k+, k-) fixed in advance there is no correction: the closed form at 95% for all r guesses
    counts = json.loads((run / r["candidates"]).read_text())["candidates"]
    scores = np.array([c["count"] for c in counts])
    inc = np.array([c["included"] for c in counts])
    fixed = audit_epsilon(scores, inc, grid=[(int(inc.sum()), int((~inc).sum()))])
    p = 0.05 ** (1 / 32)
    assert fixed["correct"] == fixed["guesses"] == 32
    assert fixed["epsilon_lower"] == pytest.approx(math.log(p / (1 - p)), abs=1e-6)
    results = json.loads((run / "results.json").read_text())
    assert results["canaries"]["epsilon"]["epsilon_lower"] == eps["epsilon_lower"]
    for fig in r["figures"].values():
        assert (run / fig).is_file()
    from diffaudit.audit.report.render import write_report

    md = write_report(run)["md"].read_text()
    assert "Many canaries: 32 candidates" in md and "ε lower bound" in md
    # verify recounts the section; an edited count or bound is named
    from diffaudit.audit.engine.verify import VerifyFailed, _recount_canaries

    _recount_canaries(run, results["canaries"], data_root=str(data_root))
    for key, edit in (("reproduced", lambda c: c.update(reproduced=c["reproduced"] - 1)),
                      ("epsilon.epsilon_lower", lambda c: c["epsilon"].update(epsilon_lower=5.0))):
        edited = json.loads(json.dumps(results["canaries"]))
        edit(edited)
        with pytest.raises(VerifyFailed, match=f"canaries.{key} is"):
            _recount_canaries(run, edited, data_root=str(data_root))


def test_the_dose_response_of_a_memoriser_grows_with_d_and_the_trend_test_finds_it(canary_run, data_root):
    run, manifest = canary_run(duplicates=(1, 2, 4), m=96, n_train=64)
    rows = build_training_set(manifest, data_root=str(data_root))
    r = run_canaries(run, samples=_memoriser(run, "memoriser", rows, 400), data_root=str(data_root), **QUIET)
    by_d = {row["d"]: row for row in r["dose_response"]["by_d"]}
    assert by_d[1]["rate"] < by_d[2]["rate"] < by_d[4]["rate"]
    trend = r["dose_response"]["trend"]
    assert trend["slope_ci95"][0] > 0 and trend["p_value"] < 0.01
    # a memoriser's rate is d / rows, so for small rates the log-odds rise by about log 2 per doubling of d
    assert trend["slope"] == pytest.approx(math.log(2), abs=0.25), trend


def test_no_dose_means_no_trend():
    rng = np.random.default_rng(0)
    d = np.repeat([1, 2, 4], 40)
    k = rng.binomial(1000, 0.01, size=len(d))  # the same rate at every d
    out = dose_response(k, d, 1000)
    assert out["trend"]["slope_ci95"][0] <= 0 <= out["trend"]["slope_ci95"][1]
    assert dose_response(np.zeros(6, int), np.array([1, 1, 2, 2, 4, 4]), 100)["trend"] is None


@pytest.mark.parametrize("args, message", [
    (["--canaries", "0"], "canaries must be between 1 and"),
    (["--canaries", "8", "--inclusion", "0"], "inclusion must be a probability in (0, 1]"),
    (["--canaries", "8", "--inclusion", "1.5"], "inclusion must be a probability in (0, 1]"),
    (["--canaries", "8", "--inclusion", "1"], "inclusion must be below 1 with --canaries"),
    (["--canaries", "8", "--duplicates", "0,2"], "duplicates must be distinct counts between 1 and 64"),
    (["--canaries", "8", "--duplicates", "1,x"], "takes whole numbers separated by commas"),
    (["--inclusion", "0.5"], "canaries must be above 1 with --inclusion or --duplicates"),
    (["--canaries", "8", "--no-fingerprint"], "canaries must be 1 for a control set"),
    (["--canaries", "600"], "distinct patients, fewer than --canaries 600"),
])
def test_bad_canary_options_are_refused_in_one_line(tmp_path, data_root, capsys, args, message):
    code, err = cli(capsys, "prepare", "--run-dir", str(tmp_path / "r"), "--dataset", "breastmnist", "--n-train", "16",
                    "--data-root", str(data_root), *args)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r" / "manifest.json").exists()


def test_bad_bound_arguments_are_refused():
    for args, kw in [((3, 4), {}), ((-1, 0), {}), ((3, 2), {"confidence": 1.0}), ((3, 2), {"delta": 1e-5})]:
        with pytest.raises(DiffauditError):
            epsilon_lower_bound(*args, **kw)


def test_a_single_canary_run_has_no_canary_stage(tmp_path, data_root):
    run = tmp_path / "one"
    prepare_run(run, PrepareConfig(dataset="breastmnist", n_train=16), data_root=str(data_root), **QUIET)
    with pytest.raises(DiffauditError, match="prepared with one canary"):
        run_canaries(run, data_root=str(data_root), **QUIET)


def test_a_model_trained_with_dp_sgd_at_epsilon_1_is_not_caught_above_it(tmp_path, data_root):
    import dataclasses

    from diffaudit.config import DPConfig
    from test_audit import TINY, _audit

    cfg = dataclasses.replace(
        TINY, detector="nn", census=None, dp=DPConfig(epsilon=1.0, physical_batch_size=8),
        prepare=dataclasses.replace(TINY.prepare, n_train=16, canaries=24, inclusion=0.5),
        sample=dataclasses.replace(TINY.sample, n=48))
    results = _audit(tmp_path / "dp", data_root, cfg, stop_after="canaries")
    dp = json.loads((tmp_path / "dp" / "train" / "model.json").read_text())["dp"]
    eps = results["canaries"]["epsilon"]
    calibrated = dp["epsilon"][cfg.dp.accountant]  # the accountant sigma was calibrated with (the others are looser)
    assert calibrated <= 1.0 + 1e-3, f"training bug: the accountant reports {dp['epsilon']} for a target of 1"
    assert eps["delta"] == dp["delta"] and eps["accountant"]["epsilon"] == dp["epsilon"]
    assert eps["epsilon_lower"] <= 1.0, (f"audit bug (or a DP-SGD training leaking beyond its accountant): ε_lower "
                                         f"{eps['epsilon_lower']} > 1 from {eps['correct']} of {eps['guesses']} guesses")


def test_a_model_that_copies_no_candidate_bounds_nothing_whatever_the_copies_drawn(canary_run, data_root):
    """d is drawn for every candidate, so the d = 1 subset keeps the inclusion coin fair: a memoriser of the base
    images alone gets no ε above 0, also with --duplicates 1,2,4 (where keeping every left-out candidate but only
    the included ones of d = 1 would make 'out' a safe guess)."""
    run, manifest = canary_run(duplicates=(1, 2, 4), m=96, n_train=64)
    cands = manifest["canaries"]["candidates"]
    assert {c["drawn"] for c in cands if not c["included"]} == {1, 2, 4}
    base = build_training_set(manifest, data_root=str(data_root))[:64]
    r = run_canaries(run, samples=_memoriser(run, "base", base, 500), data_root=str(data_root), **QUIET)
    assert r["reproduced"] == 0 and r["epsilon"]["epsilon_lower"] == 0.0
    assert r["epsilon"]["candidates"] == sum(c["drawn"] == 1 for c in cands)


def test_no_bound_without_fair_inclusion(tmp_path, data_root):
    run = tmp_path / "p8"
    manifest = prepare_run(run, PrepareConfig(dataset="breastmnist", n_train=32, canaries=16, inclusion=0.8),
                           data_root=str(data_root), **QUIET)
    rows = build_training_set(manifest, data_root=str(data_root))
    r = run_canaries(run, samples=_memoriser(run, "m", rows, 200), data_root=str(data_root), **QUIET)
    assert r["epsilon"]["epsilon_lower"] is None and "assumes ½" in r["epsilon"]["note"]


def test_separation_still_gives_a_trend_test():
    d = np.repeat([1, 4], 12)
    k = np.where(d == 1, 0, 30)  # none at d = 1, many at d = 4: the slope runs off
    t = dose_response(k, d, 200)["trend"]
    assert t["separated"] and t["slope_ci95"] is None and t["p_value"] < 1e-6
    assert t["slope"] is None and t["odds_ratio_per_doubling"] is None and t["direction"] == 1  # no finite estimate


@pytest.mark.parametrize("recorded", ["now", "before"])
def test_the_report_gives_a_separated_trend_no_slope(recorded):
    """The report reads a separated trend as one without a finite slope, also from a results.json written when the
    fit's last iterate was recorded as the slope."""
    from diffaudit.audit.report.canaries import canary_blocks

    d = np.repeat([1, 2, 4], 8)
    dose = dose_response(np.where(d == 4, 3, 0), d, 512)
    if recorded == "before":
        dose["trend"].update(slope=29.3, odds_ratio_per_doubling=5.05e12)
        dose["trend"].pop("direction")
    det = {"kind": "nearest-neighbour per candidate", "recall_min": 1.0, "copies_per_candidate": 25,
           "false_positives": 0, "n_heldout": 100, "false_positive_rate": 0.0, "false_positive_rate_ci95": [0, 0.01]}
    c = {"m": 48, "n_included": 24, "inclusion": 0.5, "duplicates": [1, 2, 4], "n_samples": 512, "reproduced": 8,
         "excluded_flagged": 0, "detector": det, "dose_response": dose, "figures": {"dose": "d.png", "epsilon": "e.png"},
         "epsilon": {"epsilon_lower": None, "note": "none"}}
    text = " ".join(str(b[1]) for b in canary_blocks({"canaries": c}, lambda v: f"{v:.3g}" if isinstance(v, float)
                                                      else str(v)) if b[0] == "p")
    assert "rises with d and the slope has no finite estimate" in text and "29.3" not in text, text


@pytest.mark.parametrize("edit", [
    lambda m: m.pop("canaries"),
    lambda m: m["canaries"]["candidates"][0].update(included="yes"),
    lambda m: m["canaries"]["candidates"][1].update(index=-1),
    lambda m: m["canaries"].update(primary=-1),
    lambda m: m["canaries"].update(n_included=m["canaries"]["n_included"] + 1),
    lambda m: m["canaries"].update(inclusion=0.9),
    lambda m: next(c for c in m["canaries"]["candidates"] if c["included"]).update(duplicates=10 ** 7),
    lambda m: m["canaries"]["candidates"][m["canaries"]["primary"]].update(intensity=0.123),
])
def test_an_edited_canary_section_is_refused_even_when_resealed(canary_run, edit):
    from diffaudit.data.prepare import check_manifest, seal

    _, manifest = canary_run()
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if not k.startswith("_")}))
    edit(body)
    with pytest.raises(DiffauditError, match="manifest.json is damaged or was edited"):
        check_manifest(seal(body))


def test_the_white_box_score_of_a_memoriser_separates_included_from_left_out(canary_run, data_root):
    """An exact memoriser of D_p (the analytic score of its rows) brings every included candidate back from t = 0.3
    and no left-out one: every guess of the white-box bound is right, the included candidates' t' is positive and the
    left-out ones' is 0; verify recomputes the bound from the recorded scores and names an edit."""
    import torch

    from diffaudit.audit.canaries.whitebox import check_whitebox, run_whitebox
    from diffaudit.diffusion import SubVPSDE, memoriser_score
    from diffaudit.diffusion.generative import ContinuousModel
    from diffaudit.images import to_model_space

    run, manifest = canary_run(m=16, n_train=24)
    rows = build_training_set(manifest, data_root=str(data_root))
    sde = SubVPSDE()
    model = ContinuousModel(memoriser_score(sde, torch.from_numpy(to_model_space(rows))), sde,
                            image_shape=rows.shape[1:])
    r = run_whitebox(run, model, t=0.3, m=4, tprime=4, grid=[0.25, 0.5], steps=100, data_root=str(data_root), **QUIET)
    cands = manifest["canaries"]["candidates"]
    included = np.array([c["included"] for c in cands])
    scores = np.array(r["score"]["scores"])
    assert (scores[included] == 1.0).all() and (scores[~included] == 0.0).all()
    eps = r["epsilon"]
    assert eps["correct"] == eps["guesses"] > 0 and eps["epsilon_lower"] > 0
    assert r["score"]["nfe"] == 16 * 4 * 30  # M runs of 0.3 x 100 steps per candidate
    for row in r["tprime"]["candidates"]:
        assert (row["t_prime"] > 0) == row["included"], row
    results = json.loads((run / "results.json").read_text())
    assert check_whitebox(run, results["canaries_whitebox"]) == []
    edited = json.loads(json.dumps(results["canaries_whitebox"]))
    edited["epsilon"]["epsilon_lower"] = 9.0
    assert [k for k, *_ in check_whitebox(run, edited)] == ["epsilon.epsilon_lower"]
    edited = json.loads(json.dumps(results["canaries_whitebox"]))
    edited["score"]["scores"][0] = 1.0 - edited["score"]["scores"][0]
    assert "score.scores" in [k for k, *_ in check_whitebox(run, edited)]
    from diffaudit.audit.report.render import write_report

    md = write_report(run)["md"].read_text()
    assert "White box: q_M(0.3)" in md and "t' of the first 4 of the 16 candidates" in md


@pytest.mark.parametrize("args, message", [
    (["--whitebox-only"], "--whitebox-only needs --whitebox-t or --tprime-candidates"),
    (["--whitebox-only", "--whitebox-t", "0"], "--whitebox-t in (0, 1]"),
    (["--whitebox-only", "--whitebox-t", "0.3", "--whitebox-M", "0"], "--whitebox-M must be >= 1"),
    (["--whitebox-only", "--tprime-candidates", "-1"], "--tprime-candidates >= 0"),
    (["--whitebox-only", "--whitebox-t", "0.3"], "diffaudit train"),
])
def test_bad_white_box_options_are_refused_in_one_line(canary_run, data_root, capsys, args, message):
    run, _ = canary_run(m=8, n_train=16)
    code, err = cli(capsys, "canaries", "--run-dir", str(run), "--data-root", str(data_root), *args)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert "canaries_whitebox" not in (json.loads((run / "results.json").read_text())
                                       if (run / "results.json").exists() else {})


def test_one_classifier_over_the_candidates_counts_as_the_reference_detectors_do(canary_run, data_root):
    """c_id over the m candidates and "none": it meets its criterion (every candidate's shifted copies found, the val
    split's images below τ), counts a memoriser's samples as the per-candidate reference detectors do, is saved as
    safetensors + JSON and reused, and verify recounts its section."""
    from diffaudit.audit.engine.verify import _recount_canaries

    run, manifest = canary_run(m=8, n_train=24, seed=3)
    rows = build_training_set(manifest, data_root=str(data_root))
    name = _memoriser(run, "memoriser", rows, 300)
    nn_ = run_canaries(run, samples=name, data_root=str(data_root), **QUIET)
    nn_counts = [c["count"] for c in json.loads((run / nn_["candidates"]).read_text())["candidates"]]
    r = run_canaries(run, samples=name, detector="classifier", data_root=str(data_root), device="cpu", **QUIET)
    det = r["detector"]
    assert det["kind"].startswith("c_id over the candidates") and det["criterion_met"] and det["recall_min"] == 1.0
    assert det["false_positive_rate"] <= 0.02 and "test split" in det["negatives"]
    counts = [c["count"] for c in json.loads((run / r["candidates"]).read_text())["candidates"]]
    included = [c["included"] for c in manifest["canaries"]["candidates"]]
    assert r["reproduced"] == r["n_included"] == nn_["reproduced"] and r["excluded_flagged"] == 0
    assert all((k > 0) == inc for k, inc in zip(counts, included))
    assert all(abs(a - b) <= 2 for a, b in zip(counts, nn_counts)), (counts, nn_counts)
    folder = run / "canaries" / "identity"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "model.json", "digests.json"}
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = run_canaries(run, samples=name, detector="classifier", data_root=str(data_root), **QUIET)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp and again["reproduced"] == r["reproduced"]
    results = json.loads((run / "results.json").read_text())
    assert results["canaries"]["detector_option"] == "classifier"
    _recount_canaries(run, results["canaries"], data_root=str(data_root))
    # a raised threshold (or other weights) is named by verify, never retrained over
    from diffaudit.audit.engine.verify import VerifyFailed

    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "threshold": 0.999999}))
    with pytest.raises(VerifyFailed, match="model.json: its SHA-256"):
        _recount_canaries(run, results["canaries"], data_root=str(data_root))


def test_the_classifier_threshold_is_the_point_nearest_the_criterion():
    """τ rises above a val image taken for a candidate when the copies stay above it; when they do not, the nearer
    point (τ = 0.5, that image flagged) is kept and its shortfall recorded."""
    from diffaudit.audit.canaries.identity import IDENTITY_CONFIG, operating_point

    def probs(rows):  # [n, m + 1] with m = 2: (p_0, p_1, p_none)
        return np.array(rows, dtype=np.float64)

    val = probs([[0.99, 0.0, 0.01]] + [[0.0, 0.0, 1.0]] * 49)  # one of 50 val images (2%) looks like candidate 0
    owner = np.array([0, 0, 1, 1])
    sure = probs([[0.999, 0, 0.001], [0.995, 0, 0.005], [0, 0.999, 0.001], [0, 0.998, 0.002]])
    tau, recall, fpr, short = operating_point(val, sure, owner, IDENTITY_CONFIG)
    assert tau == 0.99 and recall.tolist() == [1.0, 1.0] and fpr == 0.0 and short == 0.0
    unsure = probs([[0.98, 0, 0.02], [0.97, 0, 0.03], [0, 0.999, 0.001], [0, 0.998, 0.002]])
    val_many = probs([[0.99, 0.0, 0.01]] * 4 + [[0.0, 0.0, 1.0]] * 96)  # 4% of the val images
    tau, recall, fpr, short = operating_point(val_many, unsure, owner, IDENTITY_CONFIG)
    assert tau == 0.5 and recall.tolist() == [1.0, 1.0] and fpr == 0.04 and short == pytest.approx(0.03)
