"""The score network on p x p patches (``ModelConfig.patch``): the rule that picks p, the network it builds (the
inner U-Net's output shuffled back), and a patched model trained, saved, reloaded and sampled."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL
from diffusers import UNet2DModel

from diffaudit.config import DPConfig, ModelConfig, TrainConfig, from_dict, to_dict
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.diffusion.score import ScoreModel
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.diffusion.unet import PatchedUNet2DModel, auto_patch, build_unet, model_config_for
from diffaudit.errors import DiffauditError
from diffaudit.io import read_json
from diffaudit.presets import PRESETS
from diffaudit.privacy.dpsgd import train_dp
from diffaudit.training.loop import load_score_model, train

AUTO = dataclasses.replace(TINY_MODEL, patch="auto")


@pytest.mark.parametrize("size, patch, grid", [(28, 1, 28), (32, 1, 32), (48, 2, 24), (56, 2, 28), (64, 2, 32),
                                               (128, 4, 32), (224, 4, 56), (256, 4, 64)])
def test_auto_patches_images_above_32_px_with_at_most_4x4(size, patch, grid):
    assert auto_patch(size) == patch
    cfg = model_config_for(AUTO, size)
    assert cfg.patch == patch and model_config_for(cfg, size) == cfg  # resolved: model.json rebuilds the same net
    net = build_unet(AUTO, channels=3, size=size)
    assert net.config.sample_size == grid and net.config.in_channels == net.config.out_channels == 3 * patch**2
    assert isinstance(net, PatchedUNet2DModel) == (patch > 1)
    assert net(torch.zeros(1, 3, size, size), torch.tensor([10.0])).sample.shape == (1, 3, size, size)


def test_the_cpu_preset_at_28_px_is_the_unpatched_network_and_record_it_always_was():
    cpu = PRESETS["cpu"].model
    resolved = model_config_for(cpu, 28)
    assert resolved.patch == 1 and "patch" not in to_dict(resolved)  # earlier 28-px model.json files are unchanged
    assert resolved == dataclasses.replace(cpu, patch=1)
    assert from_dict(ModelConfig, {}).patch == 1  # a model.json without the key is unpatched
    assert model_config_for(cpu, 64).patch == 2


def test_the_patched_network_is_the_inner_unet_on_the_unshuffled_image():
    torch.manual_seed(0)
    net = build_unet(dataclasses.replace(TINY_MODEL, patch=2), channels=1, size=32).eval()
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([5.0, 300.0, 900.0])
    inner = UNet2DModel.forward(net, F.pixel_unshuffle(x, 2), t).sample
    assert torch.equal(net(x, t).sample, F.pixel_shuffle(inner, 2))
    # a pixel's output depends on its patch's other pixels: they enter as channels of one position
    y = x.clone()
    y[0, 0, 0, 1] += 1.0
    assert not torch.equal(net(y, t).sample[0, 0, 0, 0], net(x, t).sample[0, 0, 0, 0])


def test_bad_patch_settings_are_refused_by_name():
    with pytest.raises(DiffauditError, match="ModelConfig.patch"):
        ModelConfig(patch=3)
    with pytest.raises(DiffauditError, match="ModelConfig.patch"):
        from_dict(ModelConfig, {"patch": "big"})
    with pytest.raises(DiffauditError, match=r"takes 4 x 4 patches \(model.patch\), so it needs a side divisible by 4, "
                                             r"got 30 px; prepare the images at 32 px \(--size 32\)"):
        build_unet(dataclasses.replace(TINY_MODEL, patch=4), channels=1, size=30)
    with pytest.raises(DiffauditError, match=r"got 100 px \(25 patches of 4 x 4 px, model.patch\); prepare the images "
                                             r"at 96 px"):
        model_config_for(AUTO, 100)


def test_a_patched_model_trains_records_reloads_and_samples_batch_invariantly(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(4, 1, 64, 64), dtype=np.uint8)
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=2, log_every=1)
    train(tmp_path / "t", images, model_cfg=AUTO, train_cfg=cfg, sde=SubVPSDE(), device="cpu", progress=False)
    record = read_json(tmp_path / "t" / "model.json")["model"]
    assert record["patch"] == 2 and record["block_out_channels"] == list(TINY_MODEL.block_out_channels)
    model, _ = load_score_model(tmp_path / "t", device="cpu")
    assert isinstance(model.net, PatchedUNet2DModel) and model.net.patch == 2
    # the diffusers copy loads as a plain UNet2DModel on the patches, and says so
    sde_json = read_json(tmp_path / "t" / "unet" / "diffaudit_sde.json")
    assert sde_json["patch"] == 2 and "pixel_unshuffle(x_t, 2)" in sde_json["input"]
    plain = UNet2DModel.from_pretrained(tmp_path / "t" / "unet")
    x, t = torch.randn(2, 1, 64, 64), torch.tensor([1.0, 500.0])
    assert torch.allclose(F.pixel_shuffle(plain(F.pixel_unshuffle(x, 2), t).sample, 2), model.net(x, t).sample)
    # image i is a function of (seed, i), whatever batch it is drawn in
    gen = ContinuousModel(model, model.sde, image_shape=(1, 64, 64))
    batch = gen.generate(indices=range(6), seed=1, sampler="em", steps=4)
    two = gen.generate(indices=range(3, 5), seed=1, sampler="em", steps=4)
    assert np.array_equal(batch[3:5], two)


def test_dp_sgd_trains_a_patched_model(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(8, 1, 64, 64), dtype=np.uint8)
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1, checkpoint_every=2, log_every=1)
    train_dp(tmp_path / "dp", images, model_cfg=AUTO, train_cfg=cfg, dp=DPConfig(noise_multiplier=1.0,
                                                                                 physical_batch_size=2),
             sde=SubVPSDE(), device="cpu", progress=False)
    assert read_json(tmp_path / "dp" / "model.json")["model"]["patch"] == 2
    model, _ = load_score_model(tmp_path / "dp", device="cpu")
    assert isinstance(model.net, PatchedUNet2DModel)
