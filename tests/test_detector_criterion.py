"""The classifiers' training criterion: met and recorded on a tiny set, missed at a cap of one step (and then the verdict
is inconclusive), the stem by image size, and augmentation sizes that scale with the image and are unchanged at 28 px."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from diffaudit.adversary.classifiers import Heldout, build_classifier, fit, stem_for
from diffaudit.adversary.criterion import criterion_verdict
from diffaudit.adversary.examples import COPY_SHIFT, Task, augment, jittered_copies, pixels, shifted_copies, translate
from diffaudit.audit.report.render import detector_warning
from diffaudit.audit.count.stats import reproduction_test
from diffaudit.audit.count.verdict import verdict_section
from diffaudit.config import CLASSIFIER_PRESETS, ClassifierConfig
from diffaudit.data.fingerprint import Fingerprint
from diffaudit.errors import DiffauditError

SIDE = 16
FP = Fingerprint("disc", (8, 8), 2.0, 1.0)
TINY = ClassifierConfig(arch="resnet10", batch_size=32, epoch_size=64, max_epochs=15, val_size=32, augmix=False,
                        positive_share=0.3, val_positive_share=0.5, max_shift=1 / SIDE, lr=3e-3)


def textures(n: int, seed: int, side: int = SIDE) -> np.ndarray:
    """Distinct random textures: 4x4 grids of grey levels upsampled bilinearly, in [20, 235]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return (20 + 215 * x).round().to(torch.uint8).numpy()


def identity_task():
    """x_i among 64 other training images; held out: x_i's 9 one-pixel shifts against 128 unseen textures."""
    images = textures(65, 0)
    x_i, others = images[0], images[1:]
    task = Task(others, positives=x_i[None])
    heldout = Heldout(shifted_copies(x_i, 1), textures(128, 1), {"positives": "shifts of x_i", "negatives": "unseen"})
    return task, heldout


def metrics_of(record: dict) -> dict:
    return {"c_p": {"criterion": record["criterion"]}, "c_id": {"criterion": record["criterion"]},
            "true_positive_rate": {"copies_of_x_p": {"0": {"q": {"positives": 200, "n": 200, "rate": 1.0}}}}}


def results_of(q: int, n: int, n_train: int) -> dict:
    rep = {**reproduction_test(q, n, n_train), "c_p": q, "c_id": q, "samples": "samples/none", "figures": {},
           "detectors": {"c_p": {"kind": "classifier"}, "c_id": {"kind": "classifier"}}, "false_positive_rate": {}}
    return {"n_train": n_train, "reproduction": rep}


def test_the_criterion_is_met_and_recorded():
    task, heldout = identity_task()
    net, record = fit(task, task, TINY, like=FP, channels=1, device=torch.device("cpu"), heldout=heldout,
                      progress=False)
    c = record["criterion"]
    assert c["met"] is True and c["recall"] == 0.99 and c["fpr"] == 0.01
    assert c["measured"]["recall"] >= 0.99 and c["measured"]["fpr"] <= 0.01
    assert c["measured"]["n_positives"] == 9 and c["measured"]["n_negatives"] == 128
    assert c["steps"] == record["history"][-1]["steps"] < c["cap_steps"] == 15 * 2  # stopped at the criterion
    assert record["stem"] == "small" and record["best_epoch"] == len(record["history"])
    # the record says what the kept model does
    with torch.no_grad():
        p = torch.sigmoid(net(torch.from_numpy(heldout.positives).float() / 127.5 - 1).squeeze(1))
    assert (p > TINY.threshold).float().mean().item() == pytest.approx(c["measured"]["recall"])
    assert criterion_verdict(metrics_of(record)) == (True, "")
    assert detector_warning({}, metrics_of(record)) is None


def test_a_cap_of_one_step_misses_the_criterion_and_the_verdict_is_inconclusive():
    task, heldout = identity_task()
    cfg = dataclasses.replace(TINY, max_steps=1)
    _, record = fit(task, task, cfg, like=FP, channels=1, device=torch.device("cpu"), heldout=heldout, progress=False)
    c = record["criterion"]
    assert c["met"] is False and c["steps"] == c["cap_steps"] == 1 and len(record["history"]) == 1
    metrics = metrics_of(record)
    # a count that would read "high" or "low" with detectors that met their criterion
    met = metrics_of({"criterion": {**c, "met": True, "measured": {**c["measured"], "recall": 1.0, "fpr": 0.0}}})
    assert verdict_section(results_of(17, 256, 16), met)["level"] == "high"
    assert verdict_section(results_of(0, 1000, 16), met)["level"] == "low"
    for q, n in ((17, 256), (0, 1000)):
        v = verdict_section(results_of(q, n, 16), metrics)
        assert v["level"] == "inconclusive", v
        assert "c_id missed its training criterion at its cap of 1 steps" in v["reason"]
    assert "missed its training criterion" in detector_warning({}, metrics)
    # an edited record is refused, not believed
    forged = metrics_of({"criterion": {**c, "met": True}})
    with pytest.raises(DiffauditError, match="edited or damaged"):
        verdict_section(results_of(0, 1000, 16), forged)


