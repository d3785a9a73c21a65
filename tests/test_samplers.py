"""Samplers against analytic scores: Gaussian data and the perfect memoriser; reproducibility from (seed, i)."""

import numpy as np
import pytest
import torch
from scipy import stats

from diffaudit.config import SampleConfig
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.diffusion.samplers import SAMPLERS, sample, time_grid
from diffaudit.diffusion.score import ScoreModel, gaussian_score, memoriser_score
from diffaudit.diffusion.sde import SubVPSDE, VESDE, VPSDE
from diffaudit.diffusion.unet import build_unet
from diffaudit.errors import DiffauditError
from diffaudit.generate import generate_shards, iter_shards
from diffaudit.io import read_json

from conftest import TINY_MODEL

SHAPE = (1, 4, 4)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE(), VESDE(sigma_min=0.01, sigma_max=50.0)], ids=lambda s: s.name)
def test_gaussian_data_mean_and_variance(sampler, sde):
    """sigma_max = 50 >> |m| for VE, as Song et al. advise: its prior N(0, sigma_max^2) ignores the data mean.
    The Langevin corrector's step size needs norms that concentrate, so PC is tested in 256 dimensions."""
    m, s = 0.4, 0.3
    shape, n_images = ((1, 16, 16), 150) if sampler == "pc" else (SHAPE, 1500)
    x = sample(gaussian_score(sde, m, s), sde, shape=shape, indices=range(n_images), seed=0, sampler=sampler,
               steps=250, eps=1e-4)
    values = x.flatten().double()
    n = values.numel()  # 24 000 or 38 400 values (independent across pixels)
    assert abs(values.mean().item() - m) < 5 * s / np.sqrt(n) + 0.01
    assert values.var().item() == pytest.approx(s**2, rel=0.06)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_memoriser_reproduces_its_images_uniformly(sampler):
    sde = SubVPSDE()
    k = 4
    images = torch.rand(k, *SHAPE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    x = sample(memoriser_score(sde, images), sde, shape=SHAPE, indices=range(400), seed=1, sampler=sampler,
               steps=200)
    d = torch.cdist(x.flatten(1).double(), images.flatten(1).double()) / np.sqrt(images[0].numel())
    nearest = d.argmin(1)
    assert d.min(1).values.max() < 0.02  # every sample is a copy (RMSE on the [-1, 1] scale)
    counts = torch.bincount(nearest, minlength=k).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3, counts  # each image with frequency near 1/K


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_partial_diffusion_from_a_training_image_returns_it(sampler):
    sde = SubVPSDE()
    images = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(4)) * 2 - 1
    x = sample(memoriser_score(sde, images), sde, shape=SHAPE, indices=range(50), seed=0, t_start=0.05,
               x_start=images[2], steps=50, sampler=sampler)
    assert (x - images[2]).abs().max() < 0.02


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_image_i_depends_only_on_seed_and_index_analytic(sampler):
    sde = SubVPSDE()
    score = gaussian_score(sde, 0.0, 0.5)
    batch = sample(score, sde, shape=SHAPE, indices=range(64), seed=7, sampler=sampler, steps=20)
    for i in (0, 17, 63):
        single = sample(score, sde, shape=SHAPE, indices=[i], seed=7, sampler=sampler, steps=20)
        assert torch.allclose(batch[i], single[0], atol=1e-6)
    other_seed = sample(score, sde, shape=SHAPE, indices=[0], seed=8, sampler=sampler, steps=20)
    assert not torch.allclose(batch[0], other_seed[0])


def test_image_i_depends_only_on_seed_and_index_unet():
    sde = SubVPSDE()
    torch.manual_seed(0)
    model = ScoreModel(build_unet(TINY_MODEL, channels=1, size=28), sde).eval()
    batch = sample(model, sde, shape=(1, 28, 28), indices=range(64), seed=3, steps=5)
    single = sample(model, sde, shape=(1, 28, 28), indices=[41], seed=3, steps=5)
    assert torch.allclose(batch[41], single[0], atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_image_i_depends_only_on_seed_index_and_mode(precision, tmp_path):
    sde = SubVPSDE()
    torch.manual_seed(0)
    model = ContinuousModel(ScoreModel(build_unet(TINY_MODEL, channels=1, size=28), sde).eval(), sde,
                            image_shape=(1, 28, 28))
    batch = model.generate(indices=range(64), seed=3, sampler="em", steps=5, precision=precision)
    seven = model.generate(indices=range(35, 42), seed=3, sampler="em", steps=5, precision=precision)
    assert np.array_equal(batch[35:42], seven)  # uint8 images: batch 64 against batch 7
    # the mode is part of the sampling config: its samples are their own folder's
    cfg = SampleConfig(n=8, steps=5, batch_size=8, seed=3, precision=precision, memory_format="contiguous")
    out = generate_shards(tmp_path / precision, model, cfg, progress=False)
    assert np.array_equal(next(iter_shards(out))[1], batch[:8])
    assert read_json(out / "config.json")["sample"].get("precision", "fp32") == precision
    if precision != "fp32":
        with pytest.raises(DiffauditError, match="precision"):
            generate_shards(tmp_path / precision, model, SampleConfig(n=8, steps=5, batch_size=8, seed=3,
                                                                      memory_format="contiguous"), progress=False)
    with pytest.raises(DiffauditError, match="precision"):
        SampleConfig(precision="fp16")


def test_bad_input():
    sde = SubVPSDE()
    score = gaussian_score(sde, 0.0, 1.0)
    with pytest.raises(DiffauditError, match="unknown sampler 'heun'"):
        sample(score, sde, shape=SHAPE, indices=[0], seed=0, sampler="heun")
    with pytest.raises(DiffauditError, match="needs x_start"):
        sample(score, sde, shape=SHAPE, indices=[0], seed=0, t_start=0.5)
    with pytest.raises(DiffauditError, match="t_start <= T"):
        time_grid(sde, 10, t_start=1.5)
    with pytest.raises(DiffauditError, match="at least 1"):
        time_grid(sde, 0)
    with pytest.raises(DiffauditError, match="empty"):
        sample(score, sde, shape=SHAPE, indices=[], seed=0)


def test_a_short_last_batch_is_padded_so_image_i_does_not_depend_on_n(tmp_path):
    sde = SubVPSDE()
    torch.manual_seed(0)
    model = ContinuousModel(ScoreModel(build_unet(TINY_MODEL, channels=1, size=28), sde).eval(), sde,
                            image_shape=(1, 28, 28))
    calls = []
    generate = model.generate

    def counted(**kw):
        calls.append(len(kw["indices"]))
        return generate(**kw)

    model.generate = counted
    cfg = SampleConfig(n=10, steps=3, batch_size=4, shard_size=8, seed=5, memory_format="contiguous")
    out = generate_shards(tmp_path / "ten", model, cfg, progress=False)
    assert set(calls) == {4}  # 4, 4 in the first shard; 2 padded to 4 in the second
    images = np.concatenate([x for _, x in iter_shards(out)])
    assert len(images) == 10
    assert np.array_equal(images[8:], generate(indices=range(8, 12), seed=5, sampler="em", steps=3)[:2])
