"""The whole audit end to end on a minuscule model: every results.json section, a report that parses, resuming
after a hard kill gives the same results.json, the dry run, the sweep, and bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import THREADS, TINY_MODEL

from diffaudit.audit.engine.pipeline import run_audit
from diffaudit.audit.engine.plan import format_plan, plan
from diffaudit.audit.count.sequential import REASONS
from diffaudit.audit.engine.stages import Context
from diffaudit.audit.engine.sweep import run_sweep, write_sweep_report
from diffaudit.cli import main
from diffaudit.config import (
    CLASSIFIER_PRESETS,
    STAGES,
    AuditConfig,
    CensusConfig,
    ExtractorConfig,
    FIDConfig,
    NLLConfig,
    PrepareConfig,
    SampleConfig,
    SequentialConfig,
    TPrimeConfig,
    TrainConfig,
    audit_from_dict,
    to_dict,
)
from diffaudit.errors import DiffauditError
from diffaudit.io import read_json

_tiny_clf = dict(arch="resnet10", max_epochs=1, patience=1, epoch_size=64, val_size=64, batch_size=32)
TINY = AuditConfig(
    prepare=PrepareConfig(dataset="breastmnist", n_train=8, seed=0),
    model=TINY_MODEL,
    train=TrainConfig(steps=30, batch_size=8, checkpoint_every=10, warmup_steps=5),
    c_p=dataclasses.replace(CLASSIFIER_PRESETS["cpu"]["c_p"], **_tiny_clf),
    c_id=dataclasses.replace(CLASSIFIER_PRESETS["cpu"]["c_id"], **_tiny_clf),
    sample=SampleConfig(n=24, steps=10, batch_size=12, shard_size=8),
    tprime=TPrimeConfig(M=4, resolution=0.25, steps=12),
    nll=NLLConfig(n_train=2, n_test=2, x_p_repeats=2, rtol=1e-2, atol=1e-2),
    fid=FIDConfig(extractor="domain", domain=ExtractorConfig(steps=3, features=16, batch_size=32)),
    census=CensusConfig(),
)
SECTIONS = ("reproduction", "t_prime", "nll_bpd", "fid", "census")


class _Balanced(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def _audit(run: Path, data_root: Path, cfg: AuditConfig = TINY, **kw) -> dict:
    return run_audit(Context(run=run, cfg=cfg, device="cpu", data_root=str(data_root), progress=False,
                             log=lambda m: None), **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root) -> Path:
    run = tmp_path_factory.mktemp("audit") / "run"
    _audit(run, data_root)
    return run


def test_a_finished_audit_has_every_section_and_a_report_that_parses(finished):
    results = read_json(finished / "results.json")
    for key in SECTIONS:
        assert key in results, key
    assert set(results["nll_bpd"]) >= {"x_p", "train", "test"}
    assert results["nll_bpd"]["train"]["n"] == 2 and results["nll_bpd"]["x_p"]["n"] == 2
    for name in ("x_p", "train", "test"):  # an untrained model: far from the data, but finite and positive
        assert 0 < results["nll_bpd"][name]["mean"] < 50
    assert set(results["fid"]) >= {"train", "test", "extractor"}
    assert results["fid"]["extractor"]["name"].startswith("domain-")
    assert results["fid"]["n_reference"] == 8
    parser = _Balanced()
    text = (finished / "report.html").read_text()
    parser.feed(text)
    assert parser.stack == [] and "table" in parser.tags and "img" in parser.tags
    md = (finished / "report.md").read_text()
    assert md.splitlines()[2].startswith("> **Risk level: ") and results["verdict"]["level"] in md.splitlines()[2].lower()
    assert set(results["provenance"]) >= {"diffaudit", "created", "model", "data", "config_digest", "versions"}
    assert f"{results['reproduction']['q']} of 24 samples" in md or "No reproduction of x_p was found in 24" in md
    assert "Configuration" in md and "data:image/png;base64" in text
    census = results["census"]  # the census stage beside the canary's count, on the same samples
    assert census["n_samples"] == 24 and census["verdict"]["level"] in ("high", "low")
    assert "Census: the training images the model gives back" in md
    log = (finished / "audit" / "audit.log").read_text()
    assert all(f"[{s}] finished" in log for s in STAGES)


def test_rerunning_a_finished_audit_skips_every_stage(finished, data_root):
    before = {s: (finished / "audit" / "stages" / f"{s}.json").stat().st_mtime_ns for s in STAGES}
    messages = []
    run_audit(Context(run=finished, cfg=TINY, device="cpu", data_root=str(data_root), progress=False,
                      log=messages.append))
    assert all(f"[{s}] done earlier; kept" in messages for s in STAGES)
    assert before == {s: (finished / "audit" / "stages" / f"{s}.json").stat().st_mtime_ns for s in STAGES}


def test_a_sequential_audit_counts_until_decided_and_keeps_the_other_stages(finished, data_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "audit.json").unlink()  # a run directory holds one audit config; its finished stages are kept by key
    cfg = dataclasses.replace(TINY, sequential=SequentialConfig(target_rate=0.5))
    messages = []
    run_audit(Context(run=run, cfg=cfg, device="cpu", data_root=str(data_root), progress=False, log=messages.append))
    assert all(f"[{s}] done earlier; kept" in messages for s in ("train", "classifiers", "sample", "nll", "fid"))
    assert "[count] done earlier; kept" not in messages
    rep = read_json(run / "results.json")["reproduction"]
    seq = read_json(run / rep["samples"] / "sequential.json")
    assert rep["design"] == "sequential" and rep["n_samples"] == seq["n_samples"] <= 24
    assert seq["reason"] in REASONS and seq["shard_size"] == 8 and seq["max_n"] == 24
    assert "confidence sequence" in (run / "report.md").read_text()


@pytest.mark.slow
def test_an_audit_killed_mid_run_resumes_to_the_same_results(finished, data_root, tmp_path):
    run = tmp_path / "killed"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(to_dict(TINY)))
    # the in-process audits run on 2 threads (conftest); CPU kernels round by thread count, so the killed one does too
    env = {**os.environ, "DIFFAUDIT_DATA": str(data_root), "OMP_NUM_THREADS": str(THREADS)}
    proc = subprocess.Popen([sys.executable, "-m", "diffaudit", "audit", "--run-dir", str(run), "--config", str(config),
                             "--device", "cpu", "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run / "audit" / "stages" / "classifiers.json"  # kill while sampling (or a little later)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (run / "audit" / "stages" / "report.json").exists()
    _audit(run, data_root)
    resumed, whole = read_json(run / "results.json"), read_json(finished / "results.json")
    for r in (resumed, whole):  # the one value that depends on when the report was written
        del r["provenance"]["created"]
    assert resumed == whole


def test_dry_run_lists_every_stage_with_estimates(finished, data_root, capsys):
    ctx = Context(run=finished, cfg=TINY, device="cpu", data_root=str(data_root))
    rows = plan(ctx)
    assert [r["stage"] for r in rows] == list(STAGES) and all(r["done"] for r in rows)
    assert all(r["seconds"] >= 0 and r["bytes"] > 0 for r in rows)
    # the estimates follow the config: twice the training steps and samples, about twice the time and disk
    bigger = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, steps=60),
                                 sample=dataclasses.replace(TINY.sample, n=48))
    more = {r["stage"]: r for r in plan(Context(run=finished.parent / "new", cfg=bigger, device="cpu"))}
    for stage, row in ((r["stage"], r) for r in rows if r["stage"] in ("train", "sample")):
        assert more[stage]["seconds"] / row["seconds"] == pytest.approx(2, rel=0.6), stage  # a speed probe each time
    assert more["sample"]["bytes"] == 2 * next(r["bytes"] for r in rows if r["stage"] == "sample")
    assert not any(r["done"] for r in more.values())
    text = format_plan(rows, ctx)
    assert "total to run" in text and "free disk" in text
    assert [r["stage"] for r in rows if r["at_most"]] == ["classifiers"]  # it stops at its criterion: a cap
    fresh = format_plan([{**r, "done": False} for r in rows], ctx)
    assert re.search(r"classifiers +to run +<= ", fresh) and re.search(r"train +to run +\d", fresh)
    assert re.search(r"total to run +<= ", fresh) and "<=: a cap" in fresh


def test_another_config_in_the_same_run_dir_is_refused(finished, data_root):
    other = dataclasses.replace(TINY, sample=dataclasses.replace(TINY.sample, n=48))
    with pytest.raises(DiffauditError, match=r"other settings \(sample.n: 24 -> 48\)"):
        _audit(finished, data_root, other)


def test_the_config_round_trips_through_json():
    assert audit_from_dict(json.loads(json.dumps(to_dict(TINY)))) == TINY
    with pytest.raises(DiffauditError, match="no field"):
        audit_from_dict({**json.loads(json.dumps(to_dict(TINY))), "steps": 3})


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["audit", "--run-dir", str(tmp_path / "r"), "--config", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.json" in err[0]
    assert main(["report", "--run-dir", str(tmp_path / "nothing")]) == 2
    assert "has no results.json" in capsys.readouterr().err
    assert main(["audit", "--run-dir", str(tmp_path / "r"), "--preset", "huge"]) == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_a_sweep_tabulates_its_cells(finished, tmp_path):
    """The combined tables from fabricated cells: the finished audit's results with other N_D, counts and FIDs."""
    out, cells = tmp_path / "sweep", []
    for n_train, q, fid in ((8, 3, 11.0), (16, 1, 22.0), (32, 0, 33.0)):
        cell = out / f"breastmnist-n{n_train}"
        shutil.copytree(finished, cell)
        r = read_json(cell / "results.json")
        r["n_train"], r["reproduction"]["q"], r["fid"]["train"] = n_train, q, fid
        (cell / "results.json").write_text(json.dumps(r))
        cells.append(cell)
    summary = write_sweep_report(out, cells)
    assert summary["cells"] == ["breastmnist-n8", "breastmnist-n16", "breastmnist-n32"]
    assert [row[1] for row in summary["table1"]] == [8, 16, 32] and [row[5] for row in summary["table1"]] == [3, 1, 0]
    assert [row[5].split(" [")[0] for row in summary["table2"]] == ["11", "22", "33"]
    md = (out / "report.md").read_text()
    assert "Table 1" in md and "Table 2" in md and (out / "q_M.png").exists()
    assert read_json(out / "sweep.json")["table1"] == json.loads(json.dumps(summary["table1"]))


