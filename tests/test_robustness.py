"""Hostile and first-run input: the data is fetched when asked, every bad input is refused up front with one line,
nothing runs from a weights file, and one process works in a run directory at a time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SYNTHETIC, TINY_MODEL, write_synthetic_medmnist

from diffaudit.audit.engine.sweep import sweep_cells
from diffaudit.audit.tprime.search import Evaluation, search
from diffaudit.audit.tprime.stage import posthoc
from diffaudit.cli import _audit_config, build_parser, main
from diffaudit.config import (
    AuditConfig,
    PrepareConfig,
    TrainConfig,
    audit_from_dict,
    to_dict,
)
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.errors import DiffauditError
from diffaudit.runlock import run_lock


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def refused(capsys, *argv, match: str) -> str:
    """The command exits 2 with one 'error:' line that contains ``match``."""
    code, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "error:" in lines[0] and match in lines[0], err
    return lines[0]


@pytest.fixture
def prepared(tmp_path, capsys, data_root) -> Path:
    rd = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", rd, "--n-train", 8, "--data-root", data_root)[0] == 0
    return rd


# ---- 1. first run: the data is downloaded when asked ---------------------------------------------------------
@pytest.fixture
def fake_zenodo(monkeypatch):
    """medmnist's downloader with the network replaced by a synthetic file: everything of diffaudit's own path runs."""
    import medmnist.dataset

    def download(self):
        spec = SYNTHETIC.get(self.flag, SYNTHETIC["breastmnist"])
        write_synthetic_medmnist(Path(self.root) / f"{self.flag}.npz", **spec)

    monkeypatch.setattr(medmnist.dataset.MedMNIST, "download", download)


def test_audit_and_sweep_download_the_missing_data_and_say_where(tmp_path, capsys, fake_zenodo):
    root = tmp_path / "fresh" / "medmnist"
    code, err = run(capsys, "audit", "--run-dir", tmp_path / "a", "--data-root", root, "--download",
                    "--stop-after", "prepare", "--quiet")
    assert code == 0, err
    assert (root / "breastmnist.npz").is_file() and f"downloaded breastmnist to {root / 'breastmnist.npz'}" in err
    assert (tmp_path / "a" / "manifest.json").is_file()
    # the sweep accepts --download too: it fetches what is missing (a file already there is not fetched again)
    # while it checks its cells, before it makes any (here N_D = 100 does not fit the small RetinaMNIST stand-in)
    code, err = run(capsys, "sweep", "--out", tmp_path / "s", "--data-root", root, "--download", "--n-train", "100",
                    "--datasets", "breastmnist,retinamnist")
    assert code == 2 and "--n-train 100 does not fit retinamnist" in err, err
    assert "downloaded retinamnist" in err and "downloaded breastmnist" not in err
    assert (root / "retinamnist.npz").is_file() and not (tmp_path / "s").exists()


def test_offline_the_error_names_the_flag_and_the_folder(tmp_path, capsys, monkeypatch):
    import torchvision.datasets.utils

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    root = tmp_path / "data"
    line = refused(capsys, "prepare", "--run-dir", tmp_path / "r", "--data-root", root, match="not found")
    assert "--download" in line and str(root) in line
    code, err = run(capsys, "audit", "--run-dir", tmp_path / "r", "--data-root", root, "--download")
    said, line = err.strip().splitlines()  # where it tried, then the one error line
    assert code == 2 and f"downloading it into {root}" in said
    assert "error: download of breastmnist.npz failed" in line and f"into {root} and run again" in line
    assert not (tmp_path / "r").exists()


# ---- 4, 5. the whole config is checked up front, one path for flags and files ---------------------------------
@pytest.mark.parametrize("argv, match", [
    (["--M", "0"], "TPrimeConfig.M must be >= 1"),
    (["--dp-epsilon", "nan"], "DPConfig.epsilon must be a positive finite number"),
    (["--n-samples", "0"], "SampleConfig.n must be >= 1"),
    (["--n-train", "1"], "PrepareConfig.n_train must be >= 2"),
])
def test_bad_flags_are_refused_under_dry_run(tmp_path, capsys, argv, match):
    refused(capsys, "audit", "--run-dir", tmp_path / "r", "--dry-run", *argv, match=match)


@pytest.mark.parametrize("section, match", [
    ({"train": {"lr": "0.002"}}, "TrainConfig.lr must be a number, got '0.002'"),
    ({"sample": {"n": "256"}}, "SampleConfig.n must be an integer, got '256'"),
    ({"sample": {"n": True}}, "SampleConfig.n must be an integer"),
    ({"train": {"lr": -1}}, "TrainConfig.lr must be a positive finite number"),
    ({"tprime": {"M": 0}}, "TPrimeConfig.M must be >= 1"),
    ({"model": {"block_out_channels": [8, 12]}}, "ModelConfig.attention_levels must be one entry per level"),
    ({"sample": {"sampler": "ddim"}}, "unknown sampler 'ddim'"),
    ({"c_p": {"arch": "vgg"}}, "c_p.arch 'vgg' is unknown"),
    ({"train": {"nope": 1}}, "has no field(s) ['nope']"),
    ({"train": 3}, "the audit config.train must be a JSON object"),
])
def test_a_bad_config_file_is_refused_before_any_work(tmp_path, capsys, section, match):
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(section))
    refused(capsys, "audit", "--run-dir", tmp_path / "r", "--config", path, "--dry-run", match=match)
    assert not (tmp_path / "r").exists()


def test_the_config_file_and_the_flags_are_one_validation_path():
    cfg = AuditConfig()
    assert audit_from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg
    with pytest.raises(DiffauditError, match="TrainConfig.ema_decay must be in"):
        TrainConfig(ema_decay=1.5)
    with pytest.raises(DiffauditError, match="TrainConfig.ema_decay must be in"):
        audit_from_dict({"train": {"ema_decay": 1.5}})


def test_override_flags_apply_on_top_of_a_config_file(tmp_path, capsys):
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(to_dict(AuditConfig())))
    weights = tmp_path / "w.pth"
    argv = ["audit", "--run-dir", "r", "--config", str(path), "--n-samples", "32", "--seed", "7", "--steps", "11",
            "--M", "3", "--dataset", "retinamnist", "--n-train", "9", "--fid-extractor", "domain",
            "--inception-weights", str(weights)]
    cfg = _audit_config(build_parser().parse_args(argv))
    assert (cfg.sample.n, cfg.prepare.seed, cfg.train.steps, cfg.tprime.M) == (32, 7, 11, 3)
    assert (cfg.prepare.dataset, cfg.prepare.n_train, cfg.fid.extractor) == ("retinamnist", 9, "domain")
    assert cfg.fid.inception_weights == str(weights)
    assert cfg.model == AuditConfig().model  # what no flag touched comes from the file
    refused(capsys, "audit", "--run-dir", tmp_path / "r", "--config", path, "--preset", "cpu", "--dry-run",
            match="give --config or --preset, not both")
    refused(capsys, "audit", "--run-dir", tmp_path / "r", "--config", tmp_path / "missing.json", "--dry-run",
            match="no audit config at")


# ---- 6, 7, 8. one line instead of a traceback, nothing left behind ---------------------------------------------
def test_a_file_where_a_folder_belongs(tmp_path, capsys, data_root):
    afile = tmp_path / "afile"
    afile.write_text("")
    refused(capsys, "prepare", "--run-dir", afile, "--data-root", data_root, match="is a file, not a folder")
    refused(capsys, "audit", "--run-dir", afile / "x", "--data-root", data_root, match="is a file, not a folder")
    refused(capsys, "sweep", "--out", afile, "--data-root", data_root, match="--out")
    assert afile.read_text() == ""


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["fingerprint"].update(index=m["fingerprint"]["index"] + 1), "no longer matches its digest"),
    (lambda m: (m["fingerprint"].update(position=99), m.pop("digest")), "position 99 is outside"),
    (lambda m: (m.update(indices=m["indices"][:3]), m.pop("digest")), "3 indices for N_D = 8"),
    (lambda m: (m["indices"].__setitem__(0, 100_000), m.pop("digest")), "distinct images of the split"),
    (lambda m: (m["fingerprint"].update(index=m["indices"][0]), m.pop("digest")), "is not image"),
    (lambda m: (m.update(indices="all"), m.pop("digest")), "must be integers"),
])
def test_a_tampered_manifest_is_refused_when_read(prepared, capsys, edit, match):
    path = prepared / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    line = refused(capsys, "train", "--run-dir", prepared, "--steps", 2, match=match)
    assert "manifest.json is damaged or was edited" in line


def test_values_that_used_to_pass_or_crash(tmp_path, capsys, data_root):
    refused(capsys, "prepare", "--run-dir", tmp_path / "r", "--n-train", 1, "--data-root", data_root,
            match="n_train must be >= 2")
    refused(capsys, "train", "--run-dir", tmp_path / "r", "--ema-decay", 1.5, match="ema_decay must be in [0, 1)")
    refused(capsys, "bound", "--kappa", 0.01, "--mu", "nan", match="mu must be a non-negative finite number")
    refused(capsys, "bound", "--kappa", 0.01, "--epsilon", "inf", match="epsilon must be a positive finite number")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, match", [
    (["--n-train", "0"], "--n-train 0 does not fit breastmnist"),
    (["--n-train", "8,600"], "--n-train 600 does not fit breastmnist"),
    (["--datasets", "nosuch"], "'nosuch' is not a MedMNIST dataset"),
    (["--datasets", "breastmnist,nosuch"], "'nosuch' is not a MedMNIST dataset"),
])
def test_a_sweep_checks_every_cell_before_making_any(tmp_path, capsys, data_root, argv, match):
    refused(capsys, "sweep", "--out", tmp_path / "s", "--data-root", data_root, *argv, match=match)
    assert not (tmp_path / "s").exists()


def test_artefact_names_are_one_folder_inside_the_run(prepared, capsys):
    for name in ("../../escape", "a/b", "..", "/abs", "", ".hidden"):
        refused(capsys, "sample", "--run-dir", prepared, "--name", name, "--n", 2, match="must be one folder name")
    assert not (prepared.parent.parent / "escape").exists() and not (prepared / "samples").exists()


# ---- 9. no code runs from a weights file ----------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``os.system``: a planted "weights" file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["env", "hub"])
def test_a_planted_inception_file_never_runs(tmp_path, monkeypatch, where):
    from diffaudit.audit.quality.fid import Frechet, find_inception_weights
    from diffaudit.config import INCEPTION_FILE

    marker = tmp_path / "payload-ran"
    hub = tmp_path / "hub"
    planted = tmp_path / "planted.pth" if where == "env" else hub / "checkpoints" / INCEPTION_FILE
    planted.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": _Payload(marker)}, planted)
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(hub))
    if where == "env":
        monkeypatch.setenv("DIFFAUDIT_INCEPTION", str(planted))
    else:
        monkeypatch.delenv("DIFFAUDIT_INCEPTION", raising=False)
    weights = find_inception_weights()  # what --fid-extractor auto finds
    assert weights == planted
    with pytest.raises(DiffauditError, match="do not load as plain tensors"):
        Frechet("inception", weights=weights)
    assert not marker.exists()


def test_checked_inception_weights_reach_torch_fidelity(tmp_path, monkeypatch):
    """A tensors-only file with the right keys loads (random weights stand in for the real file here)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from diffaudit.audit.quality.fid import inception_extractor

    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: {})
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    state = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], "unused").state_dict()
    monkeypatch.undo()
    good = tmp_path / "good.pth"
    torch.save(state, good)
    net = inception_extractor(good)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    from diffaudit.audit.quality.fid import Frechet

    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (3, 1, 28, 28), dtype=np.uint8) for _ in range(2))
    fid = Frechet("inception", weights=good).distance([a], b)  # grey images repeated to RGB, resized to 299
    assert np.isfinite(fid["value"]) and fid["n_generated"] == fid["n_reference"] == 3
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(DiffauditError, match="not the Inception-v3 weights"):
        inception_extractor(tmp_path / "other.pth")


