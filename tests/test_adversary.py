"""The adversary on a tiny synthetic set: c_p finds the SAF, c_id finds x_i, the reference detector's threshold."""

import numpy as np
import pytest
import torch

from diffaudit.adversary.classifiers import ClassifierDetector, build_classifier, fit
from diffaudit.adversary.detectors import NearestNeighbourDetector, call_detector, rmse
from diffaudit.adversary.examples import Task, augment, jittered_copies
from diffaudit.config import ClassifierConfig
from diffaudit.data.fingerprint import Fingerprint
from diffaudit.errors import DiffauditError

FP = Fingerprint("disc", (10, 12), 3.0, 1.0)  # white on the darker textures below: learnable in seconds
FAST = dict(arch="resnet10", batch_size=32, epoch_size=256, max_epochs=5, patience=5, val_size=128)


def smooth_images(n, seed, size=28):
    """Distinct smooth textures: random 4x4 grids upsampled bilinearly, in [20, 180]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (20 + 160 * x).round().to(torch.uint8).numpy()


def test_c_p_separates_saf_from_no_saf():
    train, held = smooth_images(64, 0), smooth_images(64, 1)
    cfg = ClassifierConfig(**FAST, positive_share=0.5, val_positive_share=0.5)
    net, record = fit(Task(train, stamp=FP), Task(held, stamp=FP), cfg, like=FP, channels=1,
                      device=torch.device("cpu"), progress=False)
    history = record["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    det = ClassifierDetector(net, image_shape=(1, 28, 28))
    test = smooth_images(100, 2)
    stamped = np.stack([Fingerprint("disc", (r, c), 3.0, 1.0).apply(x)
                        for x, r, c in zip(test, np.random.default_rng(0).integers(3, 25, 100),
                                           np.random.default_rng(1).integers(3, 25, 100), strict=True)])
    accuracy = (det(stamped).mean() + (~det(test)).mean()) / 2
    assert accuracy > 0.85, accuracy


def test_c_id_separates_x_i_from_the_others():
    images = smooth_images(33, 3)
    x_i, others = images[0], images[1:]
    cfg = ClassifierConfig(**FAST, positive_share=0.3, val_positive_share=0.5, mask_prob=0.5, noise_std=0.05)
    task = Task(others, positives=x_i[None])
    net, _ = fit(task, task, cfg, like=FP, channels=1, device=torch.device("cpu"), progress=False)
    det = ClassifierDetector(net, image_shape=(1, 28, 28))
    assert det(FP.apply(x_i)[None])[0]  # x_p, x_i with its fingerprint, is the same identity
    copies = jittered_copies(x_i, 50, 0.02, np.random.default_rng(0))
    assert det(copies).mean() > 0.9
    assert det(others).mean() < 0.1
    assert det(smooth_images(100, 4)).mean() < 0.1


def test_training_examples_are_seeded_and_labelled():
    images = smooth_images(10, 5)
    a = Task(images, stamp=FP).draw(50, 0.5, np.random.default_rng(1), exact=True)
    b = Task(images, stamp=FP).draw(50, 0.5, np.random.default_rng(1), exact=True)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1].sum() == 25
    # a stamped image holds a disc of the SAF's grey; an unstamped one is a training image untouched
    grey = round(255 * FP.intensity)
    assert all((x == grey).sum() >= FP.mask(28, 28).sum() for x in a[0][a[1]])
    assert all(any((x == y).all() for y in images) for x in a[0][~a[1]])
    cfg = ClassifierConfig(mask_prob=0.5, noise_std=0.1)
    x1, x2 = augment(a[0], cfg, FP, seed=3), augment(a[0], cfg, FP, seed=3)
    assert torch.equal(x1, x2) and x1.min() >= -1 and x1.max() <= 1
    assert not torch.equal(x1, augment(a[0], cfg, FP, seed=4))


def test_nearest_neighbour_threshold_is_unambiguous():
    images = smooth_images(20, 6)
    det = NearestNeighbourDetector(images[0], images[1:])
    d = rmse(images[:1], images[1:])[0]
    assert det.threshold == pytest.approx(0.5 * min(d.min(), det.median_nn))
    assert det(images[:1])[0] and not det(images[1:]).any()
    # whatever it flags is nearer to the target than to any other training image
    probe = np.clip(images[0].astype(int) + np.random.default_rng(0).integers(-3, 4, (500, 1, 28, 28)), 0, 255)
    probe = probe.astype(np.uint8)
    flagged = probe[det(probe)]
    assert len(flagged) > 0
    assert (rmse(flagged, images[:1])[:, 0] < rmse(flagged, images[1:]).min(1)).all()
    with pytest.raises(DiffauditError, match="exact duplicate"):
        NearestNeighbourDetector(images[0], np.concatenate([images[:1], images[1:]]))
    with pytest.raises(DiffauditError, match="calibrated on"):
        det(np.zeros((2, 3, 28, 28), np.uint8))


def test_detector_output_is_checked():
    x = np.zeros((4, 1, 8, 8), np.uint8)
    with pytest.raises(DiffauditError, match="one boolean per image"):
        call_detector(lambda b: np.zeros((len(b), 2), bool), x)
    with pytest.raises(DiffauditError, match="other than booleans"):
        call_detector(lambda b: np.full(len(b), 0.3), x)
    assert call_detector(lambda b: np.ones(len(b), int), x).dtype == bool


def test_classifier_refuses_other_image_shapes():
    cfg = ClassifierConfig(arch="resnet10")
    det = ClassifierDetector(build_classifier(cfg, 1).eval(), image_shape=(1, 28, 28), name="c_p")
    with pytest.raises(DiffauditError, match=r"trained on images of shape \(1, 28, 28\)"):
        det(np.zeros((2, 3, 28, 28), np.uint8))
    with pytest.raises(DiffauditError, match="unknown classifier architecture"):
        build_classifier(ClassifierConfig(arch="vgg"), 1)