@pytest.mark.slow
def test_a_sweep_runs_its_cells_and_shares_the_fid_extractor(finished, data_root, tmp_path):
    out = tmp_path / "sweep"
    # the cell with N_D = 8 is the finished audit: copy it in, so the sweep resumes it and runs one new cell
    shutil.copytree(finished, out / "breastmnist-n8")
    summary = run_sweep(out, TINY, datasets=["breastmnist"], n_trains=[8, 6], device="cpu", data_root=str(data_root),
                        progress=False, log=lambda m: None)
    assert summary["cells"] == ["breastmnist-n8", "breastmnist-n6"]
    assert (out / "extractors" / "breastmnist" / "model.json").exists()
    for name in summary["cells"]:  # the copied cell's FID was redone with the shared extractor
        assert read_json(out / name / "results.json")["fid"]["extractor"]["folder"].endswith("extractors/breastmnist")


def test_the_verdict_states_the_count_the_expectation_and_the_interval():
    from diffaudit.audit.report.render import detector_warning, verdict
    from diffaudit.audit.count.stats import reproduction_test

    rep = {"q": 9, "n_samples": 512, **reproduction_test(9, 512, 32)}
    text = verdict({"n_train": 32, "reproduction": rep})
    assert text.startswith("The model reproduces the identifiable training image x_p: 9 of 512 samples")
    assert "expected 16 under full memorisation" in text and "p = 0.041" in text and "[0.00807, 0.0331]" in text
    none = verdict({"n_train": 32, "reproduction": {"q": 0, "n_samples": 512, **reproduction_test(0, 512, 32)}})
    assert none.startswith("No reproduction of x_p was found in 512 samples") and "below 0.00583" in none
    copies = lambda both: {"true_positive_rate": {"copies_of_x_p": {"0": {"q": {"positives": both, "n": 200,  # noqa: E731
                                                                                  "rate": both / 200}}}}}
    assert detector_warning({}, copies(200)) is None
    assert "only 0 of 200 copies" in detector_warning({}, copies(0))
    from diffaudit.audit.report.render import excess_warning

    assert excess_warning({"n_train": 32, "reproduction": rep}) is None  # 9 of 512: below full memorisation
    excess = {"q": 81, "n_samples": 128, **reproduction_test(81, 128, 16)}  # a noise model whose every sample fires
    assert "significantly more than full memorisation" in excess_warning({"n_train": 16, "reproduction": excess})


