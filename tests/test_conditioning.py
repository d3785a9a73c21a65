"""Score models conditioned on a patient's attributes (a class and continuous covariates): the exact conditional
memoriser returns the images of the condition it is given, the attribute embedding trains and reloads, sampling
draws image i's condition from a table (the training set's, or x_p's) so image i is still a function of (seed, i),
and the audit counts x_p's copies both ways, side by side, in results.json and the report, checked by verify."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffaudit.config import ModelConfig, TrainConfig
from diffaudit.data.conditions import condition_table, encode, encoding, matching
from diffaudit.diffusion.conditioning import check_conditions, conditioned_memoriser_score
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.diffusion.networks import build_network
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.errors import DiffauditError
from diffaudit.images import to_model_space
from diffaudit.training.loop import load_score_model, train


def _images(k: int, side: int = 8, seed: int = 0) -> np.ndarray:
    """K distinct uint8 images [K, 1, side, side]: a bright square at a different place in each."""
    rng = np.random.default_rng(seed)
    out = np.full((k, 1, side, side), 20, dtype=np.uint8)
    for i in range(k):
        y, x = rng.integers(0, side - 3, 2)
        out[i, 0, y:y + 3, x:x + 3] = 235
    return out


def _nearest(samples: np.ndarray, images: np.ndarray) -> np.ndarray:
    d = ((samples[:, None].astype(float) - images[None].astype(float)) ** 2).mean(axis=(2, 3, 4))
    assert (np.sqrt(d.min(1)) / 255 < 0.03).all()  # every sample lands on a training image
    return d.argmin(1)


def test_a_memoriser_conditioned_on_two_attribute_values_returns_their_images():
    sde = SubVPSDE()
    images = _images(6)
    sex = np.array([0, 1, 0, 1, 1, 0])
    model = ContinuousModel(conditioned_memoriser_score(sde, torch.from_numpy(to_model_space(images)),
                                                        torch.from_numpy(sex)), sde, image_shape=(1, 8, 8),
                            num_classes=2)
    for value in (0, 1):
        labels = torch.full((12,), value, dtype=torch.long)
        hits = _nearest(model.generate(indices=range(12), seed=3, sampler="em", steps=150, class_labels=labels), images)
        assert set(hits) <= set(np.flatnonzero(sex == value)) and len(set(hits)) >= 2  # that subset, not one image
    # with a continuous attribute (age) beside the class, x_p's own row returns x_p alone, every time
    rows = torch.tensor([[s, a] for s, a in zip(sex, [-1.0, 0.3, 0.5, 1.2, -0.4, 2.0])])
    model = ContinuousModel(conditioned_memoriser_score(sde, torch.from_numpy(to_model_space(images)), rows), sde,
                            image_shape=(1, 8, 8), num_classes=2, covariates=1)
    own = rows[3].repeat(8, 1)
    assert set(_nearest(model.generate(indices=range(8), seed=4, sampler="em", steps=150, class_labels=own),
                        images)) == {3}
    with pytest.raises(DiffauditError, match="no training image has the condition"):
        model.generate(indices=range(2), seed=4, sampler="em", steps=5, class_labels=torch.tensor([[0.0, 9.0]] * 2))


def test_the_attributes_are_encoded_one_class_and_standardised_covariates():
    table = {"A": {"Age": "30", "Sex": "F"}, "B": {"Age": "50", "Sex": "M"}, "C": {"Age": "", "Sex": "M"}}
    enc = encoding(table, ["Age", "Sex"])  # the empty age is no value
    assert [e["kind"] for e in enc] == ["categorical", "continuous"]  # the class first
    assert enc[0]["classes"] == ["F", "M"] and enc[1]["mean"] == 40 and enc[1]["std"] == 10
    assert encode(table["B"], enc) == [1.0, 1.0]
    with pytest.raises(DiffauditError, match="one .* and any number of numeric"):
        encoding({"A": {"Sex": "F", "Site": "HH"}}, ["Sex", "Site"])
    with pytest.raises(DiffauditError, match="--condition-on Weight: .* has no such column; it has Age, Sex"):
        encoding(table, ["Weight"])
    assert matching(np.array([[0, 1.0], [0, 1.0], [1, 1.0]]), np.array([0, 1.0])) == 2


def test_a_network_with_covariates_trains_reloads_and_refuses_conditions_of_another_width(tmp_path):
    cfg = ModelConfig(prediction="v", num_classes=2, covariates=1)
    images = _images(4, side=16)
    conditions = np.array([[0, -1.0], [1, 0.0], [0, 0.5], [1, 1.5]], dtype=np.float32)
    train(tmp_path / "train", images, model_cfg=cfg, train_cfg=TrainConfig(steps=4, batch_size=4),
          sde=SubVPSDE(), device="cpu", progress=False, labels=conditions)
    model, meta = load_score_model(tmp_path / "train", device="cpu")
    assert meta["model"]["covariates"] == 1 and meta["model"]["num_classes"] == 2
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([0.3, 0.6])
    for p in model.net.class_embedding.parameters():
        torch.nn.init.normal_(p)  # an embedding that matters: the age column moves the score
    a = model(x, t, class_labels=torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    b = model(x, t, class_labels=torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    with pytest.raises(DiffauditError, match="rows of 2 finite values"):
        check_conditions(conditions[:, :1], 4, cfg)
    with pytest.raises(DiffauditError, match="does not fit"):
        build_network(cfg, (1, 16, 16))(x, t * 999, class_labels=torch.zeros(2, 3))


def test_sampling_tables_follow_the_mode_and_the_model():
    manifest = {"split": "train", "indices": [2, 0, 1], "fingerprint": {"position": 1},
                "source": {"attributes": {"encoding": [{"name": "Sex", "kind": "categorical", "classes": ["F", "M"]},
                                                       {"name": "Age", "kind": "continuous", "mean": 40, "std": 10}]},
                           "files": [{"split": "train", "attributes": {"Sex": s, "Age": a}}
                                     for s, a in (("F", "30"), ("M", "40"), ("M", "60"))]}}
    table, record = condition_table(manifest, 2, 1, "training")
    np.testing.assert_allclose(table, [[1, 2], [0, -1], [1, 0]])  # D_p's order: sources 2, 0, 1
    assert record["conditions"]["mode"] == "training" and record["conditions"]["rows"] == 3
    np.testing.assert_allclose(condition_table(manifest, 2, 1, "auto")[0], table)
    np.testing.assert_allclose(condition_table(manifest, 2, 1, "x_p")[0], [[0, -1]])
    assert condition_table({}, 0, 0, "auto") == (None, {})
    np.testing.assert_array_equal(condition_table({}, 3, 0, "auto")[0], [0, 1, 2])  # classes, each in turn
    sex_only = {**manifest, "source": {**manifest["source"], "attributes": {"encoding": manifest["source"][
        "attributes"]["encoding"][:1]}}}
    labels, _ = condition_table(sex_only, 2, 0, "training")  # one categorical attribute: a class-conditional model
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0, 1]
    with pytest.raises(DiffauditError, match="continuous attributes samples with the training set's"):
        condition_table(manifest, 2, 1, "classes")
    with pytest.raises(DiffauditError, match="unconditional"):
        condition_table({}, 0, 0, "x_p")


@pytest.mark.filterwarnings("ignore")
def test_the_volume_audit_conditioned_on_age_and_sex_counts_x_p_both_ways(tmp_path, capsys):
    pytest.importorskip("nibabel")
    pytest.importorskip("monai")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_data_bad_input import refused, run
    from test_prepare_volumes import PATTERN, _folder

    root = _folder(tmp_path / "nifti", patients=6)
    rows = ["MRID,Age,Sex"] + [f"P{p:02d}-s{s},{30 + 7 * p + s},{'MF'[p % 2]}" for p in range(6) for s in range(2)
                               if (p, s) != (5, 1)]
    (root / "demog.csv").write_text("\n".join(rows) + "\n")
    data = ("--data", root, "--size", "16,16,16", "--patient-pattern", PATTERN, "--split-ratios", "0.5,0.25,0.25")
    r = tmp_path / "run"
    code, err = run(capsys, "audit", "--run-dir", r, "--preset", "cpu-demo-3d", *data, "--attributes", "demog.csv",
                    "--condition-on", "Sex,Age", "--n-train", "5", "--steps", "3", "--n-samples", "4", "--M", "2",
                    "--sampling-steps", "10", "--no-control", "--quiet")
    assert code == 0, err
    manifest = json.loads((r / "manifest.json").read_text())
    assert {"file": "P05-s1_T1.nii.gz", "reason": "no Sex/Age in demog.csv"} in manifest["source"]["skipped"]
    assert json.loads((r / "train" / "config.json").read_text())["model"]["covariates"] == 1
    results = json.loads((r / "results.json").read_text())
    own = results["reproduction_x_p"]
    assert own["conditions"]["mode"] == "x_p" and own["conditions"]["matching"] == 1  # x_p's age is its own
    assert own["expected_q"] == 4 and results["reproduction"]["conditions"]["mode"] == "training"
    assert set(own["conditions"]["x_p"]) == {"Age", "Sex"}
    assert "Sampling with x_p's own attributes" in (r / "report.md").read_text()
    assert run(capsys, "verify", r)[0] == 0
    # counting the x_p-conditioned samples by hand fills their own section, never the verdict's
    assert run(capsys, "count", "--run-dir", r, "--quiet", "--detector", "nn", "--samples", "em10-seed0-x_p")[0] == 0
    again = json.loads((r / "results.json").read_text())
    assert again["reproduction"] == results["reproduction"] and again["reproduction_x_p"]["q"] == own["q"]
    bad = dict(json.loads((r / "results.json").read_text()))
    bad["reproduction_x_p"] = {**own, "q": 3}
    (r / "results.json").write_text(json.dumps(bad))
    code, err = run(capsys, "verify", r)
    assert code == 4 and "reproduction_x_p.q" in err
    for argv, match in ((("--condition-on", "Sex"), ["condition", "--attributes"]),
                        (("--attributes", "none.csv"), ["--attributes none.csv: no such file"]),
                        (("--attributes", "demog.csv", "--condition-on", "Weight"), ["Weight", "no such column"])):
        refused(capsys, tmp_path, *data, *argv, match=match, run_dir=tmp_path / "other")