# ---- 10. one process per run directory ------------------------------------------------------------------------
def _python(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def test_a_second_process_is_refused_at_once_with_the_holders_pid(prepared, data_root):
    with run_lock(prepared):
        t0 = time.perf_counter()
        other = subprocess.run([sys.executable, "-m", "diffaudit", "train", "--run-dir", str(prepared), "--steps", "2",
                                "--data-root", str(data_root)], capture_output=True, text=True, timeout=120)
        assert other.returncode == 2 and f"in use by another diffaudit process (PID {os.getpid()})" in other.stderr
        assert time.perf_counter() - t0 < 60 and not (prepared / "train").exists()
        # commands that only read need no lock: report gets as far as finding no results
        report = subprocess.run([sys.executable, "-m", "diffaudit", "report", "--run-dir", str(prepared)],
                                capture_output=True, text=True, timeout=120)
        assert report.returncode == 2 and "has no results.json" in report.stderr, report.stderr
    assert not (prepared / ".lock").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = _python(f"from diffaudit.runlock import run_lock\nwith run_lock({str(run_dir)!r}):\n"
                     "    print('locked', flush=True)\n    import time; time.sleep(120)")
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DiffauditError, match=f"PID {holder.pid}"):
            with run_lock(run_dir):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (run_dir / ".lock").exists()  # the PID file stays behind, but it is not the lock
    with run_lock(run_dir):
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())


