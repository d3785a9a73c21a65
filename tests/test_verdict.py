"""The report a privacy officer reads: risk levels at each boundary, the release gate's exit code, provenance, the
detector curves against scikit-learn / torchmetrics, compare across runs, and a verdict that comes first."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from test_robustness import refused, run

from diffaudit.adversary.roc import auc, detector_curve, roc_curve, threshold_for_fpr, tpr_at
from diffaudit.audit.report.compare import compare_runs
from diffaudit.audit.count.stats import clopper_pearson, reproduction_test
from diffaudit.audit.count.verdict import risk_level, verdict_section
from diffaudit.cli import main
from diffaudit.errors import DiffauditError, RELEASE_BLOCKED
from diffaudit.io import read_json, write_json

F, P0 = 0.02, 1 / 16  # a false-positive bound and full memorisation at N_D = 16


@pytest.mark.parametrize("shown,lo,hi,sens,level", [
    (True, F, P0, 1.0, "high"),               # shown, hi at p_0: as frequent as a memoriser
    (True, F, P0 - 1e-9, 1.0, "elevated"),    # hi just below p_0
    (False, F, P0 - 1e-9, 1.0, "low"),        # nothing beyond false alarms, memorisation rejected
    (False, F, P0, 1.0, "inconclusive"),      # neither can be told apart
    (True, P0 + 1e-9, 0.5, 1.0, "inconclusive"),  # above full memorisation: the detectors fire on these images
    (True, F + 0.01, P0, 0.89, "inconclusive"),   # detectors that miss clean copies
    (True, F + 0.01, P0, 0.9, "high"),
])
def test_risk_levels_at_each_boundary(shown, lo, hi, sens, level):
    assert risk_level(shown, lo, hi, P0, sens)[0] == level


def _results(q: int, n: int, n_train: int, fp: int = 0, n_real: int = 156) -> tuple[dict, dict]:
    rep = {**reproduction_test(q, n, n_train), "c_p": q, "c_id": q, "samples": "samples/none", "figures": {},
           "detectors": {"c_p": {"kind": "classifier"}, "c_id": {"kind": "classifier"}}, "false_positive_rate": {}}
    metrics = {"false_positive_rate": {"heldout_real": {"q": {"positives": fp, "n": n_real, "rate": fp / n_real}}},
               "true_positive_rate": {"copies_of_x_p": {"0": {"q": {"positives": 200, "n": 200, "rate": 1.0}}}}}
    return {"n_train": n_train, "reproduction": rep}, metrics


def test_the_verdict_states_the_rate_per_thousand_and_its_scope():
    results, metrics = _results(17, 256, 16)
    v = verdict_section(results, metrics)
    assert v["level"] == "high" and v["statement"].startswith("At most 104 in 1 000 generated images")
    assert v["false_positive_bound"] == pytest.approx(clopper_pearson(0, 156, alternative="less")[1])
    assert "one canary image" in v["scope"] and "256 generated images" in v["scope"]
    assert verdict_section(*_results(0, 1000, 16))["level"] == "low"


def _fabricated_run(tmp_path, data_root, name: str, q: int, n: int, detector: str = "classifier") -> object:
    rd = tmp_path / name
    assert main(["prepare", "--run-dir", str(rd), "--n-train", "16", "--data-root", str(data_root)]) == 0
    results, metrics = _results(q, n, 16)
    results["reproduction"]["detectors"] = {"c_id": {"kind": detector}}
    results.update(dataset="breastmnist", split="train", image_shape=[1, 28, 28], fingerprint=None,
                   t_prime={"value": 0.5, "value_alpha": 0.3, "grid": [0.25, 0.5, 0.75], "q_M": [1.0, 0.5, 0.0],
                            "q_M_ci95": [[0.6, 1.0], [0.2, 0.8], [0.0, 0.3]], "chance_level": 1 / 16, "bound": 0.4,
                            "model": {"digest": f"d-{name}"}})
    results["reproduction"]["model"] = {"digest": f"d-{name}"}
    write_json(rd / "results.json", results)
    write_json(rd / "classifiers" / "metrics.json", metrics)
    return rd


def test_the_release_gate_exits_3_above_the_limit_and_report_json_prints_the_verdict(tmp_path, data_root, capsys):
    rd = _fabricated_run(tmp_path, data_root, "run", 17, 256)
    assert main(["report", "--run-dir", str(rd), "--fail-above", "0.2", "--write"]) == 0
    capsys.readouterr()
    assert main(["report", "--run-dir", str(rd), "--json", "--fail-above", "0.05"]) == RELEASE_BLOCKED == 3
    out, err = capsys.readouterr()
    assert json.loads(out)["level"] == "high" and "release blocked" in err and "0.1042" in err
    refused(capsys, "report", "--run-dir", rd, "--fail-above", 2, match="--fail-above is a reproduction rate")
    results = read_json(rd / "results.json")
    prov = results["provenance"]
    assert set(prov) >= {"diffaudit", "created", "model", "data", "manifest_digest", "config_digest", "versions", "device"}
    assert prov["model"]["digest"] == "d-run" and torch.__version__.startswith(prov["versions"]["torch"])
    assert prov["data"]["md5"] and prov["manifest_digest"]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.seen.append((tag, dict(attrs)))


def test_the_report_opens_with_the_verdict_and_prints_cleanly(tmp_path, data_root):
    rd = _fabricated_run(tmp_path, data_root, "run", 0, 1000)
    assert main(["report", "--run-dir", str(rd)]) == 0
    text = (rd / "report.html").read_text()
    parser = _Tags()
    parser.feed(text)
    body = [t for t in parser.seen if t[0] not in ("html", "head", "meta", "title", "style", "body")]
    assert body[0][0] == "h1" and body[1] == ("p", {"class": "verdict level-low"})
    assert "@media print" in text and "break-inside:avoid" in text
    md = (rd / "report.md").read_text().splitlines()
    assert md[2].startswith("> **Risk level: LOW.") and any("At most" in line for line in md[:6])


def test_roc_auc_and_tpr_match_scikit_learn_and_torchmetrics():
    rng = np.random.default_rng(0)
    neg = np.round(rng.normal(0, 1, 300), 1)  # ties, as classifier probabilities have
    pos = np.round(rng.normal(1.2, 1, 200), 1)
    fpr, tpr, _ = roc_curve(neg, pos)
    labels = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    from torchmetrics.functional.classification import binary_auroc

    reference = float(binary_auroc(torch.tensor(np.r_[neg, pos]), torch.tensor(labels, dtype=torch.long)))
    assert auc(fpr, tpr) == pytest.approx(reference, abs=1e-6)
    sklearn = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed")
    f2, t2, _ = sklearn.roc_curve(labels, np.r_[neg, pos], drop_intermediate=False)
    assert np.allclose(fpr, f2) and np.allclose(tpr, t2)
    assert auc(fpr, tpr) == pytest.approx(sklearn.roc_auc_score(labels, np.r_[neg, pos]))
    assert tpr_at(fpr, tpr, 0.01, len(neg)) == pytest.approx(t2[f2 <= 0.01].max())
    assert tpr_at(fpr, tpr, 0.001, len(neg)) is None  # 1/300 is the finest FPR 300 negatives resolve
    t = threshold_for_fpr(neg, 0.01)
    assert (neg > t).mean() <= 0.01 and (neg >= t).mean() > 0.01 - 1e-12
    curve = detector_curve(neg, pos, threshold=0.5)
    assert curve["threshold"]["fpr"] == pytest.approx((neg > 0.5).mean())


def test_compare_tabulates_three_runs_and_says_when_detectors_differ(tmp_path, data_root, capsys):
    runs = [_fabricated_run(tmp_path, data_root, name, q, n, detector) for name, q, n, detector in
            (("a", 17, 256, "classifier"), ("b", 35, 1000, "classifier"), ("c", 0, 256, "nearest-neighbour"))]
    summary = compare_runs(runs, tmp_path / "cmp")
    levels = [r["level"] for r in summary["runs"]]
    assert levels == ["high", "elevated", "low"]
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "different detectors" in md and md.count("| breastmnist |") == 3
    assert (tmp_path / "cmp" / "q_M.png").is_file() and (tmp_path / "cmp" / "compare.json").is_file()
    with pytest.raises(DiffauditError, match="at least two"):
        compare_runs(runs[:1], tmp_path / "one")
    capsys.readouterr()
    refused(capsys, "compare", runs[0], tmp_path / "nowhere", "--out", tmp_path / "x", match="has no results.json")
    assert run(capsys, "compare", *runs, "--out", tmp_path / "cli")[0] == 0


def test_the_rate_net_of_a_control_model_has_a_conservative_interval():
    from diffaudit.audit.count.verdict import net_of_control

    net = net_of_control(81, 128, 70, 128)  # a noise-like DP model whose every sample fires, and its control
    assert net["rate"] == pytest.approx(11 / 128) and net["interval"][0] == 0.0
    lo, hi = clopper_pearson(81, 128, 0.975)
    assert net["interval"][1] == pytest.approx(hi - clopper_pearson(70, 128, 0.975)[0])
    rng = np.random.default_rng(1)  # coverage of p - p_c by simulation: at least 95%
    p, pc, n, covered = 0.08, 0.02, 400, 0
    for _ in range(400):
        r = net_of_control(int(rng.binomial(n, p)), n, int(rng.binomial(n, pc)), n)
        covered += r["interval"][0] <= p - pc <= r["interval"][1]
    assert covered / 400 >= 0.95
    results, metrics = _results(17, 256, 16)
    results["reproduction"]["false_positive_rate"] = {"control_samples": {"q": {"positives": 1, "n": 256, "rate": 1 / 256}}}
    v = verdict_section(results, metrics)
    assert v["net_of_control"]["control_rate"] == 1 / 256


def test_a_fid_that_could_not_be_computed_is_reported_as_such(tmp_path, data_root, capsys):
    rd = _fabricated_run(tmp_path, data_root, "nofid", 3, 256)
    results = read_json(rd / "results.json")
    results["fid"] = {"train": None, "test": None, "skipped": "the data has no class labels", "reliable": False,
                      "unreliable_reason": "the data has no class labels"}
    write_json(rd / "results.json", results)
    assert main(["report", "--run-dir", str(rd), "--write"]) == 0
    assert "FID not computed: the data has no class labels." in (rd / "report.md").read_text()
    other = _fabricated_run(tmp_path, data_root, "other", 17, 256)
    out = tmp_path / "cmp"
    compare_runs([rd, other], out)
    assert (out / "report.md").is_file()
