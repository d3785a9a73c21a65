"""The control model of a model trained elsewhere: ``export --control`` writes the control set, ``audit --model M
--control-model C`` samples C with the audit's settings and its samples become the verdict's negatives."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from diffusers import DDPMScheduler
from test_audit import TINY
from test_external import save_pipeline, tiny_unet
from test_robustness import refused, run

from diffaudit.audit.report.render import current_verdict
from diffaudit.config import SampleConfig, to_dict
from diffaudit.data.prepare import build_training_set, load_manifest
from diffaudit.io import read_json


def test_export_control_writes_the_control_set_and_the_control_model_gives_the_negatives(tmp_path, data_root, capsys):
    rd = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", rd, "--n-train", 8, "--data-root", data_root)[0] == 0
    code, err = run(capsys, "export", "--run-dir", rd, "--control", "--format", "npz", "--out", tmp_path / "control-data",
                    "--data-root", data_root)
    assert code == 0, err
    audited, control = load_manifest(rd), load_manifest(rd / "control")
    assert control["fingerprint"] is None and control["n_train"] == audited["n_train"] == 8
    assert read_json(tmp_path / "control-data" / "export.json")["manifest_digest"] == control["digest"]
    with np.load(tmp_path / "control-data" / "train.npz") as f:  # the control set as exported: x_i, no SAF
        assert np.array_equal(f["train_images"], build_training_set(control, data_root=data_root)[:, 0])

    model = save_pipeline(tmp_path / "model", tiny_unet(), DDPMScheduler(num_train_timesteps=50))
    control_model = save_pipeline(tmp_path / "control-model", tiny_unet(), DDPMScheduler(num_train_timesteps=50))
    cfg = dataclasses.replace(TINY, detector="nn", sample=SampleConfig(n=12, steps=5, batch_size=12, shard_size=12))
    (tmp_path / "audit.json").write_text(json.dumps(to_dict(cfg)))
    common = ["--run-dir", rd, "--config", tmp_path / "audit.json", "--model", model, "--sampling-steps", 5, "--quiet",
              "--data-root", data_root]
    refused(capsys, "audit", *common, "--control", "--dry-run", match="export --control")
    code, err = run(capsys, "audit", *common, "--control-model", control_model, "--stop-after", "count")
    assert code == 0, err
    assert read_json(rd / "control" / "train" / "external.json")["path"] == str(control_model.resolve())
    fpr = read_json(rd / "results.json")["reproduction"]["false_positive_rate"]["control_samples"]
    assert fpr["q"]["n"] == 12 and fpr["samples"] == "control/samples/ddpm5-seed0"
    verdict = current_verdict(rd)[1]
    assert verdict["decision"]["negatives"] == {"source": "control_samples", "positives": fpr["q"]["positives"], "n": 12}