@pytest.mark.slow
def test_a_class_conditional_dp_audit_has_the_formal_bound_and_the_utility_test(tmp_path, data_root):
    from diffaudit.config import DPConfig
    from diffaudit.data.prepare import training_labels
    from diffaudit.generate import iter_labelled_shards

    cfg = dataclasses.replace(TINY, dp=DPConfig(noise_multiplier=2.0, physical_batch_size=8),
                              model=dataclasses.replace(TINY.model, num_classes=2),
                              tprime=dataclasses.replace(TINY.tprime, resolution=0.5),
                              nll=dataclasses.replace(TINY.nll, n_train=1, n_test=1, x_p_repeats=1), control=True)
    results = _audit(tmp_path / "dp", data_root, cfg)
    # the control model: trained the same way (DP) on the control set, its samples counted as false positives
    control = read_json(tmp_path / "dp" / "control" / "train" / "model.json")
    assert control["dp"]["noise_multiplier"] == 2.0 and read_json(tmp_path / "dp" / "control" / "manifest.json")["fingerprint"] is None
    counted = results["reproduction"]["false_positive_rate"]["control_samples"]["q"]
    assert counted["n"] == 24 and "control_samples" in results["privacy"]["kappa_note"]
    assert results["verdict"]["net_of_control"]["control_rate"] == counted["rate"]
    roc = results["reproduction"]["roc_control_samples"]
    assert set(roc) == {"c_p", "c_id", "q"} and roc["q"]["n_negatives"] == 24 and 0 <= roc["q"]["auc"] <= 1
    assert "control samples" in (tmp_path / "dp" / "report.md").read_text()
    priv = results["privacy"]
    assert priv["steps"] == TINY.train.steps and priv["noise_multiplier"] == 2.0
    assert priv["kappa"] < priv["bound_dpsgd"] <= 1 and set(priv["epsilon"]) == {"prv", "rdp", "gdp"}
    assert priv["empirical_rate_ci95"] == results["reproduction"]["rate_ci95"]
    md = (tmp_path / "dp" / "report.md").read_text()
    assert "formal upper bound, DP-SGD trade-off" in md and "audit: measured rate with 95% interval" in md
    manifest = read_json(tmp_path / "dp" / "manifest.json")
    y = training_labels(manifest, data_root=data_root)
    for indices, images, labels in iter_labelled_shards(tmp_path / "dp" / "samples" / "em10-seed0"):
        # the training set's classes: image i has the class of training image i mod N_D, from i alone
        assert np.array_equal(labels, y[indices % len(y)]) and len(images) == len(labels)
    for indices, images, labels in iter_labelled_shards(tmp_path / "dp" / "samples" / "em10-seed0-x_p"):
        assert (labels == y[manifest["fingerprint"]["position"]]).all()  # x_p's own class, every time
    own = results["reproduction_x_p"]
    share = int((y == y[manifest["fingerprint"]["position"]]).sum())
    assert own["conditions"] == {"mode": "x_p", "matching": share, "x_p": {"class": int(y[manifest["fingerprint"]["position"]])}}
    assert own["expected_q"] == pytest.approx(own["n_samples"] / share)
    assert "Sampling with x_p's own attributes" in md
    util = results["utility"]
    assert util["classes"] == 2 and util["synthetic"]["n_train"] == 24 and util["real"]["n_train"] == 8
    for name in ("synthetic", "real"):
        assert 0 <= util[name]["accuracy"] <= 1 and 0 <= util[name]["auroc"] <= 1 and util[name]["n_test"] == 156
    assert "Utility of the synthetic data" in md


