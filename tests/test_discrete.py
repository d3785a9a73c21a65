"""Discrete-time models (diffusers schedulers): exact memorisers for DDPM and DDIM, epsilon, v and cosine; parity with
diffusers' own DDIMPipeline; reproducibility per (seed, index); q_M and t' on them; the likelihood against a closed
form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel

from diffaudit.adversary.detectors import NearestNeighbourDetector, rmse
from diffaudit.audit.count.stage import count_reproductions
from diffaudit.audit.quality.likelihood import log_likelihood
from diffaudit.audit.count.stats import clopper_pearson
from diffaudit.audit.tprime.search import QM, make_grid, search
from diffaudit.diffusion.discrete import (
    DiscreteModel,
    ScheduleVPSDE,
    from_epsilon,
    gaussian_epsilon,
    memoriser_epsilon,
    to_epsilon,
)
from diffaudit.errors import DiffauditError
from diffaudit.images import to_model_space

SHAPE = (1, 6, 6)


def training_images(k: int, seed: int = 0) -> np.ndarray:
    """K distinct uint8 images far apart (random binary patterns of 0 and 255)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, size=(k, *SHAPE)) * 255).astype(np.uint8)


def memoriser(images: np.ndarray, *, schedule: str = "linear", kind: str = "epsilon", sampler: str = "ddpm",
              steps: int | None = None) -> DiscreteModel:
    config = dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, prediction_type=kind).config)
    abar = DDPMScheduler.from_config(config).alphas_cumprod
    net = memoriser_epsilon(abar, torch.from_numpy(to_model_space(images)), kind)
    return DiscreteModel(net, config, default_sampler=sampler, default_steps=steps, image_shape=SHAPE)


def nearest(samples: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = rmse(samples, images)
    return d.min(1), d.argmin(1)


@pytest.mark.parametrize("kind,schedule,sampler,steps", [
    ("epsilon", "linear", "ddpm", 1000),
    ("v_prediction", "linear", "ddpm", 1000),
    ("epsilon", "squaredcos_cap_v2", "ddpm", 1000),
    ("epsilon", "linear", "ddim", 50),
])
def test_an_exact_memoriser_reproduces_its_training_images(kind, schedule, sampler, steps):
    images = training_images(8)
    model = memoriser(images, schedule=schedule, kind=kind, sampler=sampler)
    samples = model.generate(indices=range(48), seed=1, sampler=sampler, steps=steps)
    dist, which = nearest(samples, images)
    assert (dist < 0.02).mean() >= 0.9
    assert len(set(which[dist < 0.02].tolist())) >= 6  # most of the K images are reached
    # the count's rate of one image is consistent with 1/K
    det = NearestNeighbourDetector(images[0], images[1:])
    count = count_reproductions([(np.arange(48), samples)], {"nn": det})
    low, high = clopper_pearson(len(count.q), count.n, 0.99)
    assert low <= 1 / 8 <= high


def test_image_i_does_not_depend_on_its_batch():
    images = training_images(4)
    model = memoriser(images)
    both = model.run(indices=[3, 7], seed=5, sampler="ddpm", steps=20)
    alone = model.run(indices=[7], seed=5, sampler="ddpm", steps=20)
    assert torch.allclose(both[1], alone[0], atol=1e-6)
    q_m = QM(model, images[0], {"nn": NearestNeighbourDetector(images[0], images[1:])}, m=6, steps=100,
             sampler="ddpm", batch_size=4)
    q_m_one = QM(model, images[0], {"nn": NearestNeighbourDetector(images[0], images[1:])}, m=6, steps=100,
                 sampler="ddpm", batch_size=1)
    assert q_m(0.5) == q_m_one(0.5)


def test_ddim_with_eta_0_matches_diffusers_ddim_pipeline():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    model = DiscreteModel(unet, scheduler.config, default_sampler="ddim", image_shape=(1, 8, 8))
    ours = model.run(indices=range(3), seed=9, sampler="ddim", steps=20)
    from diffaudit.diffusion.rng import ImageNoise

    generators = ImageNoise(seed=9, indices=range(3), shape=(1, 8, 8)).generators
    theirs = DDIMPipeline(unet=unet, scheduler=scheduler)(batch_size=3, generator=generators, num_inference_steps=20,
                                                          eta=0.0, output_type="np").images
    ours_np = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours_np - theirs).max() < 1e-5


