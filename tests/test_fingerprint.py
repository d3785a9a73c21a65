"""The SAF (Eq. 10): fully inside the image, changes only the pixels under it, any image type."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from diffaudit.data.fingerprint import SHAPES, Fingerprint, check_fits, random_centre
from diffaudit.errors import DiffauditError


@settings(max_examples=200, deadline=None)
@given(size=st.integers(5, 40), radius=st.floats(0.5, 12.0), shape=st.sampled_from(sorted(SHAPES)),
       seed=st.integers(0, 2**31))
def test_random_saf_lies_fully_inside(size, radius, shape, seed):
    if 2 * math.floor(radius) + 1 > size:
        with pytest.raises(DiffauditError, match="cannot fit"):
            check_fits(size, size, radius)
        return
    rng = np.random.default_rng(seed)
    centre = random_centre(rng, size, size, radius)
    fp = Fingerprint(shape=shape, centre=centre, radius=radius, intensity=0.5, width=min(1.5, radius))
    try:
        mask = fp.mask(size, size)
    except DiffauditError as err:  # a thin ring between two lattice distances is refused, not drawn empty
        assert "covers no pixel" in str(err) and shape == "ring"
        assume(False)
    # The same shape drawn on a much larger canvas has no more pixels: nothing was clipped at the border.
    pad = 20
    big = SHAPES[shape](size + 2 * pad, size + 2 * pad, (centre[0] + pad, centre[1] + pad), radius, fp.width)
    assert mask.sum() == big.sum() > 0


def test_only_pixels_under_the_saf_change():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, 3, 28, 28), dtype=np.uint8)
    fp = Fingerprint(shape="disc", centre=(10, 20), radius=3, intensity=0.5)
    y = fp.apply(x)
    mask = fp.mask(28, 28)
    assert y.dtype == np.uint8 and y.shape == x.shape
    np.testing.assert_array_equal(y[..., ~mask], x[..., ~mask])
    assert (y[..., mask] == 128).all()
    assert mask.sum() == 29  # lattice points within distance 3 of a point


def test_torch_model_space_and_ring():
    x = torch.zeros(2, 1, 28, 28) - 1
    fp = Fingerprint(shape="ring", centre=(14, 14), radius=5, intensity=1.0, width=1.5)
    y = fp.apply(x)
    mask = torch.as_tensor(fp.mask(28, 28))
    assert torch.all(y[..., mask] == 1.0) and torch.all(y[..., ~mask] == -1.0)
    assert not mask[14, 14]  # a ring is hollow


def test_bad_fingerprints():
    with pytest.raises(DiffauditError, match="cannot fit"):
        check_fits(28, 28, 14)
    with pytest.raises(DiffauditError, match="unknown SAF shape 'square'"):
        Fingerprint(shape="square", centre=(5, 5), radius=2, intensity=0.5)
    with pytest.raises(DiffauditError, match="intensity"):
        Fingerprint(shape="disc", centre=(5, 5), radius=2, intensity=2.0)
    with pytest.raises(DiffauditError, match="does not lie fully inside"):
        Fingerprint(shape="disc", centre=(1, 5), radius=3, intensity=0.5).mask(28, 28)
