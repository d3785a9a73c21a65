"""The adversary on volumes: c_p and c_id as MONAI 3D ResNets, their examples (a ball stamped anywhere it fits, shifts
along three axes, MONAI's affine and bias field in AugMix's place), and the criterion they train to."""

import numpy as np
import pytest
import torch

pytest.importorskip("monai")

from diffaudit.adversary.classifiers import Heldout, build_classifier, fit  # noqa: E402
from diffaudit.adversary.examples import Task, augment, jittered_copies, shifted_copies  # noqa: E402
from diffaudit.config import ClassifierConfig  # noqa: E402
from diffaudit.data.fingerprint import Fingerprint  # noqa: E402

BALL = Fingerprint("ball", (6, 6, 6), 2.5, 1.0, 1.25)


def _volumes(n: int, side: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 120, (n, 1, side, side, side), dtype=np.uint8)


def test_volume_examples_carry_the_ball_anywhere_it_fits_and_shift_along_three_axes():
    images, labels = Task(_volumes(5), stamp=BALL).draw(40, 0.5, np.random.default_rng(1), exact=True)
    assert images.shape == (40, 1, 12, 12, 12) and labels.sum() == 20
    assert all((x == 255).sum() >= BALL.mask(12, 12, 12).sum() for x in images[labels])  # a whole ball of grey 1
    assert not (images[~labels] == 255).any()
    centres = {tuple(np.argwhere(x[0] == 255).mean(0).round().astype(int)) for x in images[labels]}
    assert len(centres) > 10  # drawn anywhere, not at x_p's centre
    x = _volumes(1)[0]
    copies = shifted_copies(x, 1)
    assert copies.shape == (27, 1, 12, 12, 12) and sum(np.array_equal(c, x) for c in copies) == 1
    assert np.array_equal(copies[0][:, :-1, :-1, :-1], x[:, 1:, 1:, 1:])  # the (-1, -1, -1) move
    noisy = jittered_copies(x, 3, 0.0, np.random.default_rng(0))
    assert noisy.shape == (3, 1, 12, 12, 12)


def test_volume_augmentation_is_seeded_and_keeps_the_range():
    cfg = ClassifierConfig(mask_prob=0.5, noise_std=0.1)
    a = augment(_volumes(4), cfg, BALL, seed=7)
    assert a.shape == (4, 1, 12, 12, 12) and a.dtype == torch.float32 and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, augment(_volumes(4), cfg, BALL, seed=7))
    assert not torch.equal(a, augment(_volumes(4), cfg, BALL, seed=8))


def test_a_3d_classifier_trains_to_its_criterion_record():
    net = build_classifier(ClassifierConfig(), channels=1, side=12, dims=3)
    assert net(torch.zeros(2, 1, 12, 12, 12)).shape == (2, 1)
    negatives = _volumes(6)
    positives = BALL.apply(negatives[:1])
    cfg = ClassifierConfig(batch_size=8, epoch_size=16, max_epochs=2, val_size=8, augmix=False, noise_std=0.0)
    model, record = fit(Task(negatives, stamp=BALL), Task(negatives, stamp=BALL), cfg, like=BALL, channels=1,
                        device=torch.device("cpu"), heldout=Heldout(positives, negatives, {"positives": "x_p"}),
                        progress=False)
    assert record["criterion"]["cap_steps"] == 4 and "MONAI" in record["stem"]
    assert model(torch.zeros(1, 1, 12, 12, 12)).shape == (1, 1)