def test_without_a_recorded_criterion_the_verdict_keeps_the_90_percent_rule():
    legacy = lambda rate: {"true_positive_rate": {"copies_of_x_p": {"0": {"q": {"positives": int(200 * rate),  # noqa: E731
                                                                               "n": 200, "rate": rate}}}}}
    assert criterion_verdict(legacy(0.8)) is None
    assert verdict_section(results_of(17, 256, 16), legacy(0.89))["level"] == "inconclusive"
    assert verdict_section(results_of(17, 256, 16), legacy(0.9))["level"] == "high"


def test_the_stem_follows_the_image_size():
    cfg = ClassifierConfig(arch="resnet10")
    assert stem_for(cfg, 28) == "small" and stem_for(cfg, 63) == "small" and stem_for(cfg, 64) == "standard"
    small, standard = build_classifier(cfg, 1, 28), build_classifier(cfg, 1, 64)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert standard.conv1.kernel_size == (7, 7) and standard.conv1.stride == (2, 2)
    assert isinstance(small.maxpool, nn.MaxPool2d) and isinstance(standard.maxpool, nn.MaxPool2d)
    assert build_classifier(dataclasses.replace(cfg, small_input=True), 1, 64).conv1.kernel_size == (3, 3)
    assert build_classifier(dataclasses.replace(cfg, small_input=False), 1, 28).conv1.kernel_size == (7, 7)
    with torch.no_grad():  # the residual blocks see 14x14 of a 28-px image and 16x16 of a 64-px one
        assert small.maxpool(small.relu(small.bn1(small.conv1(torch.zeros(1, 1, 28, 28))))).shape[-1] == 14
        assert standard.maxpool(standard.conv1(torch.zeros(1, 1, 64, 64))).shape[-1] == 16


def _old_jittered_copies(image, n, noise_std, rng):
    """jittered_copies as it was before sizes scaled with the image: always one pixel."""
    c, h, w = image.shape
    padded = np.pad(image.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="edge")
    out = np.empty((n, c, h, w), dtype=np.uint8)
    for k in range(n):
        dy, dx = rng.integers(0, 3, size=2)
        x = padded[:, dy:dy + h, dx:dx + w] + 255.0 * noise_std * rng.standard_normal((c, h, w))
        out[k] = np.clip(np.rint(x), 0, 255)
    return out


def test_augmentation_sizes_scale_with_the_side_and_are_unchanged_at_28_px():
    image = textures(1, 2, 28)[0]
    assert [pixels(COPY_SHIFT, s) for s in (28, 64, 128, 224)] == [1, 2, 5, 8]
    np.testing.assert_array_equal(jittered_copies(image, 50, 0.05, np.random.default_rng(3)),
                                  _old_jittered_copies(image, 50, 0.05, np.random.default_rng(3)))
    big = textures(1, 2, 64)[0]
    moved = jittered_copies(big, 200, 0.0, np.random.default_rng(0))
    shifts = shifted_copies(big, 2)
    assert len(shifts) == 25 and all(any((m == s).all() for s in shifts) for m in moved)
    assert (translate(big, 2, -1)[:, 2:, :-1] == big[:, :-2, 1:]).all()
    # every preset's random shift is 1 px at 28 px, or none; masks and AugMix as before when there is no shift
    for pair in CLASSIFIER_PRESETS.values():
        for cfg in pair.values():
            assert pixels(cfg.max_shift, 28) in (0, 1)
    images = textures(8, 4, 28)
    cfg = ClassifierConfig(mask_prob=0.5, noise_std=0.1)
    assert torch.equal(augment(images, cfg, FP, 5), augment(images, dataclasses.replace(cfg, max_shift=0.01), FP, 5))
    assert not torch.equal(augment(images, cfg, FP, 5), augment(images, dataclasses.replace(cfg, max_shift=1 / 28), FP, 5))


def test_the_operating_threshold_is_raised_only_as_far_as_the_false_positive_rate_needs():
    from diffaudit.adversary.classifiers import operating_threshold

    cfg = ClassifierConfig(criterion_fpr=0.01)
    quiet = np.linspace(0.0, 0.4, 100)
    assert operating_threshold(quiet, cfg) == cfg.threshold  # nothing above 0.5: the config's threshold
    loud = np.concatenate([quiet[:98], [0.86, 0.7]])  # two of 100 above 0.5, one allowed
    t = operating_threshold(loud, cfg)
    assert t == 0.7 and (loud > t).sum() == 1
    assert (np.concatenate([quiet[:22], [0.86]]) > operating_threshold(np.concatenate([quiet[:22], [0.86]]), cfg)).sum() == 0
