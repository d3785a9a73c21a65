"""The SAF in 3D (``diffaudit.data.volumes.fingerprint``): a ball or a shell wholly inside the volume and on the
anatomy, standing out from x_i, placed reproducibly; on synthetic heads and, where the shared data is present, on IXI."""

from pathlib import Path

import numpy as np
import pytest

from diffaudit.data.volumes.fingerprint import (
    apply_saf,
    footprint,
    foreground_mask,
    place_saf,
)
from diffaudit.images import orthogonal_slices
from diffaudit.errors import DiffauditError

IXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi-t1"


def head(grey: int = 200, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [1, S, S, S]: a textured ellipsoid of mean ``grey`` in dark air."""
    d, h, w = np.ogrid[:size, :size, :size]
    c = (size - 1) / 2
    inside = ((d - c) / (0.42 * size)) ** 2 + ((h - c) / (0.36 * size)) ** 2 + ((w - c) / (0.30 * size)) ** 2 <= 1
    noise = np.random.default_rng(seed).normal(0, 6, (size,) * 3)
    return np.where(inside, np.clip(grey + noise, 0, 255), 3).astype(np.uint8)[None]


@pytest.mark.parametrize("shape", ["ball", "shell"])
def test_the_saf_lies_on_the_head_and_stands_out_on_20_seeds(shape):
    x_i = head()
    mask, rule = foreground_mask(x_i)
    assert "26-connected" in rule and 0.15 < mask.mean() < 0.4
    for seed in range(20):
        p = place_saf(x_i, np.random.default_rng(seed), shape=shape, radius=3.4, width=1.7)
        x_p = apply_saf(x_i, p, shape=shape, radius=3.4, width=1.7)
        changed = np.any(x_p != x_i, axis=0)
        assert changed.any() and mask[changed].all()  # every voxel it touches is on the anatomy
        assert p.contrast >= 0.2 and p.intensity == 0.5 and "paper's grey" in p.rule
        k = 3
        window = x_p[:, p.centre[0] - k:p.centre[0] + k + 1, p.centre[1] - k:p.centre[1] + k + 1,
                     p.centre[2] - k:p.centre[2] + k + 1]
        assert (window[0][footprint(shape, 3.4, 1.7)] == 128).all()
    again = place_saf(x_i, np.random.default_rng(7), shape=shape, radius=3.4, width=1.7)
    assert again == place_saf(x_i, np.random.default_rng(7), shape=shape, radius=3.4, width=1.7)


def test_a_grey_that_vanishes_into_the_tissue_is_replaced_by_the_extreme_that_stands_out():
    x_i = head(grey=128)  # the paper's 0.5 on tissue of 0.5
    p = place_saf(x_i, np.random.default_rng(0), radius=3, width=1.5)
    assert p.intensity in (0.0, 1.0) and p.contrast >= 0.45 and "extreme farther" in p.rule
    with pytest.raises(DiffauditError, match="the SAF grey 0.5 differs from x_i by at most"):
        place_saf(x_i, np.random.default_rng(0), radius=3, width=1.5, intensity=0.5, tries=8)


def test_a_shell_is_hollow_and_bad_geometry_is_refused():
    ball, shell = footprint("ball", 4, 4), footprint("shell", 4, 1.5)
    assert shell.sum() < ball.sum() and not shell[4, 4, 4] and ball[4, 4, 4]
    with pytest.raises(DiffauditError, match="cannot fit inside a 32x32x32 volume"):
        place_saf(head(), np.random.default_rng(0), radius=16, width=2)
    with pytest.raises(DiffauditError, match="no place on the anatomy holds a SAF of radius 11"):
        place_saf(head(), np.random.default_rng(0), radius=11, width=2)
    with pytest.raises(DiffauditError, match="unknown 3D SAF shape 'disc'"):
        place_saf(head(), np.random.default_rng(0), shape="disc", radius=3, width=1)
    with pytest.raises(DiffauditError, match=r"one uint8 volume \[C, D, H, W\]"):
        place_saf(np.zeros((32, 32, 32), np.uint8), np.random.default_rng(0), radius=3, width=1)


def test_the_three_orthogonal_slices_through_the_centre():
    x_i = head()
    p = place_saf(x_i, np.random.default_rng(3), radius=3, width=1.5)
    x_p = apply_saf(x_i, p, shape="ball", radius=3, width=1.5)
    panels = orthogonal_slices(x_p, p.centre)
    assert panels.shape == (1, 32, 96)
    for j in range(3):  # each panel holds the SAF's grey at the centre's in-plane position
        assert (panels[0, :, 32 * j:32 * (j + 1)] == 128).sum() >= 25


@pytest.mark.skipif(not IXI.is_dir(), reason=f"the shared IXI folder {IXI} is absent")
def test_on_real_ixi_volumes_at_32_voxels():
    from diffaudit.data.volumes import VolumeSteps
    from diffaudit.data.volumes.steps import load, preprocess

    files = sorted(IXI.glob("*.nii.gz"))[:4]
    steps = VolumeSteps(size=(32, 32, 32), spacing=(7.5, 7.5, 7.5))
    for i, f in enumerate(files):
        x_i, _ = preprocess(load(f), steps)
        mask, _ = foreground_mask(x_i)
        for seed in range(5):
            p = place_saf(x_i, np.random.default_rng(seed), radius=3.4, width=1.7)
            changed = np.any(apply_saf(x_i, p, shape="ball", radius=3.4, width=1.7) != x_i, axis=0)
            assert mask[changed].all() and p.contrast >= 0.2, (f.name, seed)


def test_the_nearest_neighbour_detector_finds_a_copy_shifted_by_one_voxel_and_no_other_volume():
    from diffaudit.adversary.detectors import NearestNeighbourDetector

    train = np.stack([head(grey=g, size=16, seed=s) for s, g in enumerate((150, 170, 190, 210))])
    det = NearestNeighbourDetector(train[0], train[1:], shift=1)
    assert det.describe()["shift_px"] == 1 and det.axes == 3
    shifted = np.stack([np.roll(train[0], s, axis=a) for a in (1, 2, 3) for s in (-1, 1)])
    assert det(shifted).all() and det(train[:1]).all() and not det(train[1:]).any()
    assert not det(np.roll(train[0], 3, axis=1)[None]).any()  # three voxels off: not within the tolerance
    with pytest.raises(DiffauditError, match=r"images of shape \(1, 16, 16\) given to a detector calibrated on"):
        det(train[:, :, 0])