def test_a_class_conditional_model_needs_valid_labels(tmp_path):
    from diffaudit.diffusion.sde import SubVPSDE
    from diffaudit.training.loop import train

    images = np.zeros((4, 1, 28, 28), np.uint8)
    cfg = dataclasses.replace(TINY_MODEL, num_classes=2)
    for labels, match in ((None, "needs the training images' classes or attributes"), (np.array([0, 1, 2, 0]), r"in \[0, 2\)"),
                          (np.array([0, 1]), "need 4 class labels")):
        with pytest.raises(DiffauditError, match=match):
            train(tmp_path / "t", images, model_cfg=cfg, train_cfg=TrainConfig(steps=1, batch_size=2), sde=SubVPSDE(),
                  labels=labels, progress=False)


@pytest.mark.slow
def test_a_privacy_sweep_tabulates_epsilon_against_pretraining(tmp_path, data_root):
    from diffaudit.audit.engine.sweep import run_privacy_sweep

    small = dict(epoch_size=32, val_size=32, batch_size=16)  # the wiring is tested here, not the figures
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, num_classes=2),
                              train=dataclasses.replace(TINY.train, steps=12),
                              c_p=dataclasses.replace(TINY.c_p, **small), c_id=dataclasses.replace(TINY.c_id, **small),
                              sample=dataclasses.replace(TINY.sample, n=16, steps=6),
                              tprime=dataclasses.replace(TINY.tprime, resolution=1.0, M=2, steps=6),
                              nll=dataclasses.replace(TINY.nll, n_train=1, n_test=1, x_p_repeats=1))
    out = tmp_path / "eps"
    summary = run_privacy_sweep(out, cfg, epsilons=[50.0], pretrain=[False, True], public_dataset="breastmnist",
                                public_split="val", device="cpu", data_root=str(data_root), progress=False,
                                log=lambda m: None)
    assert summary["cells"] == ["eps50-scratch", "eps50-pretrained"]
    assert (out / "public" / "train" / "model.json").exists()
    assert read_json(out / "eps50-pretrained" / "train" / "model.json")["dp"]["pretrained"].endswith("public/train")
    assert read_json(out / "eps50-scratch" / "train" / "model.json")["dp"]["pretrained"] is None
    eps = summary["headers"].index("ε (PRV)")
    for row in summary["rows"]:
        assert row[0] == "50" and row[eps] != "–" and row[4] != "–"  # epsilon and utility filled in
        assert float(row[eps]) <= 50.5
        assert row[summary["headers"].index("ε lower (canaries)")] == "–"  # one canary: no one-run bound
    assert "formal bound" in (out / "report.md").read_text()
    with pytest.raises(DiffauditError, match="must differ"):
        run_privacy_sweep(out, cfg, epsilons=[1.0], pretrain=[True], public_dataset="breastmnist", public_split="train")
    big_batch = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=16))
    with pytest.raises(DiffauditError, match="exceeds N_D = 8"):  # refused before any pretraining
        run_privacy_sweep(tmp_path / "other", big_batch, epsilons=[1.0], pretrain=[True], public_dataset="breastmnist",
                          public_split="val")
    assert not (tmp_path / "other").exists()
