"""The score network sized to the images (``ModelConfig.levels``), and the sampler's memory format and compile mode
(``SampleConfig.memory_format`` / ``compile``): image i stays a function of (seed, i) in each."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from diffaudit.config import ModelConfig, SampleConfig, TrainConfig, from_dict, to_dict
from diffaudit.diffusion import precision
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.diffusion.precision import AUTO_COMPILE_EVALUATIONS, in_memory_format, resolve_numerics
from diffaudit.diffusion.samplers import sample
from diffaudit.diffusion.score import ScoreModel
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.diffusion.unet import auto_levels, build_unet, level_sides, model_config_for
from diffaudit.errors import DiffauditError
from diffaudit.generate import batch_shapes, generate_shards, iter_shards
from diffaudit.io import read_json
from diffaudit.training.loop import init_model, load_score_model, train


# ---- levels from the image size ---------------------------------------------------------------------------
@pytest.mark.parametrize("size, levels, attention_side", [(28, 3, None), (32, 3, None), (56, 4, 14), (64, 4, 16),
                                                          (128, 5, 16), (224, 6, 14), (256, 6, 16)])
def test_levels_and_attention_follow_the_image_size(size, levels, attention_side):
    cfg = model_config_for(TINY_MODEL, size)
    assert auto_levels(size) == levels and len(cfg.block_out_channels) == levels
    extra = levels - 3
    assert cfg.block_out_channels[extra:] == TINY_MODEL.block_out_channels  # the listed levels, coarsest last
    for k in range(extra):  # each new level is finer, half the width of the next (at least norm_num_groups)
        assert cfg.block_out_channels[k] == max(TINY_MODEL.norm_num_groups, cfg.block_out_channels[k + 1] // 2)
    sides = level_sides(size, levels)
    assert [s for s, a in zip(sides, cfg.attention_levels) if a] == ([attention_side] if attention_side else [])
    assert model_config_for(cfg, size) == cfg  # resolved: a saved model.json rebuilds the same network
    net = build_unet(TINY_MODEL, channels=1, size=size)
    assert len(net.down_blocks) == levels
    assert [type(b).__name__ for b in net.down_blocks].count("AttnDownBlock2D") == (1 if attention_side else 0)


def test_28_px_keeps_the_listed_model_and_its_record():
    for cfg in (ModelConfig(), TINY_MODEL, ModelConfig(block_out_channels=(128, 256, 256), layers_per_block=2,
                                                       attention_levels=(False, True, False), mid_attention=True,
                                                       norm_num_groups=32)):
        assert model_config_for(cfg, 28) == cfg
    assert "levels" not in to_dict(ModelConfig())  # the stage keys of earlier runs stay valid
    assert from_dict(ModelConfig, {"levels": "fixed"}).levels == "fixed"
    with pytest.raises(DiffauditError, match="ModelConfig.levels must be one of auto, fixed"):
        ModelConfig(levels="deep")


def test_a_size_the_network_cannot_halve_is_refused_naming_one_that_can():
    with pytest.raises(DiffauditError, match=r"divisible by 8, got 100 px; prepare the images at 96 px \(--size 96\)"):
        build_unet(TINY_MODEL, channels=1, size=100)
    with pytest.raises(DiffauditError, match="got 30 px; prepare the images at 28 px"):
        model_config_for(TINY_MODEL, 30)
    fixed = dataclasses.replace(TINY_MODEL, levels="fixed")
    assert model_config_for(fixed, 64) == fixed  # an explicit shape is built as listed
    assert len(build_unet(fixed, channels=1, size=64).down_blocks) == 3


def test_the_28_px_network_is_today_s_in_structure_and_initial_weights():
    train_cfg = TrainConfig(seed=5)
    auto = init_model(TINY_MODEL, train_cfg, (1, 28, 28))
    explicit = init_model(dataclasses.replace(TINY_MODEL, levels="fixed"), train_cfg, (1, 28, 28))
    assert repr(auto) == repr(explicit) and dict(auto.config) == dict(explicit.config)
    a, b = auto.state_dict(), explicit.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_trained_model_records_its_resolved_shape(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(4, 1, 64, 64), dtype=np.uint8)
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=2, log_every=1)
    train(tmp_path / "t", images, model_cfg=TINY_MODEL, train_cfg=cfg, sde=SubVPSDE(), device="cpu", progress=False)
    resolved = model_config_for(TINY_MODEL, 64)
    for name in ("config.json", "model.json"):
        assert read_json(tmp_path / "t" / name)["model"] == json.loads(json.dumps(to_dict(resolved)))
    model, _ = load_score_model(tmp_path / "t", device="cpu")
    assert len(model.net.down_blocks) == 4
    # the same config again is the same run
    train(tmp_path / "t", images, model_cfg=TINY_MODEL, train_cfg=cfg, sde=SubVPSDE(), device="cpu", progress=False)


# ---- memory format and compile ----------------------------------------------------------------------------
def _tiny(size=28) -> ContinuousModel:
    sde = SubVPSDE()
    torch.manual_seed(0)
    return ContinuousModel(ScoreModel(build_unet(TINY_MODEL, channels=1, size=size), sde).eval(), sde,
                           image_shape=(1, size, size))


def test_channels_last_samples_equal_contiguous_ones_for_each_seed_and_index():
    model = _tiny()
    nhwc = in_memory_format(model, "channels_last")
    assert nhwc is not model and next(nhwc.score_fn.parameters()).is_contiguous(memory_format=torch.channels_last)
    assert next(model.score_fn.parameters()).is_contiguous()  # the model given is unchanged
    kw = dict(sde=model.sde, shape=(1, 28, 28), seed=3, steps=5)
    a = sample(model.score_fn, indices=range(16), **kw)
    b = sample(nhwc.score_fn, indices=range(16), **kw)
    assert torch.allclose(a, b, atol=1e-4)
    # and within channels_last, image i does not depend on its batch
    batch = nhwc.generate(indices=range(16), seed=3, sampler="em", steps=5)
    three = nhwc.generate(indices=range(9, 12), seed=3, sampler="em", steps=5)
    assert np.array_equal(batch[9:12], three)


def test_the_auto_numerics_rule():
    model = _tiny()
    assert resolve_numerics("auto", "auto", model=model, evaluations=1000) == ("none", "channels_last")
    compiles = "default" if precision.compile_available() else "none"
    assert resolve_numerics("auto", "auto", model=model, evaluations=AUTO_COMPILE_EVALUATIONS) == (compiles, "channels_last")
    assert resolve_numerics("auto", "auto", model=model, evaluations=AUTO_COMPILE_EVALUATIONS, shapes=2)[0] == "none"
    assert resolve_numerics("none", "contiguous", model=model, evaluations=10**9) == ("none", "contiguous")
    with torch.device("meta"):
        meta = _tiny()
    assert resolve_numerics("auto", "auto", model=meta, evaluations=10**9) == ("none", "contiguous")  # not a CPU
    assert batch_shapes(SampleConfig(n=1000, batch_size=64, shard_size=1000)) == 1  # the last 40 padded to 64
    assert batch_shapes(SampleConfig(n=2048, batch_size=128, shard_size=1024)) == 1


def test_a_folder_records_its_numerics_and_is_continued_in_them(tmp_path):
    model = _tiny()
    cfg = SampleConfig(n=6, steps=3, batch_size=4, shard_size=3, seed=1)
    out = generate_shards(tmp_path / "new", model, cfg, progress=False)
    assert read_json(out / "config.json")["sample"]["memory_format"] == "channels_last"
    assert "compile" not in read_json(out / "config.json")["sample"]  # too short a run to compile
    nhwc = in_memory_format(model, "channels_last").generate(indices=range(6), seed=1, sampler="em", steps=3)
    assert np.array_equal(np.concatenate([im for _, im in iter_shards(out)]), nhwc)
    # a folder drawn before memory formats existed (contiguous, not recorded) is continued contiguous
    old = generate_shards(tmp_path / "old", model, dataclasses.replace(cfg, n=3, memory_format="contiguous"),
                          progress=False)
    assert "memory_format" not in read_json(old / "config.json")["sample"]
    generate_shards(old, model, cfg, progress=False)  # auto: the folder's own format
    plain = model.generate(indices=range(6), seed=1, sampler="em", steps=3)
    assert np.array_equal(np.concatenate([im for _, im in iter_shards(old)]), plain)
    with pytest.raises(DiffauditError, match="memory_format"):
        generate_shards(old, model, dataclasses.replace(cfg, n=9, memory_format="channels_last"), progress=False)


def test_a_failing_compile_falls_back_with_one_warning(tmp_path, monkeypatch, capsys):
    class Broken(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, *args, **kwargs):
            raise RuntimeError("no C++ compiler\nfound")

    monkeypatch.setattr(precision.torch, "compile", lambda net, **kw: Broken(net))
    model = _tiny()
    cfg = SampleConfig(n=4, steps=2, batch_size=4, seed=1, compile="default")
    out = generate_shards(tmp_path / "s", model, cfg, progress=False)
    err = capsys.readouterr().err
    assert err.count("warning: torch.compile failed (no C++ compiler found); sampling without it") == 1
    assert "compile" not in read_json(out / "config.json")["sample"]  # recorded as drawn: uncompiled
    expected = in_memory_format(model, "channels_last").generate(indices=range(4), seed=1, sampler="em", steps=2)
    assert np.array_equal(next(iter_shards(out))[1], expected)
