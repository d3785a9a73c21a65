"""Placing the SAF (diffaudit.data.placement): on the anatomy, with contrast, drawn as random_centre draws."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from diffaudit.config import PrepareConfig
from diffaudit.data.fingerprint import Fingerprint, random_centre
from diffaudit.data.placement import Placement, candidates, footprint, foreground_mask, place_saf, saf_contrast
from diffaudit.errors import DiffauditError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MEDMNIST = ("breastmnist.npz", "breastmnist_64.npz", "pneumoniamnist.npz", "retinamnist.npz")
N_IXI = 8  # mid axial slices of the first volumes


def disc_image(side: int, centre: tuple[float, float], radius: float, body: int, background: int = 0) -> np.ndarray:
    rows, cols = np.ogrid[:side, :side]
    inside = np.hypot(rows - centre[0], cols - centre[1]) <= radius
    return np.where(inside, body, background).astype(np.uint8)[None]


def saf_mask(p: Placement, h: int, w: int, shape: str, radius: float, width: float) -> np.ndarray:
    return Fingerprint(shape=shape, centre=p.centre, radius=radius, intensity=p.intensity, width=width).mask(h, w)


@pytest.mark.parametrize("shape", ["disc", "ring"])
def test_saf_lies_on_the_body(shape):
    image = disc_image(48, (30, 20), 11, body=200)  # a bright body off-centre on black
    body = image[0] > 0
    for seed in range(20):
        p = place_saf(image, np.random.default_rng(seed), shape=shape, radius=4, width=2, intensity=None,
                      min_contrast=0.2)
        assert not saf_mask(p, 48, 48, shape, 4, 2)[~body].any(), seed
        assert p.intensity == 0.5 and p.contrast == pytest.approx(abs(0.5 - 200 / 255))
        assert p.draws >= 1 and 0 < p.foreground_fraction < 0.3


def test_grey_body_takes_an_extreme_grey():
    image = disc_image(28, (14, 14), 10, body=128, background=0)
    for seed in range(5):
        p = place_saf(image, np.random.default_rng(seed), shape="disc", radius=3, width=1.5, intensity=None,
                      min_contrast=0.2, tries=32)
        assert p.intensity in (0.0, 1.0) and p.contrast >= 0.2
        assert p.contrast == pytest.approx(saf_contrast(image, saf_mask(p, 28, 28, "disc", 3, 1.5), p.intensity))
        assert "extreme" in p.rule
    # the extreme grey is taken at the first candidate drawn
    again = place_saf(image, np.random.default_rng(0), shape="disc", radius=3, width=1.5, intensity=None,
                      min_contrast=0.2, tries=32)
    once = place_saf(image, np.random.default_rng(0), shape="disc", radius=3, width=1.5, intensity=None,
                     min_contrast=0.2, tries=1)
    assert (again.centre, again.intensity, again.contrast, again.draws) == (once.centre, once.intensity,
                                                                            once.contrast, once.draws)


def test_given_grey_without_contrast_is_refused():
    image = np.full((1, 28, 28), 128, np.uint8)
    with pytest.raises(DiffauditError, match="leave --saf-intensity unset.*lower --saf-contrast"):
        place_saf(image, np.random.default_rng(0), shape="disc", radius=3, width=1.5, intensity=0.5,
                  min_contrast=0.2)
    p = place_saf(image, np.random.default_rng(0), shape="disc", radius=3, width=1.5, intensity=0.0,
                  min_contrast=0.2)
    assert p.intensity == 0.0 and p.contrast == pytest.approx(128 / 255) and p.rule.startswith("given grey 0")


def test_min_contrast_above_one_half_can_be_refused():
    image = np.full((1, 28, 28), 128, np.uint8)
    with pytest.raises(DiffauditError, match="no grey level differs.*lower --saf-contrast"):
        place_saf(image, np.random.default_rng(0), shape="disc", radius=3, width=1.5, intensity=None,
                  min_contrast=0.9, tries=4)


def test_body_too_narrow_for_the_saf_is_refused():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 12:17, :] = 220  # a bar 5 px high: 140 px, more than the SAF's 29, but no 7 px disc fits
    mask, rule = foreground_mask(image, saf=footprint("disc", 3, 1.5))
    assert mask.sum() == 140 and "whole image" not in rule
    with pytest.raises(DiffauditError, match="no place on the anatomy holds a SAF of radius 3 px in this 28x28 "
                                             "image; use a smaller --saf-radius"):
        place_saf(image, np.random.default_rng(0), shape="disc", radius=3, width=1.5, intensity=None,
                  min_contrast=0.2)
    p = place_saf(image, np.random.default_rng(0), shape="disc", radius=2, width=1, intensity=None,
                  min_contrast=0.2)
    assert p.centre[0] == 14 and "whole image" not in p.mask_rule


def test_speck_and_constant_images_take_the_whole_image():
    speck = disc_image(28, (10, 10), 1.5, body=255)  # 9 px: fewer than the SAF
    mask, rule = foreground_mask(speck, saf=footprint("disc", 3, 1.5))
    assert mask.all() and "fewer than the SAF's 29" in rule
    for grey in (0, 77, 255):
        image = np.full((3, 28, 28), grey, np.uint8)
        mask, rule = foreground_mask(image)
        assert mask.all() and rule.startswith("constant image")
        p = place_saf(image, np.random.default_rng(1), shape="disc", radius=3, width=1.5, intensity=None,
                      min_contrast=0.2)
        assert p.foreground_fraction == 1.0 and p.mask_rule == rule and p.contrast >= 0.2
        assert p.centre == random_centre(np.random.default_rng(1), 28, 28, 3)  # the first draw is a candidate


def test_light_background_takes_the_dark_side():
    image = disc_image(28, (14, 14), 13, body=90, background=250)  # a fundus on a white frame
    image[0, 5:23, 12:16] = 255  # a bright vessel the width of which holds no SAF
    mask, rule = foreground_mask(image, saf=footprint("disc", 3, 1.5))
    assert "light background" in rule and not mask[0, 0] and mask[14, 5]


def test_first_accepted_centre_is_the_old_draw():
    rng = np.random.default_rng(7)
    image = rng.integers(180, 256, (1, 40, 36)).astype(np.uint8)
    image[0, 5:35:3, 5:31:3] = rng.integers(0, 40, (10, 9))  # dark specks inside: holes, filled
    image[0, 0, 0] = 255
    mask, _ = foreground_mask(image)
    assert mask.all()
    for s in range(30):
        for shape, radius, width in (("disc", 4.5, 2.25), ("ring", 3, 1.5)):
            p = place_saf(image, np.random.default_rng(s), shape=shape, radius=radius, width=width, intensity=None,
                          min_contrast=0.2)
            assert p.draws == 1 and p.intensity == 0.5
            assert p.centre == random_centre(np.random.default_rng(s), 40, 36, radius)


def test_rejection_is_uniform_over_candidates_and_deterministic():
    image = disc_image(20, (10, 10), 6, body=230)
    foot = footprint("disc", 2, 1)
    allowed = candidates(foreground_mask(image, saf=foot)[0], foot)
    counts = np.zeros((20, 20))
    rng = np.random.default_rng(3)
    for _ in range(600):
        counts[place_saf(image, rng, shape="disc", radius=2, width=1, intensity=None, min_contrast=0.2).centre] += 1
    assert not counts[~allowed].any()
    expected = 600 / allowed.sum()
    assert np.abs(counts[allowed] - expected).max() < 5 * math.sqrt(expected)
    a = place_saf(image, np.random.default_rng(11), shape="disc", radius=2, width=1, intensity=None, min_contrast=0.2)
    b = place_saf(image, np.random.default_rng(11), shape="disc", radius=2, width=1, intensity=None, min_contrast=0.2)
    assert a == b
    d = json.loads(json.dumps(a.to_dict()))
    assert d["centre"] == list(a.centre) and set(d) == {"centre", "intensity", "contrast", "draws", "rule",
                                                        "mask_rule", "foreground_fraction"}


def test_candidates_match_the_fingerprint_masks():
    rng = np.random.default_rng(0)
    for trial in range(20):
        mask = ndimage_blob(rng, 24)
        shape = ("disc", "ring")[trial % 2]
        radius = float(rng.uniform(1.5, 5))
        width = radius / 2
        allowed = candidates(mask, footprint(shape, radius, width))
        k = math.floor(radius)
        for r in range(24):
            for c in range(24):
                inside = k <= r < 24 - k and k <= c < 24 - k
                fits = inside and not Fingerprint(shape, (r, c), radius, 0.5, width).mask(24, 24)[~mask].any()
                assert allowed[r, c] == fits


def ndimage_blob(rng: np.random.Generator, side: int) -> np.ndarray:
    coarse = rng.random((side // 4, side // 4)) > 0.4
    return np.kron(coarse, np.ones((4, 4), bool))


# real data: the shared MedMNIST files and IXI T1 slices

def _medmnist(name: str) -> np.ndarray:
    images = np.load(SHARED / "medmnist" / name)["train_images"]
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


def ixi_slices(folder: Path, n: int, size: int = 64) -> np.ndarray:
    """Mid axial slices of the first ``n`` IXI T1 volumes: 0.5 / 99.5 percentiles to uint8, padded square, resized."""
    import nibabel as nib
    from PIL import Image

    out = []
    for path in sorted(folder.glob("*.nii.gz"))[:n]:
        vol = nib.load(path)
        axis = [code in "SI" for code in nib.aff2axcodes(vol.affine)].index(True)
        data = np.asarray(vol.dataobj, dtype=np.float32)
        s = np.take(data, data.shape[axis] // 2, axis=axis)
        lo, hi = np.percentile(s, [0.5, 99.5])
        u = np.clip((s - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        side = max(u.shape)
        square = np.zeros((side, side), np.uint8)
        r0, c0 = (side - u.shape[0]) // 2, (side - u.shape[1]) // 2
        square[r0:r0 + u.shape[0], c0:c0 + u.shape[1]] = u
        out.append(np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR))[None])
    return np.stack(out)


REAL = [*MEDMNIST, "ixi-t1"]


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared data folder {SHARED} is absent")
@pytest.mark.parametrize("name", REAL)
def test_real_images_take_a_visible_saf_on_the_anatomy(name):
    if name == "ixi-t1":
        images = ixi_slices(SHARED / "ixi-t1", N_IXI)
    else:
        images = _medmnist(name)
    _, _, h, w = images.shape
    radius, width = PrepareConfig().saf_pixels(h)
    kept = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        image = images[int(rng.integers(len(images)))]
        p = place_saf(image, rng, shape="disc", radius=radius, width=width, intensity=None, min_contrast=0.2)
        fg, rule = foreground_mask(image, saf=footprint("disc", radius, width))
        assert rule == p.mask_rule and "whole image" not in rule
        saf = saf_mask(p, h, w, "disc", radius, width)
        assert not saf[~fg].any(), (name, seed)
        assert p.contrast >= 0.2 and p.contrast == pytest.approx(saf_contrast(image, saf, p.intensity))
        kept += p.intensity == 0.5
    assert kept >= 1  # 0.5 stays the grey where it shows