def test_the_lock_is_reentrant_and_removes_a_folder_it_made_for_nothing(tmp_path):
    with run_lock(tmp_path / "a") as a:
        with run_lock(a):
            pass
        assert a.is_dir()
    assert not (tmp_path / "a").exists()


# ---- 11. known bugs -------------------------------------------------------------------------------------------
def test_a_class_conditional_sweep_conditions_each_dataset_on_its_own_classes(data_root):
    rgb = AuditConfig(model=TINY_MODEL, prepare=PrepareConfig(channels=3))  # grey images repeated to RGB, as the paper
    cells = sweep_cells(rgb, datasets=["breastmnist", "retinamnist"], n_trains=[8],
                        class_conditional=True, data_root=str(data_root), log=lambda m: None)
    assert {name: cfg.model.num_classes for name, cfg in cells} == {"breastmnist-n8": 2, "retinamnist-n8": 5}
    with pytest.raises(DiffauditError, match="retinamnist is RGB; prepare.channels must be 3"):
        sweep_cells(AuditConfig(model=TINY_MODEL), datasets=["breastmnist", "retinamnist"], n_trains=[8],
                    data_root=str(data_root), log=lambda m: None)


@pytest.mark.parametrize("grid", [[0.5, 0.25, 0.75], [0.25, 0.25, 0.5], [], [0.0, 0.5], [0.5, 1.5]])
def test_search_and_posthoc_refuse_a_grid_the_fast_search_would_misread(grid):
    if max(grid, default=0) <= 1:  # search() knows no SDE, hence no T; posthoc checks the grid against the SDE's
        with pytest.raises(DiffauditError, match="grid"):
            search(lambda t: Evaluation(t, 1, 4, 1), grid, p0=0.1)
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(DiffauditError, match="grid"):
        posthoc(ContinuousModel(lambda x, t: torch.zeros_like(x), SubVPSDE(), image_shape=(1, 8, 8)), images, [0],
                grid=grid, progress=False)


