"""The network's output as eps or as v: v's fixed skip is the exact score of Gaussian data, the two agree on the
same eps, and the choice is recorded with the model and checked when a model starts from another."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from diffaudit.config import ModelConfig, TrainConfig, to_dict
from diffaudit.diffusion.score import SIGMA_DATA, ScoreModel, gaussian_score, v_coefficients
from diffaudit.diffusion.sde import SubVPSDE, VESDE, VPSDE
from diffaudit.errors import DiffauditError
from diffaudit.training.loop import load_score_model, train

SDES = [SubVPSDE(), VPSDE(), VESDE()]


class Constant(torch.nn.Module):
    """A 'network' whose output is a fixed function of x (zero, or a given map)."""

    def __init__(self, fn=None):
        super().__init__()
        self.fn = fn or torch.zeros_like

    def forward(self, x, t):
        return self.fn(x)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: s.name)
def test_v_with_a_zero_network_is_the_exact_score_of_gaussian_data(sde):
    # c_skip x_t = E[eps | x_t] for data N(0, SIGMA_DATA^2 I): F = 0 is then the optimal network
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64) * 1.3
    model = ScoreModel(Constant(), sde, prediction="v")
    exact = gaussian_score(sde, 0.0, SIGMA_DATA)
    for t in (1e-3, 0.1, 0.5, 0.9, 1.0):
        tt = torch.full((6,), t, dtype=torch.float64)
        torch.testing.assert_close(model(x, tt), exact(x, tt), rtol=1e-9, atol=1e-9)
    # with eps, the zero network has no pull at all: the mean of x_t goes nowhere
    assert ScoreModel(Constant(), sde)(x, tt).abs().max() == 0


@pytest.mark.parametrize("sde", SDES, ids=lambda s: s.name)
def test_the_v_target_gives_back_the_noise(sde):
    g = torch.Generator().manual_seed(1)
    x0, z = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(4, 1, 8, 8, generator=g,
                                                                                          dtype=torch.float64)
    t = torch.tensor([0.01, 0.3, 0.7, 1.0], dtype=torch.float64)
    alpha, sigma = (c.view(-1, 1, 1, 1) for c in sde.coefficients(t))
    x_t = alpha * x0 + sigma * z
    d = (alpha * SIGMA_DATA) ** 2 + sigma**2
    v = (alpha * SIGMA_DATA * z - sigma * x0 / SIGMA_DATA) / d.sqrt()
    c_skip, c_out = (c.view(-1, 1, 1, 1) for c in v_coefficients(sde, t))
    torch.testing.assert_close(c_skip * x_t + c_out * v, z, rtol=1e-9, atol=1e-9)
    # the same eps through either parameterisation gives the same score
    eps_model = ScoreModel(Constant(lambda x: c_skip * x + c_out * v), sde)
    v_model = ScoreModel(Constant(lambda x: v), sde, prediction="v")
    torch.testing.assert_close(eps_model(x_t, t), v_model(x_t, t))


def test_an_unknown_prediction_is_refused():
    with pytest.raises(DiffauditError, match="prediction"):
        ModelConfig(prediction="x0")
    with pytest.raises(DiffauditError, match="prediction"):
        ScoreModel(Constant(), SubVPSDE(), prediction="score")


def _images(n=6):
    rng = np.random.default_rng(0)
    return np.broadcast_to(rng.integers(0, 256, size=(n, 1, 1, 1), dtype=np.uint8), (n, 1, 28, 28)).copy()


def test_the_prediction_is_recorded_and_an_earlier_model_json_reads_as_eps(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=2)
    v_cfg = ModelConfig(**{**to_dict(TINY_MODEL), "prediction": "v"})
    train(tmp_path / "v", _images(), model_cfg=v_cfg, train_cfg=cfg, sde=SubVPSDE(), device="cpu", progress=False)
    model, meta = load_score_model(tmp_path / "v", device="cpu")
    assert model.prediction == "v" and meta["model"]["prediction"] == "v"
    assert json.loads((tmp_path / "v" / "unet" / "diffaudit_sde.json").read_text())["output"].startswith("v:")
    assert "prediction" not in to_dict(TINY_MODEL)  # an eps model's keys are those of earlier runs
    train(tmp_path / "eps", _images(), model_cfg=TINY_MODEL, train_cfg=cfg, sde=SubVPSDE(), device="cpu", progress=False)
    assert load_score_model(tmp_path / "eps", device="cpu")[0].prediction == "eps"
    # a model that starts from another one must predict the same quantity
    with pytest.raises(DiffauditError, match="trained to predict eps, this model predicts v"):
        train(tmp_path / "ft", _images(), model_cfg=v_cfg, train_cfg=cfg, sde=SubVPSDE(), device="cpu", progress=False,
              init_from=tmp_path / "eps")