def test_q_m_shrinks_from_4_to_256_images_and_the_fast_search_agrees():
    results = {}
    for k in (4, 256):
        images = training_images(k, seed=1)
        model = memoriser(images)
        det = {"nn": NearestNeighbourDetector(images[0], images[1:])}
        grid = make_grid(0.1)
        fast = search(QM(model, images[0], det, m=8, steps=100, sampler="ddpm"), grid, p0=1 / k)
        full = search(QM(model, images[0], det, m=8, steps=100, sampler="ddpm"), grid, method="exhaustive", p0=1 / k)
        assert fast.t_prime_alpha == full.t_prime_alpha
        assert fast.nfe < full.nfe
        results[k] = sum(e.q for e in full.evaluations.values())
    assert results[256] < results[4]


def test_partial_diffusion_starts_at_the_right_timestep_and_counts_its_steps():
    model = memoriser(training_images(2))
    assert model.timesteps("ddpm", 1000, 0.05)[0] == 49  # (k + 1) / N = t
    assert model.steps_at(0.05, "ddpm", 1000) == 50
    assert model.timesteps("ddim", 100, 0.05)[0] == 40  # the largest inference timestep at or below t
    assert model.start_time(0.05, "ddim", 100) == pytest.approx(0.041)
    assert model.nfe("ddim", 100) == 100
    assert model.sigma(0.05, "ddpm", 1000) == pytest.approx(math.sqrt(1 - float(model.alphas_cumprod[49])))
    with pytest.raises(DiffauditError, match="below the first inference timestep"):
        model.timesteps("ddim", 10, 0.0005)
    with pytest.raises(DiffauditError, match="not a scheduler"):
        model.check_sampler("em")


def test_the_schedule_sde_matches_the_scheduler_at_every_timestep():
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    sde = ScheduleVPSDE(abar)
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    alpha, sigma = sde.coefficients(t)
    assert torch.allclose(alpha**2, abar.double(), rtol=1e-10)
    assert torch.allclose(sigma**2, 1 - abar.double(), rtol=1e-8)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_convert_to_epsilon_and_back(kind):
    x, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    abar = torch.tensor([0.9, 0.5, 0.1])
    pred = from_epsilon(eps, x, abar, kind)
    assert torch.allclose(to_epsilon(pred, x, abar, kind), eps, atol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_the_likelihood_of_a_discrete_model_is_exact_on_gaussian_data(kind):
    config = dict(DDPMScheduler(num_train_timesteps=1000, prediction_type=kind).config)
    abar = DDPMScheduler.from_config(config).alphas_cumprod
    mean, std = 0.1, 0.5
    eps_net = gaussian_epsilon(abar, mean, std)

    def net(x, timestep):
        t = (torch.as_tensor(timestep, dtype=torch.float64).reshape(-1) + 1) / 1000
        a2 = ScheduleVPSDE(abar).coefficients(t.expand(len(x)))[0] ** 2
        return from_epsilon(eps_net(x, timestep), x, a2.to(x.dtype), kind)

    model = DiscreteModel(net, config, image_shape=(1, 2, 2))
    x = torch.tensor([[[[0.3, -0.2], [0.0, 0.6]]]])
    t0 = 1 / 1000
    logp, _ = log_likelihood(model.score(), model.sde, x, eps=t0)
    a0 = float(abar[0]) ** 0.5
    var = a0**2 * std**2 + (1 - float(abar[0]))
    exact = float(-0.5 * ((x - a0 * mean) ** 2).sum() / var - 2 * math.log(2 * math.pi * var))
    assert float(logp[0]) == pytest.approx(exact, abs=2e-3)