def test_dp_training_refuses_a_data_parallel_launch(tmp_path, monkeypatch):
    from diffaudit.config import DPConfig
    from diffaudit.privacy.dpsgd import train_dp

    monkeypatch.setenv("WORLD_SIZE", "2")
    images = np.zeros((8, 1, 28, 28), np.uint8)
    with pytest.raises(DiffauditError, match="DP-SGD training runs in one process"):
        train_dp(tmp_path / "train", images, model_cfg=TINY_MODEL, train_cfg=TrainConfig(batch_size=4),
                 dp=DPConfig(epsilon=10.0), sde=SubVPSDE(), device="cpu", progress=False)
    assert not (tmp_path / "train").exists()


# ---- 12. optional dependencies ----------------------------------------------------------------------------------
@pytest.mark.parametrize("module, extra", [("opacus", "dp"), ("torch_fidelity", "fid"), ("accelerate", "multi-gpu")])
def test_a_missing_extra_is_named_with_its_install_command(monkeypatch, module, extra):
    import importlib.util

    from diffaudit.extras import require

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(DiffauditError, match=rf"pip install 'diffaudit\[{extra}\]'"):
        require(module, "this stage")


def test_a_dp_audit_without_opacus_is_refused_up_front(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "opacus" else real(name, *a))
    refused(capsys, "audit", "--run-dir", tmp_path / "r", "--dp-epsilon", 10, "--n-train", 64, "--dry-run",
            match="diffaudit[dp]")


def test_the_package_declares_a_range_and_a_license():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        pytest.skip("checks the source checkout's pyproject.toml; these tests run from a copy")
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    torch_spec = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert "==" not in torch_spec and ">=" in torch_spec
    assert not any(d.split(">")[0].split("=")[0] in ("opacus", "torch-fidelity", "accelerate")
                   for d in project["dependencies"])
    assert set(project["optional-dependencies"]) >= {"dp", "fid", "multi-gpu", "all"}
    assert "Apache License" in (root / "LICENSE").read_text()
    assert shutil.which("make") is None or "torch==2.14.1" in (root / "Makefile").read_text()


def test_the_data_and_the_tprime_options_are_checked_before_any_work(tmp_path, capsys, data_root, prepared):
    refused(capsys, "audit", "--run-dir", tmp_path / "r", "--dry-run", "--data-root", data_root, "--n-train", 600,
            match="--n-train 600 does not fit breastmnist, whose train split has 546 images")
    refused(capsys, "audit", "--run-dir", tmp_path / "r", "--dry-run", "--data-root", data_root, "--dataset", "nosuch",
            match="'nosuch' is not a MedMNIST dataset")
    refused(capsys, "prepare", "--run-dir", tmp_path / "r", "--seed", -1, "--data-root", data_root,
            match="PrepareConfig.seed must be >= 0")
    # the model does not exist yet: the options are refused first
    refused(capsys, "tprime", "--run-dir", prepared, "--M", 0, match="TPrimeConfig.M must be >= 1")
    refused(capsys, "tprime", "--run-dir", prepared, "--chance", 7, match="TPrimeConfig.chance must be full, measured")
    refused(capsys, "sweep", "--out", tmp_path / "s", "--dp-epsilons", "-1", match="positive numbers or inf, got '-1'")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()
